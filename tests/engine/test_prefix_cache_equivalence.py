"""With prefix caching on, greedy tokens still equal PEFT's uncached forward for every served prompt type: requests
that reuse other requests' blocks (in flight and finished), prompts prefilled in chunks, sequences preempted and
resumed from their own cached blocks. And caching off gives the same tokens."""

from __future__ import annotations

import pytest

from tests.support.engine import make_engine, request, run_to_completion, upload_folder
from tests.support.equivalence import ADAPTERS
from tests.support.reference import base_greedy, peft_greedy

MAX_NEW = 8
SHARED = "You are a careful assistant. Answer in one short sentence, and never make anything up. Question:"
QUESTIONS = [" What is the capital of France?", " How many legs has a spider?"]


def _contexts():
    """(task, subtask): the base model and every adapter, two sub-tasks of the multitask one."""
    contexts = [(None, 0)]
    for task, peft_type, _ in ADAPTERS:
        contexts += [(task, s) for s in ((0, 2) if peft_type == "MULTITASK_PROMPT_TUNING" else (0,))]
    return contexts


def _expected(base_dir, adapters, task, subtask, ids):
    if task is None:
        return base_greedy(base_dir, ids, MAX_NEW)
    return peft_greedy(base_dir, adapters[task], ids, MAX_NEW, subtask=subtask if task == "multitask" else None)


def _serve(engine, cases, tokenizer) -> dict[str, list[int]]:
    """Two waves of the same requests: the second joins while the first decodes, then a third after all ended."""
    handles = {}
    for wave in range(2):
        for i, (task, subtask, text) in enumerate(cases):
            rid = f"w{wave}-{task}-{subtask}-{i}"
            handles[rid] = engine.add_request(request(rid, tokenizer(text).input_ids, MAX_NEW, task, subtask))
            if i % 4 == 0:
                engine.step()
    run_to_completion(engine)
    for i, (task, subtask, text) in enumerate(cases):
        rid = f"w2-{task}-{subtask}-{i}"
        handles[rid] = engine.add_request(request(rid, tokenizer(text).input_ids, MAX_NEW, task, subtask))
    run_to_completion(engine)
    return {rid: handle.result(timeout=5)[0] for rid, handle in handles.items()}


@pytest.mark.slow  # trains 7 adapters, runs PEFT references for 18 contexts
def test_reused_blocks_give_peft_tokens_for_every_prompt_type(tiny_llama_dir, adapter_factory):
    adapters = {task: adapter_factory(tiny_llama_dir, peft_type, **options) for task, peft_type, options in ADAPTERS}
    cases = [(task, subtask, SHARED + q) for task, subtask in _contexts() for q in QUESTIONS]
    outputs = {}
    for caching in (True, False):
        # block size 4 and a 24-token budget: prefixes that end mid-block, the shared text prefilled in chunks
        engine = make_engine(
            tiny_llama_dir, block_size=4, num_kv_blocks=512, max_num_batched_tokens=24, enable_prefix_caching=caching
        )
        for task, adapter_dir in adapters.items():
            upload_folder(engine, task, adapter_dir)
        outputs[caching] = _serve(engine, cases, engine.tokenizer)
        stats = engine.stats()
        if caching:
            assert stats.num_prefix_cache_hit_tokens > stats.num_prefix_cache_queried_tokens / 2
        else:
            assert stats.num_prefix_cache_hit_tokens == 0
        assert stats.num_free_blocks + stats.num_registry_blocks == stats.num_total_blocks
    assert outputs[True] == outputs[False]
    tokenizer = engine.tokenizer
    for i, (task, subtask, text) in enumerate(cases):
        expected = _expected(tiny_llama_dir, adapters, task, subtask, tokenizer(text).input_ids)
        for wave in range(3):
            rid = f"w{wave}-{task}-{subtask}-{i}"
            assert outputs[True][rid] == expected, f"{rid}: {outputs[True][rid]} != PEFT {expected}"


def test_preempted_sequences_resume_from_cached_blocks_with_peft_tokens(tiny_llama_dir, adapter_factory):
    """A pool too small for all of them: sequences are preempted and resume from the blocks they (or their twins)
    left cached; tokens are still PEFT's."""
    adapters = {
        "prefix": adapter_factory(tiny_llama_dir, "PREFIX_TUNING", num_virtual_tokens=9),
        "pt": adapter_factory(tiny_llama_dir, "PROMPT_TUNING", num_virtual_tokens=5),
    }
    engine = make_engine(tiny_llama_dir, block_size=4, num_kv_blocks=40, max_num_batched_tokens=64)
    for task, adapter_dir in adapters.items():
        upload_folder(engine, task, adapter_dir)
    text = SHARED + QUESTIONS[0]
    ids = engine.tokenizer(text).input_ids
    contexts = [None, "prefix", "pt"] * 3
    handles = [engine.add_request(request(f"r{i}", ids, 16, task)) for i, task in enumerate(contexts)]
    preempted = 0
    while engine.has_work():
        engine.step()
        preempted = max(preempted, sum(seq.num_preemptions for seq in engine.scheduler.running))
    assert preempted > 0, "the pool is meant to be the limit"
    assert engine.stats().num_prefix_cache_hit_tokens > 0
    expected = {
        None: base_greedy(tiny_llama_dir, ids, 16),
        **{task: peft_greedy(tiny_llama_dir, adapter_dir, ids, 16) for task, adapter_dir in adapters.items()},
    }
    for task, handle in zip(contexts, handles, strict=True):
        assert handle.result(timeout=5)[0] == expected[task], task
