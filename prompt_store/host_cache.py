"""The host tier: parsed PromptSpecs of recently used task versions, least recently used evicted first."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from prompt_store.spec import PromptSpec

VersionKey = tuple[str, int]  # (task, version)


class HostCache:
    """Bounded twice: by entries (`capacity`, which also bounds the per-entry overhead of many tiny prompts) and
    by the bytes of their tensors (`max_bytes`, since one prefix-tuning prompt of a large model can take a GiB).

    Not thread-safe: the registry calls it under its lock. Pinned versions are never evicted, so the cache may
    exceed either bound while its entries are pinned; it shrinks back as versions are unpinned and new entries come."""

    def __init__(self, capacity: int, max_bytes: int):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.num_bytes = 0  # bytes of every cached spec's tensor
        self._specs: OrderedDict[VersionKey, PromptSpec] = OrderedDict()

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, key: VersionKey) -> bool:
        return key in self._specs

    @property
    def is_over_budget(self) -> bool:
        return len(self._specs) > self.capacity or self.num_bytes > self.max_bytes

    def get(self, key: VersionKey) -> PromptSpec | None:
        spec = self._specs.get(key)
        if spec is not None:
            self._specs.move_to_end(key)
        return spec

    def put(self, key: VersionKey, spec: PromptSpec, is_pinned: Callable[[VersionKey], bool]) -> int:
        """Insert as most recent; returns how many entries were evicted to make room."""
        self.pop(key)
        self._specs[key] = spec
        self.num_bytes += spec.nbytes
        return self.trim(is_pinned)

    def pop(self, key: VersionKey) -> PromptSpec | None:
        spec = self._specs.pop(key, None)
        if spec is not None:
            self.num_bytes -= spec.nbytes
        return spec

    def keys_of(self, task: str) -> list[VersionKey]:
        return [key for key in self._specs if key[0] == task]

    def trim(self, is_pinned: Callable[[VersionKey], bool]) -> int:
        """Evict unpinned entries, oldest first, until both bounds hold (or only pinned ones are left)."""
        num_evicted = 0
        for key in [key for key in self._specs if not is_pinned(key)]:  # oldest first
            if not self.is_over_budget:
                break
            self.pop(key)
            num_evicted += 1
        return num_evicted
