"""Automatic prefix caching: a sequence starts from the K/V of the longest run of its full token blocks that an
earlier sequence (or itself, before a preemption) computed after the same context, and computes only the rest.

A block's key is a hash chain over the sequence's own token blocks, rooted at the identity of everything that
precedes them and changes their K/V: the task version and sub-task whose soft prompt comes first (or the base model,
which has none). So two tasks with the same text, two versions of one task, and a task and the base model never
reach the same key: a version's blocks can never be found by the next version. The root also names the tenant, as
vLLM's cache salt does: a hit is faster, and one tenant must not learn by timing what another one sent.

The hash is cryptographic (BLAKE2b, 128 bits): a key collision would hand a sequence another's K/V, and prompts
are chosen by the callers. Blocks are the pool's ordinary blocks (block_manager.py keeps the keys and the holds);
a block is published once every token of it is in the cache, and a hit never covers a sequence's last token,
which must be computed to sample from: shared blocks are never written again.
"""

from __future__ import annotations

import hashlib
from array import array
from typing import TYPE_CHECKING

from server.engine.block_manager import BlockManager

if TYPE_CHECKING:
    from server.engine.sequence import Sequence

_KEY_BYTES = 16


def chain_root(seq: Sequence) -> bytes:
    """The key a sequence's first block chains from."""
    ref = seq.task_ref
    context = ("base",) if ref is None else ("task", ref.task, ref.version, ref.subtask)
    identity = repr(("promptswap-prefix-v1", seq.request.caller.tenant, *context)).encode()
    return hashlib.blake2b(identity, digest_size=_KEY_BYTES).digest()


def chain_key(parent: bytes, token_ids: list[int]) -> bytes:
    return hashlib.blake2b(parent + array("q", token_ids).tobytes(), digest_size=_KEY_BYTES).digest()


class PrefixCache:
    """Finds and publishes a sequence's full blocks; counts what requests asked for and what was reused."""

    def __init__(self, block_manager: BlockManager, enabled: bool):
        self.block_manager = block_manager
        self.enabled = enabled
        self.num_queried_tokens = 0  # tokens admitted sequences needed in the cache
        self.num_hit_tokens = 0  # of those, found cached

    def take_cached(self, seq: Sequence) -> list[int]:
        """Hold the cached blocks of the longest run of the sequence's full blocks, its last token left out."""
        if not self.enabled:
            return []
        num_full = (len(seq.token_ids) - 1) // self.block_manager.block_size
        return self.block_manager.take_published(self._keys(seq, num_full))

    def count(self, seq: Sequence, num_hit_tokens: int) -> None:
        """A sequence was admitted with `num_hit_tokens` of its tokens found cached."""
        self.num_queried_tokens += len(seq.token_ids)
        self.num_hit_tokens += num_hit_tokens

    def publish(self, seq: Sequence, num_computed_before: int) -> None:
        """The sequence's `num_computed` advanced from `num_computed_before`: publish the blocks that became full."""
        if not self.enabled:
            return
        size = self.block_manager.block_size
        first, end = num_computed_before // size, seq.num_computed // size
        if end > first:
            keys = self._keys(seq, end)
            for i in range(first, end):
                self.block_manager.publish(seq.own_blocks[i], keys[i])

    def _keys(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """The keys of the sequence's first `num_blocks` blocks, extending the ones it already has."""
        keys, size = seq.block_keys, self.block_manager.block_size
        if len(keys) < num_blocks:
            parent = keys[-1] if keys else chain_root(seq)
            for i in range(len(keys), num_blocks):
                parent = chain_key(parent, seq.token_ids[i * size : (i + 1) * size])
                keys.append(parent)
        return keys[:num_blocks]
