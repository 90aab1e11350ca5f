"""The host tier: parsed PromptSpecs of recently used task versions, least recently used evicted first."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from prompt_store.spec import PromptSpec

VersionKey = tuple[str, int]  # (task, version)


class HostCache:
    """Not thread-safe: the registry calls it under its lock. Pinned versions are never evicted, so the cache
    may exceed its capacity while every entry is pinned; it shrinks back as versions are unpinned and new entries come."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._specs: OrderedDict[VersionKey, PromptSpec] = OrderedDict()

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, key: VersionKey) -> bool:
        return key in self._specs

    def get(self, key: VersionKey) -> PromptSpec | None:
        spec = self._specs.get(key)
        if spec is not None:
            self._specs.move_to_end(key)
        return spec

    def put(self, key: VersionKey, spec: PromptSpec, is_pinned: Callable[[VersionKey], bool]) -> int:
        """Insert as most recent; returns how many entries were evicted to make room."""
        self._specs[key] = spec
        self._specs.move_to_end(key)
        return self.trim(is_pinned)

    def pop(self, key: VersionKey) -> PromptSpec | None:
        return self._specs.pop(key, None)

    def keys_of(self, task: str) -> list[VersionKey]:
        return [key for key in self._specs if key[0] == task]

    def trim(self, is_pinned: Callable[[VersionKey], bool]) -> int:
        """Evict unpinned entries, oldest first, down to capacity; returns how many went."""
        excess = len(self._specs) - self.capacity
        if excess <= 0:
            return 0
        victims = [key for key in self._specs if not is_pinned(key)][:excess]  # oldest first
        for key in victims:
            del self._specs[key]
        return len(victims)
