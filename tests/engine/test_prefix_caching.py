"""Automatic prefix caching in the scheduler: what a sequence reuses, from whom it may never reuse, and eviction.

Stepped without a model (tests/support/scheduler_sim.py), whose invariants run after every step: holds counted,
nothing leaked, a shared block never written, a sequence's published blocks under its own keys. Whether the reused
K/V give PEFT's tokens is test_prefix_cache_equivalence.py's part.
"""

from __future__ import annotations

import pytest

from prompt_store.access import Caller
from server.engine.fair_share import PROMPT_TOKEN_COST
from server.engine.sequence import Sequence
from tests.support.scheduler_sim import Sim, make_registry

PROMPT = tuple(range(10, 20))  # 10 tokens: two full blocks of 4, then two tokens


def first_start(s: Sim, seq: Sequence) -> int:
    """Steps until `seq` is scheduled; returns where its first chunk starts (the tokens it found cached)."""
    for _ in range(100):
        out = s.step()
        chunk = next((c for c in out.sequence_chunks if c.seq is seq), None)
        if chunk is not None:
            return chunk.own_start
    raise AssertionError(f"{seq.request_id} was never scheduled")


def served(s: Sim, prompt=PROMPT, **options) -> int:
    """Run one request to its end; returns the tokens it found cached."""
    seq = s.add(len(prompt), prompt=tuple(prompt), **options)
    start = first_start(s, seq)
    s.run()
    return start


def test_a_repeated_prompt_reuses_its_full_blocks_and_counts_the_hit(sim):
    s = sim(block_size=4)
    assert served(s) == 0
    assert served(s) == 8  # both full blocks; the last two tokens are computed
    stats = s.prefix_cache
    assert (stats.num_queried_tokens, stats.num_hit_tokens) == (20, 8)


def test_the_last_token_is_always_computed(sim):
    """A prompt of exactly two full blocks reuses one: its last token must run to give logits to sample from."""
    s = sim(block_size=4)
    prompt = PROMPT[:8]
    served(s, prompt)
    assert served(s, prompt) == 4


def test_the_chain_stops_at_the_first_block_that_differs(sim):
    s = sim(block_size=4)
    served(s)
    assert served(s, PROMPT[:4] + (99, 98, 97, 96, 95, 94)) == 4  # first block the same, then different
    assert served(s, (99,) + PROMPT[1:]) == 0  # the same later blocks after a different first: other keys


def test_sequences_running_at_once_share_the_blocks(sim):
    s = sim(block_size=4)
    first = s.add(len(PROMPT), prompt=PROMPT, max_new_tokens=8)
    first_start(s, first)
    second = s.add(len(PROMPT), prompt=PROMPT, max_new_tokens=8)
    assert first_start(s, second) == 8
    assert second.own_blocks[:2] == first.own_blocks[:2]  # the same blocks, held twice (Sim.check counts holds)
    assert second.own_blocks[2] != first.own_blocks[2]  # each computes its own part-filled block
    s.run()
    assert s.block_manager.num_free == s.block_manager.num_blocks


FANNED = Caller(tenant="fanned")
OTHER = Caller(tenant="other-tenant")


@pytest.mark.parametrize(
    "first, second",
    [
        ({}, {"task": "pt4"}),  # the base model and a task
        ({"task": "pt4"}, {}),
        ({"task": "pt4"}, {"task": "pt6"}),  # two tasks, the same text
        ({"task": "prefix5"}, {"task": "prefix8"}),
        ({"task": "pt4"}, {"task": "prefix5"}),
        ({"task": "multi", "subtask": 0}, {"task": "multi", "subtask": 1}),  # two sub-tasks of one multitask prompt
        ({"caller": FANNED}, {"caller": OTHER}),  # two tenants, the base model
        ({"task": "pt4", "caller": FANNED}, {"task": "pt4", "caller": OTHER}),  # two tenants, one shared task
        ({"caller": FANNED}, {}),  # a tenant and the anonymous caller
    ],
)
def test_different_contexts_never_share_a_block(sim, first, second):
    s = sim(block_size=4)
    a = s.add(len(PROMPT), prompt=PROMPT, max_new_tokens=8, **first)
    first_start(s, a)
    for _ in range(3):
        s.step()  # `a`'s prompt is computed and published, `a` still running
    b = s.add(len(PROMPT), prompt=PROMPT, max_new_tokens=8, **second)
    assert first_start(s, b) == 0
    assert not set(a.own_blocks) & set(b.own_blocks)
    assert served(s, **second) == 8, "the control: the same context does hit"


