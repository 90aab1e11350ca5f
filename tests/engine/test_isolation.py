"""Each request sees exactly its own task version's prompt, whatever shares the batch, arrives, leaves or changes."""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from server.engine.request import FinishReason
from tests.support.engine import make_engine, request, run_to_completion, upload_folder
from tests.support.reference import base_greedy, peft_greedy

MAX_NEW = 6
PROMPTS = ["The capital of France is", "Once upon a time", "1 2 3 4 5 6", "Hi"]
CONTENTS = [  # adapter contents a task can be (re)uploaded with
    ("PROMPT_TUNING", dict(num_virtual_tokens=5)),
    ("PREFIX_TUNING", dict(num_virtual_tokens=9)),
    ("PREFIX_TUNING", dict(num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=32)),
    ("P_TUNING", dict(num_virtual_tokens=6, encoder_hidden_size=32)),
]


@pytest.fixture(scope="module")
def world(tiny_llama_dir, adapter_factory):
    """(base dir, adapter dirs, prompt token ids, expected(content, prompt) -> PEFT's tokens)."""
    adapters = [adapter_factory(tiny_llama_dir, peft_type, **options) for peft_type, options in CONTENTS]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompt_ids = [tokenizer(p).input_ids for p in PROMPTS]

    @functools.cache
    def expected(content: int | None, prompt: int) -> tuple[int, ...]:
        if content is None:
            return tuple(base_greedy(tiny_llama_dir, prompt_ids[prompt], MAX_NEW))
        return tuple(peft_greedy(tiny_llama_dir, adapters[content], prompt_ids[prompt], MAX_NEW))

    return tiny_llama_dir, adapters, prompt_ids, expected


def test_prefix_blocks_are_held_once_by_many_requests(tiny_llama_dir, adapter_factory):
    engine = make_engine(tiny_llama_dir, block_size=4, num_kv_blocks=128)
    upload_folder(engine, "prefix", adapter_factory(tiny_llama_dir, "PREFIX_TUNING", num_virtual_tokens=9))
    upload_folder(engine, "pt", adapter_factory(tiny_llama_dir, "PROMPT_TUNING", num_virtual_tokens=5))
    n = 8
    for i in range(n):
        engine.add_request(request(f"x{i}", [5, 6, 7, 8, 9, 10], 20, "prefix"))
        engine.add_request(request(f"y{i}", [5, 6, 7, 8, 9, 10], 20, "pt"))
    engine.step()
    stats = engine.stats()
    assert stats.num_running == 2 * n
    assert stats.num_resident_tasks == 2
    assert stats.num_registry_blocks == 3 + 2  # ceil(9/4) + ceil(5/4): one copy each, not one per request
    own_blocks = sum(len(seq.own_blocks) for seq in engine.scheduler.running)
    assert own_blocks == 2 * n * 2  # 7 own tokens (6 prompt + 1 generated) -> 2 blocks per request
    assert stats.num_free_blocks == 128 - 5 - own_blocks
    assert engine.prompt_cache.num_loads == 2  # the prompt-tuning K/V were computed once for all 8 requests


def test_replacing_a_task_keeps_admitted_requests_on_their_version(world):
    base_dir, adapters, prompt_ids, expected = world
    engine = make_engine(base_dir, block_size=4, num_kv_blocks=128)
    upload_folder(engine, "t", adapters[0])
    old = engine.add_request(request("old", prompt_ids[0], MAX_NEW, "t"))
    engine.step()
    upload_folder(engine, "t", adapters[1])
    new = engine.add_request(request("new", prompt_ids[0], MAX_NEW, "t"))
    engine.registry.delete("t")
    run_to_completion(engine)
    assert tuple(old.result(timeout=5)[0]) == expected(0, 0)
    assert tuple(new.result(timeout=5)[0]) == expected(1, 0)
    assert (old.task_version, new.task_version) == (1, 2)


_events = st.lists(
    st.one_of(
        st.tuples(st.just("arrive"), st.sampled_from([None, "a", "b"]), st.integers(0, len(PROMPTS) - 1)),
        st.tuples(st.just("replace"), st.sampled_from(["a", "b"]), st.integers(0, len(CONTENTS) - 1)),
        st.tuples(st.just("abort"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("step"), st.integers(1, 3), st.just(0)),
    ),
    min_size=4,
    max_size=30,
)


@pytest.mark.slow  # 25 random schedules, each checked against PEFT
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=_events)
def test_random_interleavings_never_mix_prompts(world, events):
    base_dir, adapters, prompt_ids, expected = world
    # 20 blocks of 4 tokens: requests get preempted and prompts evicted along the way
    engine = make_engine(base_dir, block_size=4, num_kv_blocks=20, max_num_batched_tokens=16)
    content_of = {}  # (task, version) -> adapter contents index
    for task, content in (("a", 0), ("b", 1)):
        content_of[(task, upload_folder(engine, task, adapters[content]).version)] = content
    admitted = []  # (handle, content or None, prompt index)
    for kind, x, y in events:
        if kind == "arrive":
            handle = engine.add_request(request(f"r{len(admitted)}", prompt_ids[y], MAX_NEW, x))
            admitted.append((handle, None if x is None else content_of[(x, handle.task_version)], y))
        elif kind == "replace":
            content_of[(x, upload_folder(engine, x, adapters[y]).version)] = y
        elif kind == "abort" and admitted:
            engine.abort(admitted[x % len(admitted)][0].request_id)
        elif kind == "step":
            for _ in range(x):
                engine.step()
    run_to_completion(engine)
    for handle, content, prompt in admitted:
        tokens, _, last = handle.result(timeout=5)
        want = expected(content, prompt)
        if last.finish_reason is FinishReason.ABORTED:
            assert tuple(tokens) == want[: len(tokens)], f"{handle.request_id} diverged before its abort"
        else:
            assert tuple(tokens) == want, f"{handle.request_id} got another prompt's tokens"
    assert engine.registry.stats().num_pinned_versions == 0
    assert engine.stats().num_free_blocks + engine.prompt_cache.num_blocks == 20


def test_preempted_requests_resume_with_their_own_prompt(world):
    base_dir, adapters, prompt_ids, expected = world
    engine = make_engine(base_dir, block_size=4, num_kv_blocks=14)
    upload_folder(engine, "a", adapters[1])
    upload_folder(engine, "b", adapters[0])
    cases = [(f"r{i}", ["a", "b", None][i % 3], i % len(PROMPTS)) for i in range(9)]
    handles = [engine.add_request(request(rid, prompt_ids[p], MAX_NEW, task)) for rid, task, p in cases]
    seqs = [live.seq for live in engine._arrivals]
    run_to_completion(engine)
    assert sum(seq.num_preemptions for seq in seqs) > 0, "the pool was meant to be too small for all at once"
    for handle, (rid, task, p) in zip(handles, cases):
        content = {"a": 1, "b": 0, None: None}[task]
        assert tuple(handle.result(timeout=5)[0]) == expected(content, p), rid
