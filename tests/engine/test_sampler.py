"""Sampler: greedy, HF-compatible repetition penalty / top-k / top-p / temperature, per-request seeded RNG."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from server.engine import sampler
from server.engine.request import SamplingParams
from server.engine.sampler import (
    apply_repetition_penalty,
    filter_top_k,
    filter_top_p,
    sample,
    sample_row,
)

VOCAB = 64


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _random_logits(seed: int, rows: int = 1, vocab: int = VOCAB, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=_generator(seed), dtype=dtype) * 3


def _survivors(row: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(row)).flatten().tolist())


def test_greedy_is_argmax_per_row():
    logits = _random_logits(0, rows=5)
    greedy = SamplingParams()
    chosen = sample(logits.clone(), [greedy] * 5, [[] for _ in range(5)], [None] * 5)
    assert chosen == logits.argmax(-1).tolist()


def test_greedy_ignores_sampling_knobs():
    logits = _random_logits(1, rows=1)
    params = SamplingParams(temperature=5.0, top_k=3, top_p=0.5)  # do_sample False
    assert sample(logits.clone(), [params], [[]], [None]) == [int(logits.argmax())]


@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_matches_transformers(penalty):
    for seed in range(20):
        logits = _random_logits(seed)
        seen = torch.randint(0, VOCAB, (12,), generator=_generator(100 + seed)).tolist()  # repeats included
        expected = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([seen]), logits.clone())
        row = logits[0].clone()
        apply_repetition_penalty(row, seen, penalty)
        torch.testing.assert_close(row, expected[0], rtol=0, atol=0)


def test_repetition_penalty_changes_the_greedy_choice():
    logits = torch.tensor([[3.0, 2.9, -1.0, 0.0]])
    params = SamplingParams(repetition_penalty=2.0)
    assert sample(logits.clone(), [params], [[0]], [None]) == [1]  # 3.0 / 2 < 2.9
    assert sample(logits.clone(), [SamplingParams()], [[0]], [None]) == [0]


def test_repetition_penalty_with_nothing_seen_is_a_no_op():
    logits = _random_logits(3)
    row = logits[0].clone()
    apply_repetition_penalty(row, [], 1.7)
    torch.testing.assert_close(row, logits[0], rtol=0, atol=0)


@pytest.mark.parametrize("top_k", [1, 2, 7, VOCAB - 1, VOCAB, VOCAB + 5])
def test_top_k_matches_transformers(top_k):
    for seed in range(20):
        logits = _random_logits(seed, dtype=torch.float64)
        expected = TopKLogitsWarper(top_k)(None, logits.clone())
        assert _survivors(filter_top_k(logits[0].clone(), top_k)) == _survivors(expected[0])


def test_top_k_zero_keeps_everything():
    logits = _random_logits(4)
    assert _survivors(filter_top_k(logits[0].clone(), 0)) == set(range(VOCAB))


@pytest.mark.parametrize("top_p", [0.01, 0.1, 0.5, 0.8, 0.95, 0.999, 1.0])
def test_top_p_matches_transformers(top_p):
    for seed in range(30):
        logits = _random_logits(seed, dtype=torch.float64)  # float64: no ties at the cut-off from rounding
        expected = TopPLogitsWarper(top_p)(None, logits.clone())
        survivors = _survivors(filter_top_p(logits[0].clone(), top_p))
        assert survivors == _survivors(expected[0]), f"seed {seed}"
        assert int(logits.argmax()) in survivors


def test_top_p_with_one_dominant_token_keeps_just_it():
    logits = torch.tensor([10.0, 0.0, 0.0, 0.0])
    assert _survivors(filter_top_p(logits, 0.9)) == {0}


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [
        (1.0, 0, 1.0),
        (0.7, 0, 1.0),
        (1.5, 5, 1.0),
        (0.8, 0, 0.9),
        (1.3, 10, 0.7),
        (0.5, 3, 0.5),
    ],
)
def test_sampling_distribution_matches_transformers(monkeypatch, temperature, top_k, top_p):
    """The probabilities handed to multinomial are HF's: temperature, then top-k, then top-p, then softmax."""
    captured = []
    real_multinomial = torch.multinomial

    def spy(probs, num_samples, **kwargs):
        captured.append(probs.clone())
        return real_multinomial(probs, num_samples, **kwargs)

    monkeypatch.setattr(sampler.torch, "multinomial", spy)
    params = SamplingParams(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    for seed in range(10):
        logits = _random_logits(seed)
        scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        scores = TopPLogitsWarper(top_p)(None, scores)
        expected = scores.softmax(-1)[0]
        token = sample_row(logits[0].clone(), params, _generator(seed))
        torch.testing.assert_close(captured[-1], expected, rtol=1e-5, atol=1e-6)
        assert expected[token] > 0


def test_sampled_tokens_stay_in_the_filtered_set():
    logits = _random_logits(5)
    params = SamplingParams(do_sample=True, top_k=4)
    allowed = set(torch.topk(logits[0], 4).indices.tolist())
    g = _generator(0)
    tokens = {sample_row(logits[0].clone(), params, g) for _ in range(300)}
    assert tokens <= allowed
    assert len(tokens) > 1  # it does sample, not argmax


def test_low_temperature_approaches_greedy_and_high_temperature_spreads():
    logits = _random_logits(6)
    g = _generator(1)
    cold = SamplingParams(do_sample=True, temperature=1e-3)
    assert {sample_row(logits[0].clone(), cold, g) for _ in range(50)} == {int(logits.argmax())}
    hot = SamplingParams(do_sample=True, temperature=100.0)
    assert len({sample_row(logits[0].clone(), hot, g) for _ in range(200)}) > VOCAB // 2


def _draw(seed: int, logits: torch.Tensor, steps: int = 20) -> list[int]:
    params = SamplingParams(do_sample=True, seed=seed)
    g = _generator(seed)
    return [sample(logits.clone(), [params], [[]], [g])[0] for _ in range(steps)]


def test_same_seed_same_samples_different_seed_different():
    logits = torch.zeros(1, 1000)  # uniform: collisions across 20 draws are negligible
    assert _draw(7, logits) == _draw(7, logits)
    assert _draw(7, logits) != _draw(8, logits)


def test_a_seeded_row_samples_the_same_in_any_batch():
    logits = _random_logits(9, rows=4, vocab=500) / 3  # flat-ish: many plausible tokens
    sampled = SamplingParams(do_sample=True, seed=3)
    alone = sample(logits[2:3].clone(), [sampled], [[]], [_generator(3)])
    batch_params = [SamplingParams(), SamplingParams(do_sample=True, seed=11), sampled, SamplingParams()]
    gens = [None, _generator(11), _generator(3), None]
    batched = sample(logits.clone(), batch_params, [[]] * 4, gens)
    assert batched[2] == alone[0]
    assert batched[0] == int(logits[0].argmax()) and batched[3] == int(logits[3].argmax())


# ---- numerical safety: every row gets a valid token, whatever its logits or parameters ---------------------------
def _spy_multinomial(monkeypatch) -> list[torch.Tensor]:
    """Records the probabilities handed to multinomial, and fails the test if one is not a distribution."""
    captured = []
    real_multinomial = torch.multinomial

    def spy(probs, num_samples, **kwargs):
        assert bool(torch.isfinite(probs).all()) and float(probs.sum()) > 0 and bool((probs >= 0).all()), probs
        captured.append(probs.clone())
        return real_multinomial(probs, num_samples, **kwargs)

    monkeypatch.setattr(sampler.torch, "multinomial", spy)
    return captured


def _bad_rows() -> torch.Tensor:
    finite = _random_logits(20)[0]
    nan_row = finite.clone()
    nan_row[3] = float("nan")
    all_nan = torch.full((VOCAB,), float("nan"))
    pos_inf = finite.clone()
    pos_inf[[5, 9]] = float("inf")
    neg_inf = torch.full((VOCAB,), float("-inf"))
    mixed = finite.clone()
    mixed[::2] = float("-inf")
    huge = finite * 3e38  # overflows once divided by a temperature below 1
    return torch.stack([nan_row, all_nan, pos_inf, neg_inf, mixed, huge, finite])


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(do_sample=True),
        SamplingParams(do_sample=True, temperature=0.5, top_k=3, top_p=0.9),
        SamplingParams(do_sample=True, temperature=1e-300),
        SamplingParams(do_sample=True, temperature=5e-324),
        SamplingParams(do_sample=True, temperature=1e300),
        SamplingParams(do_sample=True, top_p=1e-300),
        SamplingParams(do_sample=True, top_k=2**70),
        SamplingParams(do_sample=True, repetition_penalty=1e-300),
        SamplingParams(do_sample=True, repetition_penalty=1e300),
        SamplingParams(repetition_penalty=1e-300),
        SamplingParams(),
    ],
)
def test_no_logits_and_no_parameters_make_the_sampler_raise(monkeypatch, params):
    _spy_multinomial(monkeypatch)
    logits = _bad_rows()
    rows = logits.shape[0]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        chosen = sample(logits.to(dtype), [params] * rows, [[0, 5, 7]] * rows, [_generator(i) for i in range(rows)])
        assert len(chosen) == rows and all(isinstance(t, int) and 0 <= t < VOCAB for t in chosen)


