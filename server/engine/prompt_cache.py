"""The device tier of the prompt registry: each task version's prefix K/V in shared, read-only cache blocks.

A prefix-tuning prompt is copied into its blocks directly. A prompt-tuning prompt's rows go into the prompt
table and its virtual tokens' K/V are computed once ("materialized") by the model runner, in the same packed
batch as other work; under causal attention they are identical for every request of that task version.
Entries nobody uses stay resident and are evicted least-recently-used when blocks or rows run short.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prompt_store.spec import ClassifierHead, PromptKind
from server.engine.block_manager import BlockManager, OutOfBlocksError
from server.engine.kv_cache import KVCache
from server.engine.prompt_table import OutOfRowsError, PromptTable

if TYPE_CHECKING:
    from prompt_store.registry import PromptRegistry, TaskVersionRef

EntryKey = tuple[str, int, int]  # (task, version, subtask)


@dataclass(eq=False)
class PromptCacheEntry:
    key: EntryKey
    kind: PromptKind
    prefix_len: int  # virtual tokens; the request's own tokens start at this position
    prefix_blocks: list[int]  # read-only once materialized; shared by every request of this key
    row_ids: list[int] = field(default_factory=list)  # prompt-table rows (embedding kind)
    num_materialized: int = 0  # leading virtual tokens whose K/V are in its blocks (advanced by Scheduler.postprocess)
    num_users: int = 0  # holders (sequences, a materialization chunk in flight); > 0 keeps it on the device
    head: ClassifierHead | None = None  # a classification task's head, on the device

    @property
    def is_materialized(self) -> bool:
        return self.num_materialized == self.prefix_len


def entry_key(ref: TaskVersionRef) -> EntryKey:
    return (ref.task, ref.version, ref.subtask)


class PromptCache:
    def __init__(
        self, registry: PromptRegistry, block_manager: BlockManager, kv_cache: KVCache, prompt_table: PromptTable
    ):
        self.registry = registry
        self.block_manager = block_manager
        self.kv_cache = kv_cache
        self.prompt_table = prompt_table
        self._entries: OrderedDict[EntryKey, PromptCacheEntry] = OrderedDict()  # least recently used first
        self.num_loads = 0
        self.num_evictions = 0

    @property
    def num_resident(self) -> int:
        return len(self._entries)

    @property
    def num_blocks(self) -> int:
        return sum(len(e.prefix_blocks) for e in self._entries.values())

    def hold(self, ref: TaskVersionRef) -> PromptCacheEntry:
        """Hold `ref`'s device entry, loaded if absent, until `drop`. OutOfBlocksError/OutOfRowsError if no room."""
        key = entry_key(ref)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._load(key, ref)
        self._entries.move_to_end(key)
        entry.num_users += 1
        return entry

    def drop(self, entry: PromptCacheEntry) -> None:
        entry.num_users -= 1
        assert entry.num_users >= 0, "prompt cache entry dropped more often than held"

    def evict_one(self) -> bool:
        """Free the least recently used entry nobody holds; False if every entry is in use."""
        for key, entry in self._entries.items():
            if entry.num_users == 0:
                del self._entries[key]
                self.block_manager.free(entry.prefix_blocks)
                self.prompt_table.free(entry.row_ids)
                self.num_evictions += 1
                return True
        return False

    def _load(self, key: EntryKey, ref: TaskVersionRef) -> PromptCacheEntry:
        # A host-tier hit, never a disk read on the step thread: the engine's PromptLoader read the version in a
        # worker before its request reached the scheduler, and the request's pin keeps it in the host tier.
        spec = self.registry.spec(ref)
        prefix_len = spec.num_virtual_tokens
        blocks = self._with_room(lambda: self.block_manager.allocate(self.block_manager.blocks_for(prefix_len)))
        entry = PromptCacheEntry(key=key, kind=spec.kind, prefix_len=prefix_len, prefix_blocks=blocks)
        if spec.head is not None:
            entry.head = _on_device(spec.head, self.kv_cache.tensor.device)
        try:
            if spec.kind is PromptKind.PREFIX_KV:
                self.kv_cache.write_prefix(blocks, spec.tensor[0])
                entry.num_materialized = prefix_len
            else:
                embeddings = spec.tensor[ref.subtask]  # [p, hidden]
                entry.row_ids = self._with_room(lambda: self.prompt_table.store(embeddings))
        except Exception:
            self.block_manager.free(blocks)
            raise
        self._entries[key] = entry
        self.num_loads += 1
        return entry

    def _with_room(self, allocate):
        """Run `allocate`, evicting unused entries until it fits or nothing is left to evict."""
        for _ in itertools.count():
            try:
                return allocate()
            except (OutOfBlocksError, OutOfRowsError):
                if not self.evict_one():
                    raise


def _on_device(head: ClassifierHead, device) -> ClassifierHead:
    """Kept in float32 (heads are kilobytes): the head's matmul runs in float32 whatever the model's dtype."""
    bias = None if head.bias is None else head.bias.to(device)
    return ClassifierHead(head.weight.to(device), bias, head.labels)
