"""Greedy tokens from promptswap equal PEFT's uncached forward for every served prompt type, in mixed batches."""

from __future__ import annotations

import pytest

from tests.support.engine import make_engine, request, run_to_completion, upload_folder
from tests.support.reference import base_greedy, peft_greedy

MAX_NEW = 10
PROMPTS = ["The capital of France is", "Once upon a time, in a land far", "1 2 3", "Hello"]
# (task name, peft type, options): every served type, several num_virtual_tokens
ADAPTERS = [
    ("pt-random", "PROMPT_TUNING", dict(num_virtual_tokens=5)),
    ("pt-text", "PROMPT_TUNING", dict(num_virtual_tokens=8, prompt_tuning_init="TEXT")),
    ("ptune-mlp", "P_TUNING", dict(num_virtual_tokens=6, encoder_hidden_size=32)),
    (
        "ptune-lstm",
        "P_TUNING",
        dict(num_virtual_tokens=7, encoder_hidden_size=32, encoder_reparameterization_type="LSTM"),
    ),
    ("prefix", "PREFIX_TUNING", dict(num_virtual_tokens=9)),
    ("prefix-proj", "PREFIX_TUNING", dict(num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=32)),
    ("multitask", "MULTITASK_PROMPT_TUNING", dict(num_virtual_tokens=6, num_tasks=3)),
]


def _cases():
    """(request id, task, subtask, prompt text): base requests and every adapter, prompts of different lengths."""
    cases = [(f"base-{i}", None, 0, text) for i, text in enumerate(PROMPTS[:2])]
    for n, (task, peft_type, _) in enumerate(ADAPTERS):
        subtasks = (0, 2) if peft_type == "MULTITASK_PROMPT_TUNING" else (0,)
        for subtask in subtasks:
            for k in range(2):
                text = PROMPTS[(n + k) % len(PROMPTS)]
                cases.append((f"{task}-{subtask}-{k}", task, subtask, text))
    return cases


@pytest.fixture(params=["llama", "gpt2"])
def base_dir(request, tiny_llama_dir, tiny_gpt2_dir):
    return {"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}[request.param]


@pytest.mark.slow  # trains 7 adapters per model and runs PEFT references for 16 requests
def test_mixed_batch_matches_peft(base_dir, adapter_factory):
    adapters = {task: adapter_factory(base_dir, peft_type, **options) for task, peft_type, options in ADAPTERS}
    # block size 4 and a 24-token budget: prefixes that end mid-block, prompts prefilled in chunks
    engine = make_engine(base_dir, block_size=4, num_kv_blocks=256, max_num_batched_tokens=24)
    for task, adapter_dir in adapters.items():
        upload_folder(engine, task, adapter_dir)
    tokenizer = engine.tokenizer
    cases = _cases()
    handles = {}
    for i, (rid, task, subtask, text) in enumerate(cases):  # requests join while others decode
        handles[rid] = engine.add_request(request(rid, tokenizer(text).input_ids, MAX_NEW, task, subtask))
        if i % 3 == 0:
            engine.step()
    run_to_completion(engine)
    for rid, task, subtask, text in cases:
        ids = tokenizer(text).input_ids
        if task is None:
            expected = base_greedy(base_dir, ids, MAX_NEW)
        elif task == "multitask":
            expected = peft_greedy(base_dir, adapters[task], ids, MAX_NEW, subtask=subtask)
        else:
            expected = peft_greedy(base_dir, adapters[task], ids, MAX_NEW)
        tokens, _, last = handles[rid].result(timeout=5)
        assert tokens == expected, f"{rid} ({task}, subtask {subtask}): {tokens} != PEFT {expected}"
        assert last.task == task


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
