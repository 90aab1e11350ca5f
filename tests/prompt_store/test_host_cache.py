"""The host tier's bounds: entries and bytes, least recently used first, pinned versions never evicted."""

from __future__ import annotations

from dataclasses import replace

import torch

from prompt_store.host_cache import HostCache
from prompt_store.spec import PromptKind, PromptSpec


def _spec(num_floats: int) -> PromptSpec:
    return PromptSpec("PROMPT_TUNING", PromptKind.EMBEDDING, 1, torch.zeros(1, 1, num_floats))


def _unpinned(key) -> bool:
    return False


def test_the_byte_budget_evicts_least_recently_used_first():
    cache = HostCache(capacity=100, max_bytes=1000)
    for version in range(3):
        cache.put(("t", version), _spec(100), _unpinned)  # 400 bytes each
    assert [key in cache for key in [("t", 0), ("t", 1), ("t", 2)]] == [False, True, True]
    assert cache.num_bytes == 800
    cache.get(("t", 1))  # now the most recent
    assert cache.put(("u", 0), _spec(50), _unpinned) == 0  # 1000 bytes: at the budget, not over it
    assert cache.put(("u", 1), _spec(10), _unpinned) == 1
    assert ("t", 2) not in cache and ("t", 1) in cache and cache.num_bytes == 640


def test_one_large_spec_evicts_many_small_ones_and_the_count_bound_still_holds():
    cache = HostCache(capacity=3, max_bytes=1000)
    for version in range(3):
        cache.put(("small", version), _spec(10), _unpinned)
    cache.put(("small", 3), _spec(10), _unpinned)  # the count bound: 4 entries of 40 bytes are over capacity 3
    assert len(cache) == 3 and ("small", 0) not in cache
    assert cache.put(("large", 0), _spec(240), _unpinned) == 2  # 960 + 3 * 40 bytes: the two oldest go
    assert cache.put(("large", 1), _spec(250), _unpinned) == 2  # a whole budget: all the others go
    assert list(cache.keys_of("large")) == [("large", 1)] and len(cache) == 1 and cache.num_bytes == 1000


def test_pinned_versions_stay_over_the_budget_until_released():
    cache = HostCache(capacity=100, max_bytes=500)
    pinned = {("a", 1), ("b", 1)}
    cache.put(("a", 1), _spec(100), pinned.__contains__)
    cache.put(("b", 1), _spec(100), pinned.__contains__)
    assert cache.num_bytes == 800 and cache.is_over_budget  # both pinned: nothing may go
    pinned.discard(("a", 1))
    assert cache.trim(pinned.__contains__) == 1
    assert ("a", 1) not in cache and ("b", 1) in cache and not cache.is_over_budget


def test_replacing_and_popping_keep_the_byte_count_exact():
    cache = HostCache(capacity=10, max_bytes=10_000)
    cache.put(("t", 1), _spec(100), _unpinned)
    cache.put(("t", 1), _spec(50), _unpinned)
    assert cache.num_bytes == 200 and len(cache) == 1
    cache.pop(("t", 1))
    cache.pop(("t", 1))
    assert cache.num_bytes == 0


def test_the_registry_keeps_its_host_tier_within_the_byte_budget(make_registry, store_config, adapters):
    names = ["llama/prompt_tuning_random", "llama/prefix", "llama/multitask"]
    registry = make_registry(replace(store_config, host_cache_tasks=100, host_cache_bytes=1))
    refs = []
    for index, name in enumerate(names):
        adapter = adapters[name]
        registry.upload(f"t{index}", adapter.config_bytes, adapter.model_bytes)
        assert registry.stats().num_host_cached == index  # over a 1-byte budget only pinned specs are kept
        refs.append(registry.pin(f"t{index}"))
        registry.spec(refs[-1])  # read from disk; kept while pinned
    assert registry.stats().num_host_cached == 3
    for ref in refs:
        registry.unpin(ref)
    assert registry.stats().num_host_cached == 0 and registry.stats().evictions == 6  # 3 uploads, 3 releases