def test_a_sampled_row_that_is_no_distribution_takes_its_greedy_token(monkeypatch):
    captured = _spy_multinomial(monkeypatch)
    logits = _bad_rows()
    params = SamplingParams(do_sample=True)
    chosen = sample(logits, [params] * 7, [[]] * 7, [_generator(i) for i in range(7)])
    assert chosen[2] in (5, 9)  # an infinite logit wins
    assert chosen[0] != 3  # a NaN logit is -inf, never chosen
    assert chosen[4] % 2 == 1  # -inf entries are never drawn
    assert len(captured) == 7  # every row drew from a valid distribution (a one-hot one for the broken rows)


def test_a_temperature_below_epsilon_is_greedy_and_leaves_the_generator_alone(monkeypatch):
    captured = _spy_multinomial(monkeypatch)
    logits = _random_logits(21, rows=3)
    for temperature in (1e-300, 5e-324, 9e-6):
        params = SamplingParams(do_sample=True, temperature=temperature)
        assert params.is_greedy
        generator = _generator(4)
        state = generator.get_state()
        assert sample(logits.clone(), [params] * 3, [[]] * 3, [generator] * 3) == logits.argmax(-1).tolist()
        assert torch.equal(generator.get_state(), state)
    assert captured == []
    assert not SamplingParams(do_sample=True, temperature=1e-4).is_greedy


