"""PromptCache: the device tier of the registry (prefix K/V blocks, prompt-table rows), loaded on demand, LRU-evicted.

Prompts are real PEFT files (`get_peft_model(...).save_pretrained`) uploaded to an in-memory PromptRegistry.
"""

from __future__ import annotations

import pytest
import torch

from kernels.paged_attention_reference import context_slots
from prompt_store.model_shape import ModelShape
from prompt_store.registry import PromptRegistry
from prompt_store.spec import PromptKind
from server.config import StoreConfig
from server.engine.block_manager import BlockManager, OutOfBlocksError
from server.engine.kv_cache import KVCache
from server.engine.prompt_cache import PromptCache
from server.engine.prompt_table import OutOfRowsError, PromptTable
from tests.support.adapters import adapter_files

SHAPE = ModelShape(hidden_size=32, num_layers=2, num_kv_heads=2, head_dim=8, vocab_size=100)
BLOCK_SIZE = 4
CPU = torch.device("cpu")


def peft_files(tmp_path, peft_type: str, num_virtual_tokens: int, seed: int = 0, **options) -> tuple[bytes, bytes]:
    """What PEFT saves for a tiny random Llama of SHAPE; prefixes drawn at random so cache slots tell apart."""
    folder = tmp_path / f"{peft_type}-{num_virtual_tokens}-{seed}"
    return adapter_files(folder, SHAPE, peft_type, num_virtual_tokens, seed, random_prefix=True, **options)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Tasks: pt5/pt6/pt7 (prompt tuning, 5/6/7 virtual tokens), prefix7/prefix9 (prefix tuning),
    multi (3 sub-tasks)."""
    tmp = tmp_path_factory.mktemp("peft")
    reg = PromptRegistry(SHAPE, StoreConfig(), "tiny-base", None)
    for seed, (task, peft_type, p, options) in enumerate(
        [
            ("pt5", "PROMPT_TUNING", 5, {}),
            ("pt6", "PROMPT_TUNING", 6, {}),
            ("pt7", "PROMPT_TUNING", 7, {}),
            ("prefix7", "PREFIX_TUNING", 7, {}),
            ("prefix9", "PREFIX_TUNING", 9, {}),
            ("multi", "MULTITASK_PROMPT_TUNING", 3, {"num_tasks": 3, "num_ranks": 2}),
        ]
    ):
        reg.upload(task, *peft_files(tmp, peft_type, p, seed, **options))
    return reg


def make_cache(registry, num_blocks: int = 32, num_rows: int = 64, shuffle: bool = True) -> PromptCache:
    manager = BlockManager(num_blocks, BLOCK_SIZE)
    if shuffle:  # hand out blocks in a scrambled order, so slot arithmetic mistakes show
        taken = manager.allocate(num_blocks)
        manager.free(taken[1::2] + taken[0::2][::-1])
    kv_cache = KVCache(SHAPE, num_blocks, BLOCK_SIZE, CPU, torch.float32)
    return PromptCache(registry, manager, kv_cache, PromptTable(num_rows, SHAPE.hidden_size, CPU, torch.float32))


def _flat(cache: PromptCache) -> torch.Tensor:
    t = cache.kv_cache.tensor
    return t.view(*t.shape[:2], -1, *t.shape[-2:])  # [L, 2, slots, Hkv, D]


def _accounting_holds(cache: PromptCache) -> bool:
    return cache.block_manager.num_free + cache.num_blocks == cache.block_manager.num_blocks


def test_prompt_tuning_entry_holds_its_rows_and_blocks_for_materialization(registry):
    cache = make_cache(registry)
    ref = registry.pin("pt6")
    entry = cache.hold(ref)
    spec = registry.spec(ref)
    assert entry.kind is PromptKind.EMBEDDING and entry.prefix_len == 6
    assert len(entry.prefix_blocks) == 2 and not entry.is_materialized  # K/V computed later, by the runner
    assert len(entry.row_ids) == 6 and len(set(entry.row_ids)) == 6
    torch.testing.assert_close(cache.prompt_table.rows[entry.row_ids], spec.tensor[0], rtol=0, atol=0)
    assert cache.prompt_table.num_free == 64 - 6
    assert _accounting_holds(cache) and cache.num_loads == 1 and entry.num_users == 1
    registry.unpin(ref)


@pytest.mark.parametrize("task", ["prefix7", "prefix9"])
def test_prefix_kv_is_written_into_the_entry_slots(registry, task):
    cache = make_cache(registry)
    before = _flat(cache).clone()
    ref = registry.pin(task)
    entry = cache.hold(ref)
    spec = registry.spec(ref)  # [1, L, 2, p, Hkv, D]
    p = spec.num_virtual_tokens
    assert entry.kind is PromptKind.PREFIX_KV and entry.is_materialized and entry.prefix_len == p
    assert len(entry.prefix_blocks) == -(-p // BLOCK_SIZE) and not entry.row_ids
    slots = context_slots(torch.tensor(entry.prefix_blocks), p, 0, BLOCK_SIZE)
    flat = _flat(cache)
    torch.testing.assert_close(flat[:, :, slots], spec.tensor[0], rtol=0, atol=0)
    assert spec.tensor[0].abs().sum() > 0
    untouched = torch.ones(flat.shape[2], dtype=torch.bool)
    untouched[slots] = False
    assert torch.equal(flat[:, :, untouched], before[:, :, untouched])  # nothing else written
    registry.unpin(ref)


def test_multitask_sub_tasks_are_separate_entries_with_their_own_rows(registry):
    cache = make_cache(registry)
    refs = [registry.pin("multi", subtask) for subtask in range(3)]
    entries = [cache.hold(ref) for ref in refs]
    spec = registry.spec(refs[0])
    assert len({id(e) for e in entries}) == 3 and cache.num_resident == 3
    for subtask, entry in enumerate(entries):
        torch.testing.assert_close(cache.prompt_table.rows[entry.row_ids], spec.tensor[subtask], rtol=0, atol=0)
    assert not torch.equal(spec.tensor[0], spec.tensor[1])
    for ref in refs:
        registry.unpin(ref)


def test_acquiring_again_reuses_the_entry(registry):
    cache = make_cache(registry)
    ref = registry.pin("prefix7")
    first = cache.hold(ref)
    free = cache.block_manager.num_free
    second = cache.hold(ref)
    assert second is first and first.num_users == 2
    assert cache.num_loads == 1 and cache.block_manager.num_free == free
    cache.drop(first)
    cache.drop(second)
    assert first.num_users == 0 and cache.num_resident == 1  # unused entries stay resident
    registry.unpin(ref)


def _load_and_drop(cache, registry, task):
    ref = registry.pin(task)
    entry = cache.hold(ref)
    cache.drop(entry)
    registry.unpin(ref)
    return entry


def test_eviction_is_least_recently_used_and_frees_blocks_and_rows(registry):
    # blocks: pt5 2 + pt6 2 + pt7 2 = all 6 -> prefix9 (3 blocks) needs two evictions
    cache = make_cache(registry, num_blocks=6, num_rows=64)
    entries = {task: _load_and_drop(cache, registry, task) for task in ("pt5", "pt6", "pt7")}
    _load_and_drop(cache, registry, "pt5")  # touch pt5: now pt6 is the least recently used
    rows_free = cache.prompt_table.num_free
    _load_and_drop(cache, registry, "prefix9")
    resident = {key[0] for key in cache._entries}
    assert resident == {"pt5", "prefix9"}
    assert cache.num_evictions == 2
    assert cache.prompt_table.num_free == rows_free + 6 + 7  # pt6's and pt7's rows back
    assert _accounting_holds(cache)
    # freed rows and blocks are reused: pt6 loads again (evicting pt5, now the least recently used)
    reloaded = _load_and_drop(cache, registry, "pt6")
    assert reloaded is not entries["pt6"] and cache.num_loads == 5
    assert {key[0] for key in cache._entries} == {"prefix9", "pt6"} and _accounting_holds(cache)


def test_evict_one_skips_entries_in_use_and_materializing(registry):
    cache = make_cache(registry)
    held_ref = registry.pin("pt5")
    held = cache.hold(held_ref)
    materializing_ref = registry.pin("pt6")
    materializing = _load_and_drop(cache, registry, "pt6")
    cache.hold(materializing_ref)  # what the scheduler does for a materialization chunk in flight
    assert not cache.evict_one()
    cache.drop(materializing)  # the step's postprocess
    assert cache.evict_one()
    assert [key[0] for key in cache._entries] == ["pt5"] and held.num_users == 1
    assert not cache.evict_one()
    registry.unpin(held_ref)
    registry.unpin(materializing_ref)


def test_out_of_blocks_only_when_every_entry_is_in_use(registry):
    cache = make_cache(registry, num_blocks=5)
    held_ref = registry.pin("prefix9")
    cache.hold(held_ref)  # 3 blocks, in use
    _load_and_drop(cache, registry, "pt5")  # 2 blocks, unused
    ref = registry.pin("pt6")
    cache.hold(ref)  # fits by evicting pt5
    assert {key[0] for key in cache._entries} == {"prefix9", "pt6"}
    free, entries, rows = cache.block_manager.num_free, dict(cache._entries), cache.prompt_table.num_free
    other = registry.pin("pt7")
    with pytest.raises(OutOfBlocksError):
        cache.hold(other)  # both resident entries are held
    assert (cache.block_manager.num_free, dict(cache._entries), cache.prompt_table.num_free) == (free, entries, rows)
    assert _accounting_holds(cache)
    for r in (held_ref, ref, other):
        registry.unpin(r)


def test_out_of_rows_only_when_every_entry_is_in_use_and_no_blocks_leak(registry):
    cache = make_cache(registry, num_blocks=32, num_rows=12)
    _load_and_drop(cache, registry, "pt7")  # 7 rows, unused
    held_ref = registry.pin("pt5")
    cache.hold(held_ref)  # 5 rows, in use: table full
    ref = registry.pin("pt6")
    cache.hold(ref)  # needs 6 rows: evicts pt7
    assert {key[0] for key in cache._entries} == {"pt5", "pt6"} and cache.prompt_table.num_free == 1
    free = cache.block_manager.num_free
    other = registry.pin("pt7")
    with pytest.raises(OutOfRowsError):
        cache.hold(other)
    assert cache.block_manager.num_free == free  # the blocks taken for the failed load went back
    assert {key[0] for key in cache._entries} == {"pt5", "pt6"} and _accounting_holds(cache)
    for r in (held_ref, ref, other):
        registry.unpin(r)


def test_a_new_task_version_is_a_new_entry(registry, tmp_path):
    cache = make_cache(registry)
    old_ref = registry.pin("pt5")
    old = cache.hold(old_ref)
    registry.upload("pt5", *peft_files(tmp_path, "PROMPT_TUNING", 5, seed=99))
    new_ref = registry.pin("pt5")
    new = cache.hold(new_ref)
    assert new_ref.version == old_ref.version + 1 and new is not old
    assert not torch.equal(cache.prompt_table.rows[new.row_ids], cache.prompt_table.rows[old.row_ids])
    registry.unpin(old_ref)
    registry.unpin(new_ref)
    registry.activate("pt5", old_ref.version)  # leave the module's registry as it was