def test_a_new_version_never_hits_the_old(tmp_path):
    registry = make_registry(tmp_path)
    s = Sim(registry, block_size=4)
    try:
        assert served(s, task="pt4") == 0
        assert served(s, task="pt4") == 8  # version 1 hits version 1
        assert registry.upload("pt4", *registry.spare_files["pt4"]).version == 2
        assert served(s, task="pt4") == 0  # version 2: the same text, other K/V
        assert served(s, task="pt4") == 8
    finally:
        s.close()


def test_unused_cached_blocks_are_reused_least_recently_used_first(sim):
    """A pool of 12 blocks: each prompt leaves 3 cached; new prompts take the oldest unused ones."""
    s = sim(block_size=4, num_blocks=12, max_num_batched_tokens=64)
    prompts = [tuple(range(12 * k, 12 * k + 12)) for k in range(6)]  # with their output, 3 full blocks each
    for prompt in prompts:
        served(s, prompt)
    manager = s.block_manager
    assert manager.num_forgotten > 0 and manager.num_free == manager.num_blocks
    assert served(s, prompts[-1]) == 8  # the most recent is still there
    assert served(s, prompts[0]) == 0  # the oldest was reused for newer prompts


def test_cached_blocks_in_use_are_never_taken_and_pressure_still_preempts(sim):
    """Eight sequences of one prompt hold the same cached blocks while growing in a tight pool: the invariants
    (Sim.check) hold every step, and all finish."""
    s = sim(block_size=2, num_blocks=24, max_num_seqs=8, max_num_batched_tokens=16)
    seqs = [s.add(len(PROMPT), prompt=PROMPT, max_new_tokens=12) for _ in range(8)]
    outs = s.run()
    assert any(out.preempted for out in outs), "the pool is meant to be the limit"
    assert all(seq.num_generated == 12 for seq in seqs)
    assert s.prefix_cache.num_hit_tokens > 0


def test_a_preempted_sequence_resumes_from_its_cached_blocks(sim):
    s = sim(block_size=2, num_blocks=16, max_num_seqs=4, max_num_batched_tokens=16)
    for _ in range(4):
        s.add(6, max_new_tokens=20)
    resumed = []  # where re-admitted sequences started
    while s.scheduler.has_work:
        running = {id(seq) for seq in s.scheduler.running}
        out = s.step()
        resumed += [c.own_start for c in out.sequence_chunks if c.seq.num_preemptions and id(c.seq) not in running]
    # Whole blocks of what it had computed, unless the growth it made room for took them first.
    assert any(start > 0 for start in resumed) and all(start % 2 == 0 for start in resumed)


def test_cached_prompt_tokens_are_not_charged_to_the_tenant(sim):
    s = sim(block_size=4)
    caller = Caller(tenant="charged")

    def charged_in_first_step() -> float:
        """The class's charge for the step that admits a fresh request of PROMPT (its prompt and first token)."""
        seq = s.add(len(PROMPT), prompt=PROMPT, caller=caller)
        before = s.scheduler.fair_share.counter("charged")
        s.step()
        charged = s.scheduler.fair_share.counter("charged") - before
        assert seq.num_generated == 1
        s.run()
        return charged

    assert charged_in_first_step() - charged_in_first_step() == 8 * PROMPT_TOKEN_COST


def test_with_caching_off_nothing_is_reused(sim):
    s = sim(block_size=4, enable_prefix_caching=False)
    assert served(s) == 0 and served(s) == 0
    assert s.prefix_cache.num_hit_tokens == 0 and s.block_manager.num_published == 0
