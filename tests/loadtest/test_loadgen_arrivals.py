"""Arrival processes: the rate and burstiness asked for are the ones the send times have."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from loadtest.loadgen.arrivals import FixedConcurrency, GammaArrivals

NUM_SAMPLES = 20_000


def _gaps(arrivals: GammaArrivals, seed: int = 0) -> list[float]:
    times = arrivals.send_times(NUM_SAMPLES, random.Random(seed))
    return [later - earlier for earlier, later in zip([0.0, *times], times)]


@pytest.mark.parametrize("rate", [0.5, 4.0, 100.0])
def test_poisson_gaps_are_exponential_with_mean_one_over_rate(rate):
    gaps = _gaps(GammaArrivals(rate))
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / rate, rel=0.03)
    assert statistics.pstdev(gaps) / mean == pytest.approx(1.0, abs=0.03)  # exponential: CV = 1
    # Memoryless: P(gap > mean) = e^-1.
    assert sum(gap > 1 / rate for gap in gaps) / len(gaps) == pytest.approx(math.exp(-1), abs=0.015)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_keeps_the_rate_and_sets_the_coefficient_of_variation(burstiness):
    gaps = _gaps(GammaArrivals(rate=2.0, burstiness=burstiness))
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(0.5, rel=0.04)
    assert statistics.pstdev(gaps) / mean == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)


def test_send_times_are_non_decreasing_and_reproducible():
    arrivals = GammaArrivals(rate=3.0, burstiness=0.5)
    times = arrivals.send_times(1000, random.Random(7))
    assert times == sorted(times) and times[0] > 0
    assert times == arrivals.send_times(1000, random.Random(7))
    assert times != arrivals.send_times(1000, random.Random(8))


def test_infinite_rate_sends_everything_at_once():
    assert GammaArrivals(math.inf).send_times(5, random.Random(0)) == [0.0] * 5
    assert GammaArrivals(math.inf).describe() == "all requests at once"


@pytest.mark.parametrize(
    "make",
    [
        lambda: GammaArrivals(0),
        lambda: GammaArrivals(-1.0),
        lambda: GammaArrivals(1.0, burstiness=0),
        lambda: FixedConcurrency(0),
    ],
)
def test_invalid_processes_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_descriptions_name_the_process():
    assert GammaArrivals(2.0).describe() == "Poisson arrivals at 2 req/s"
    assert GammaArrivals(2.0, 0.25).describe() == "gamma (burstiness 0.25) arrivals at 2 req/s"
    assert FixedConcurrency(64).describe() == "fixed concurrency 64"