def test_a_huge_temperature_samples_uniformly_and_a_tiny_top_p_keeps_the_best_token():
    logits = _random_logits(22)
    hot = SamplingParams(do_sample=True, temperature=1e300)
    g = _generator(2)
    assert len({sample(logits.clone(), [hot], [[]], [g])[0] for _ in range(300)}) > VOCAB // 2
    for top_p in (1e-300, 5e-324, 1e-9):
        narrow = SamplingParams(do_sample=True, top_p=top_p)
        assert {sample(logits.clone(), [narrow], [[]], [g])[0] for _ in range(20)} == {int(logits.argmax())}


def test_a_huge_top_k_is_no_filter():
    logits = _random_logits(23, dtype=torch.float64)
    assert torch.equal(filter_top_k(logits[0].clone(), 2**70), logits[0])
    a = sample(logits.clone(), [SamplingParams(do_sample=True, top_k=2**70)], [[]], [_generator(5)])
    b = sample(logits.clone(), [SamplingParams(do_sample=True)], [[]], [_generator(5)])
    assert a == b


def test_broken_rows_leave_greedy_and_sampled_neighbours_as_they_were():
    good = _random_logits(24, rows=4, vocab=VOCAB)
    batch = torch.cat([good[:2], _bad_rows()[:2], good[2:]])
    params = [
        SamplingParams(),
        SamplingParams(do_sample=True, seed=1),
        SamplingParams(do_sample=True),
        SamplingParams(),
        SamplingParams(),
        SamplingParams(do_sample=True, seed=2),
    ]
    gens = [None, _generator(1), _generator(9), None, None, _generator(2)]
    chosen = sample(batch.clone(), params, [[]] * 6, gens)
    assert chosen[0] == int(good[0].argmax()) and chosen[4] == int(good[2].argmax())
    assert chosen[1] == sample(good[1:2].clone(), [params[1]], [[]], [_generator(1)])[0]
    assert chosen[5] == sample(good[3:4].clone(), [params[5]], [[]], [_generator(2)])[0]
    assert chosen[3] == 0  # all NaN: every logit -inf, the argmax is the first id


def test_batched_filters_equal_the_row_by_row_ones():
    logits = _random_logits(25, rows=5, dtype=torch.float64)
    ks, ps = [0, 1, 7, VOCAB, 3], [1.0, 0.3, 0.9, 0.5, 1.0]
    batched = sampler._filter(logits.clone(), ks, ps)
    for i in range(5):
        assert _survivors(batched[i]) == _survivors(filter_top_p(filter_top_k(logits[i].clone(), ks[i]), ps[i]))


@pytest.mark.parametrize(
    "values",
    [
        {"temperature": float("nan"), "do_sample": True},
        {"temperature": float("inf")},
        {"top_p": float("nan")},
        {"repetition_penalty": float("inf")},
        {"repetition_penalty": float("nan")},
        {"seed": 2**63},
        {"seed": -1},
    ],
)
def test_sampling_params_refuse_what_the_sampler_cannot_take(values):
    with pytest.raises(ValueError):
        SamplingParams(**values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_plain_greedy_fast_path_chooses_what_the_general_path_does(dtype):
    """Greedy rows with no penalty skip the NaN-scrubbed copy; a row whose maximum is NaN sends the whole batch
    down the general path, so NaN still counts as -inf."""
    greedy = [SamplingParams()] * 4
    for logits in (_random_logits(26, rows=4), torch.cat([_random_logits(27, rows=2), _bad_rows()[:2]])):
        logits = logits.to(dtype)
        original = logits.clone()
        chosen = sample(logits, greedy, [[]] * 4, [None] * 4)
        general = torch.where(logits.isnan(), float("-inf"), logits.float())
        assert chosen == sampler._choose(general, [sampler.SampleRow(p, [], 0) for p in greedy])
        assert torch.equal(logits.isnan(), original.isnan()) and torch.equal(logits.nan_to_num(), original.nan_to_num())
    assert sampler._plain_greedy(_random_logits(28, rows=3)) == _random_logits(28, rows=3).argmax(-1).tolist()
    assert sampler._plain_greedy(_bad_rows()) is None
