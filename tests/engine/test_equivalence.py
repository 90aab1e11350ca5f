"""Greedy tokens from promptswap equal PEFT's uncached forward for every served prompt type, in mixed batches."""

from __future__ import annotations

import pytest

from tests.support.engine import make_engine, request, run_to_completion, upload_folder
from tests.support.equivalence import PROMPTS, assert_mixed_batch_matches_peft, mixed_cases
from tests.support.reference import peft_greedy

MAX_NEW = 10


@pytest.fixture(params=["llama", "gpt2"])
def base_dir(request, tiny_llama_dir, tiny_gpt2_dir):
    return {"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}[request.param]


@pytest.mark.slow  # trains 7 adapters per model and runs PEFT references for 16 requests
def test_mixed_batch_matches_peft(base_dir, adapter_factory):
    assert_mixed_batch_matches_peft(base_dir, adapter_factory, mixed_cases(2), MAX_NEW, num_kv_blocks=256)


def test_engine_frees_everything_after_mixed_batch(tiny_llama_dir, adapter_factory):
    engine = make_engine(tiny_llama_dir, block_size=4, num_kv_blocks=64)
    upload_folder(engine, "prefix", adapter_factory(tiny_llama_dir, "PREFIX_TUNING", num_virtual_tokens=9))
    upload_folder(engine, "pt", adapter_factory(tiny_llama_dir, "PROMPT_TUNING", num_virtual_tokens=5))
    for i, task in enumerate(["prefix", "pt", None, "prefix"]):
        engine.add_request(request(f"r{i}", [1, 2, 3, 4, 5], 6, task))
    run_to_completion(engine)
    stats = engine.stats()
    # only the two resident prompt prefixes (9 tokens -> 3 blocks, 5 -> 2) still hold blocks
    assert stats.num_free_blocks == 64 - 3 - 2
    assert engine.registry.stats().num_pinned_versions == 0
    assert stats.num_running == stats.num_waiting == 0
    assert stats.batch_sizes.count == stats.num_steps > 0 and engine.stats() == stats  # reading changes nothing


def test_prompt_longer_than_the_step_budget_is_materialized_in_chunks(tiny_llama_dir, adapter_factory):
    adapter = adapter_factory(tiny_llama_dir, "PROMPT_TUNING", num_virtual_tokens=8, prompt_tuning_init="TEXT")
    engine = make_engine(tiny_llama_dir, block_size=4, num_kv_blocks=64, max_num_batched_tokens=3)
    upload_folder(engine, "pt", adapter)
    ids = engine.tokenizer(PROMPTS[1]).input_ids
    handles = [engine.add_request(request(f"r{i}", ids, MAX_NEW, "pt")) for i in range(2)]
    run_to_completion(engine)
    expected = peft_greedy(tiny_llama_dir, adapter, ids, MAX_NEW)
    assert [h.result(timeout=5)[0] for h in handles] == [expected, expected]
    assert engine.prompt_cache.num_loads == 1
