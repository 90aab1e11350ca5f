"""The task mix (Zipf over tasks, a base-model share, kinds mixed among popular tasks), length distributions,
and the seeded workload built from them."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from loadtest.loadgen.lengths import LengthDistribution
from loadtest.loadgen.prompt_text import PromptText
from loadtest.loadgen.workload import ZipfTaskMix, build_requests

TASKS = [f"pt-{i:03d}" for i in range(0, 20, 2)] + [f"px-{i:03d}" for i in range(1, 20, 2)]
NUM_DRAWS = 40_000


def _frequencies(mix: ZipfTaskMix, seed: int = 0) -> Counter:
    rng = random.Random(seed)
    return Counter(mix.sample(rng) for _ in range(NUM_DRAWS))


def test_zipf_probabilities_fall_as_one_over_rank_to_the_exponent():
    mix = ZipfTaskMix(TASKS, exponent=1.2)
    p = mix.task_probabilities
    assert sum(p) == pytest.approx(1.0)
    for rank in range(1, len(p)):
        assert p[rank] / p[0] == pytest.approx(1 / (rank + 1) ** 1.2)


def test_zipf_draws_match_their_probabilities():
    mix = ZipfTaskMix(TASKS, exponent=1.0, base_fraction=0.1, seed=3)
    counts = _frequencies(mix)
    assert counts[None] / NUM_DRAWS == pytest.approx(0.1, abs=0.01)
    for task in TASKS:
        expected = mix.probability(task)
        assert counts[task] / NUM_DRAWS == pytest.approx(expected, abs=0.01 + 0.1 * expected)
    top = mix.ranked_tasks[0]
    assert counts[top] == max(count for task, count in counts.items() if task is not None)


def test_exponent_zero_is_uniform_and_base_fraction_one_is_base_only():
    counts = _frequencies(ZipfTaskMix(TASKS, exponent=0.0))
    assert max(counts.values()) / min(counts.values()) < 1.15
    assert set(_frequencies(ZipfTaskMix(TASKS, base_fraction=1.0))) == {None}
    assert set(_frequencies(ZipfTaskMix([], base_fraction=1.0))) == {None}


def test_popular_ranks_mix_kinds_even_when_names_group_by_kind():
    mix = ZipfTaskMix(TASKS, seed=0)
    assert {task[:2] for task in mix.ranked_tasks[:6]} == {"pt", "px"}
    assert mix.ranked_tasks != ZipfTaskMix(TASKS, seed=1).ranked_tasks


@pytest.mark.parametrize(
    "make",
    [
        lambda: ZipfTaskMix(TASKS, exponent=-1),
        lambda: ZipfTaskMix(TASKS, base_fraction=2),
        lambda: ZipfTaskMix([], base_fraction=0.5),
    ],
)
def test_invalid_mixes_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_length_distributions_stay_in_range():
    rng = random.Random(0)
    assert {LengthDistribution.parse("fixed:64").sample(rng) for _ in range(50)} == {64}
    uniform = [LengthDistribution.parse("uniform:8:12").sample(rng) for _ in range(2000)]
    assert set(uniform) == {8, 9, 10, 11, 12}
    normal = [LengthDistribution.parse("normal:100:20", max_len=120).sample(rng) for _ in range(5000)]
    assert min(normal) >= 1 and max(normal) == 120
    assert sum(normal) / len(normal) == pytest.approx(96.7, abs=2)  # the clipped mean
    lognormal = sorted(LengthDistribution.parse("lognormal:50:0.5").sample(rng) for _ in range(5001))
    assert lognormal[2500] == pytest.approx(50, abs=3)  # median


@pytest.mark.parametrize("text", ["fixed", "fixed:0", "uniform:9:3", "poisson:3", "normal:a:b", "fixed:-2"])
def test_bad_length_specs_name_the_problem(text):
    with pytest.raises(ValueError, match="length distribution"):
        LengthDistribution.parse(text)


def test_build_requests_is_reproducible_and_follows_the_distributions():
    mix = ZipfTaskMix(TASKS, base_fraction=0.25)
    args = (200, mix, LengthDistribution.parse("uniform:5:9"), LengthDistribution.parse("fixed:7"), PromptText())
    specs = build_requests(*args, seed=1)
    assert specs == build_requests(*args, seed=1)
    assert [spec.index for spec in specs] == list(range(200))
    assert all(spec.max_tokens == 7 and 5 <= spec.num_prompt_tokens <= 9 for spec in specs)
    assert all(len(spec.prompt.split()) == spec.num_prompt_tokens for spec in specs)  # no tokenizer: words
    assert 30 <= sum(spec.task is None for spec in specs) <= 70


def test_a_tokenizer_makes_prompt_lengths_exact(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    text = PromptText(tokenizer)
    rng = random.Random(0)
    for num_tokens in (1, 17, 200):
        prompt = text.make(num_tokens, rng)
        assert len(tokenizer(prompt, add_special_tokens=False).input_ids) == num_tokens
