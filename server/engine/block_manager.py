"""The pool of KV cache blocks: who holds each block, and which full blocks hold content that can be found again.

Pure Python: it hands out block ids, the KV pool holds the tensors. A block has a reference count (its holders: a
sequence, a prompt entry). A full block published under a content key (prefix_cache.py) stays findable after its
last holder lets go: it is free, and the next sequence whose key chain reaches it takes it back as it is, until an
allocation reuses it, which forgets its key. Allocation takes free blocks that hold nothing findable first, then
the least recently freed, so what was used recently stays findable longest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class OutOfBlocksError(Exception):
    """Fewer free blocks than asked for; nothing was allocated."""


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # taken from the front
        self._num_holders = [0] * num_blocks
        self._key_of: dict[int, bytes] = {}  # published blocks, held or free
        self._block_of: dict[bytes, int] = {}
        self.num_reused = 0  # free published blocks taken back by a key
        self.num_forgotten = 0  # free published blocks an allocation reused (prefix cache evictions)

    @property
    def num_free(self) -> int:
        """Blocks an allocation may take: the free published ones included."""
        return len(self._free)

    @property
    def num_published(self) -> int:
        return len(self._key_of)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def allocate(self, num: int) -> list[int]:
        if num > len(self._free):
            raise OutOfBlocksError(f"asked for {num} blocks, {len(self._free)} free")
        blocks = [self._free.popitem(last=False)[0] for _ in range(num)]
        for block in blocks:
            self._num_holders[block] = 1
            key = self._key_of.pop(block, None)
            if key is not None:
                del self._block_of[key]
                self.num_forgotten += 1
        return blocks

    def free(self, blocks: Sequence[int]) -> None:
        """Let go of one hold on each block; all or nothing, so a bad id never leaves the pool half-updated.

        A block nobody holds any more becomes free: at the front of the queue if it holds nothing findable, else at
        the back, in the order given (pass a sequence's blocks last first, so a chain is reused from its tail)."""
        if len(set(blocks)) != len(blocks):
            raise ValueError(f"blocks {list(blocks)} repeat an id")
        for block in blocks:
            if not 0 <= block < self.num_blocks:
                raise ValueError(f"block {block} is not in the pool of {self.num_blocks}")
            if self._num_holders[block] == 0:
                raise ValueError(f"block {block} freed twice")
        for block in blocks:
            self._num_holders[block] -= 1
            if self._num_holders[block] == 0:
                self._free[block] = None
                if block not in self._key_of:
                    self._free.move_to_end(block, last=False)

    def grow(self, blocks: list[int], num_tokens: int) -> None:
        """Extend `blocks` in place so they hold `num_tokens` tokens."""
        missing = self.blocks_for(num_tokens) - len(blocks)
        if missing > 0:
            blocks.extend(self.allocate(missing))

    # ---- content keys (prefix_cache.py makes them) ----

    def publish(self, block: int, key: bytes) -> None:
        """The held, full `block` holds the content `key` names. A key already published keeps its block (two
        sequences computed the same content at once: the later copy stays private and is freed as usual)."""
        assert self._num_holders[block] > 0, "only a held block is published"
        if key not in self._block_of and block not in self._key_of:
            self._key_of[block] = key
            self._block_of[key] = block

    def take_published(self, keys: Sequence[bytes]) -> list[int]:
        """Hold the blocks of the longest leading run of `keys` that are published; returns them in order."""
        blocks = []
        for key in keys:
            block = self._block_of.get(key)
            if block is None:
                break
            if self._num_holders[block] == 0:
                del self._free[block]
                self.num_reused += 1
            self._num_holders[block] += 1
            blocks.append(block)
        return blocks
