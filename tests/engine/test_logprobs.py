"""Logprobs of generated and prompt tokens equal log_softmax of PEFT's uncached forward, for every prompt type, in
one mixed batch whose prompts are prefilled in chunks."""

from __future__ import annotations

import math

import pytest
import torch

from server.engine.logprobs import LOGPROB_FLOOR, token_logprobs
from tests.support.engine import make_engine, request, run_to_completion, upload_folder
from tests.support.equivalence import ADAPTERS, PROMPTS
from tests.support.reference import forward_logits, load_reference

MAX_NEW = 6
NUM_TOP = 5
TASKS = ["pt-random", "ptune-mlp", "prefix", "prefix-proj", "multitask"]


@pytest.fixture(scope="module")
def served(tiny_llama_dir, adapter_factory):
    """Every case's handle after one engine served them all together, and the adapters."""
    options = {task: (peft_type, kw) for task, peft_type, kw in ADAPTERS}
    adapters = {task: adapter_factory(tiny_llama_dir, options[task][0], **options[task][1]) for task in TASKS}
    # block size 4 and a 16-token budget: prompts prefilled in chunks, prompt logits split across steps
    engine = make_engine(tiny_llama_dir, block_size=4, num_kv_blocks=256, max_num_batched_tokens=16)
    for task, adapter_dir in adapters.items():
        upload_folder(engine, task, adapter_dir)
    cases = [(None, 0), *[(task, 1 if task == "multitask" else 0) for task in TASKS]]
    handles = {}
    for i, (task, subtask) in enumerate(cases):
        ids = engine.tokenizer(PROMPTS[i % 2]).input_ids
        rid = f"{task}-{i}"
        handles[rid] = (
            task,
            subtask,
            ids,
            engine.add_request(request(rid, ids, MAX_NEW, task, subtask, logprobs=NUM_TOP, prompt_logprobs=2)),
        )
    run_to_completion(engine)
    served = {
        rid: (task, subtask, ids, list(handle.outputs(timeout=5)))
        for rid, (task, subtask, ids, handle) in handles.items()
    }
    return served, adapters


def test_generated_token_logprobs_equal_peft_log_softmax(served, tiny_llama_dir):
    handles, adapters = served
    for rid, (task, subtask, ids, outputs) in handles.items():
        tokens = [t for out in outputs for t in out.new_token_ids]
        logprobs = [lp for out in outputs for lp in out.new_logprobs]
        assert len(logprobs) == len(tokens) == MAX_NEW, rid
        model = load_reference(tiny_llama_dir, adapters.get(task) if task else None)
        expected = forward_logits(model, ids + tokens, subtask if task == "multitask" else None)
        expected = expected[len(ids) - 1 : -1].log_softmax(-1)  # the rows that predicted each generated token
        for step, (token, logprob) in enumerate(zip(tokens, logprobs, strict=True)):
            assert logprob.token_id == token
            assert logprob.logprob == pytest.approx(float(expected[step, token]), abs=1e-4), (rid, step)
            top_values, top_ids = expected[step].topk(NUM_TOP)
            assert [i for i, _ in logprob.top] == top_ids.tolist(), (rid, step)
            assert [v for _, v in logprob.top] == pytest.approx(top_values.tolist(), abs=1e-4)
            assert token == top_ids[0]  # greedy: the chosen token is the most likely one


def test_prompt_logprobs_equal_peft_log_softmax(served, tiny_llama_dir):
    handles, adapters = served
    for rid, (task, subtask, ids, outputs) in handles.items():
        with_prompt = [out.prompt_logprobs for out in outputs if out.prompt_logprobs is not None]
        assert len(with_prompt) == 1, rid  # once, with the first generated token
        prompt_logprobs = with_prompt[0]
        assert len(prompt_logprobs) == len(ids) and prompt_logprobs[0] is None
        model = load_reference(tiny_llama_dir, adapters.get(task) if task else None)
        expected = forward_logits(model, ids, subtask if task == "multitask" else None).log_softmax(-1)
        for position, logprob in enumerate(prompt_logprobs[1:], start=1):
            assert logprob is not None and logprob.token_id == ids[position]
            assert logprob.logprob == pytest.approx(float(expected[position - 1, ids[position]]), abs=1e-4)
            assert [i for i, _ in logprob.top] == expected[position - 1].topk(2).indices.tolist()


def test_prompt_logprobs_skip_the_prefix_cache_and_survive_preemption(tiny_llama_dir):
    """A request asking for prompt logprobs computes its whole prompt (cached blocks carry no logits), and a
    preempted one reports each prompt token once."""
    engine = make_engine(tiny_llama_dir, block_size=4, num_kv_blocks=12, max_num_batched_tokens=8)
    ids = (engine.tokenizer(PROMPTS[1]).input_ids * 3)[:12]
    warm = engine.add_request(request("warm", ids, 2))
    run_to_completion(engine)
    warm.result(timeout=5)
    # three of 12 + 12 tokens (6 blocks each) in 12 blocks
    handles = [engine.add_request(request(f"r{i}", ids, 12, prompt_logprobs=0)) for i in range(3)]
    seqs = [engine._requests[f"r{i}"].seq for i in range(3)]
    run_to_completion(engine)
    assert any(seq.num_preemptions for seq in seqs), "the pool is meant to be the limit"
    reported = []
    for handle in handles:
        outs = list(handle.outputs(timeout=5))
        reported.append([out.prompt_logprobs for out in outs if out.prompt_logprobs is not None])
    assert all(len(r) == 1 and len(r[0]) == len(ids) for r in reported)
    for other in reported[1:]:
        assert [lp.logprob for lp in reported[0][0][1:]] == pytest.approx([lp.logprob for lp in other[0][1:]])
    assert engine.scheduler.running == [] and engine.block_manager.num_free > 0


def test_impossible_tokens_report_the_floor_and_rows_of_nan_stay_finite():
    scores = torch.tensor([[0.0, float("-inf"), 1.0], [float("nan")] * 3])
    out = token_logprobs(scores, [1, 0], [3, 1])
    assert out[0].logprob == LOGPROB_FLOOR and [i for i, _ in out[0].top] == [2, 0, 1]
    assert out[0].top[0][1] == pytest.approx(math.log(math.e / (1 + math.e)))
    assert all(math.isfinite(v) for lp in out for v in (lp.logprob, *[x for _, x in lp.top]))
