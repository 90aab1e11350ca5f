"""Percentiles, per-request latencies, throughput and goodput, on hand-built records with known answers."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from loadtest.loadgen.metrics import LatencyStats, RequestRecord, parse_slo, percentile, summarize


@pytest.mark.parametrize("size", [1, 2, 7, 100, 1001])
def test_percentile_matches_numpy_linear_interpolation(size):
    rng = random.Random(size)
    values = [rng.expovariate(1.0) for _ in range(size)]
    for q in (0, 1, 25, 50, 90, 95, 99, 99.9, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_is_nan_and_stats_count_zero():
    assert math.isnan(percentile([], 50))
    assert LatencyStats.of([]).count == 0


def test_latency_stats_are_in_milliseconds():
    stats = LatencyStats.of([0.1, 0.2, 0.3, 0.4])
    assert (stats.count, stats.mean, stats.p50, stats.max) == (4, pytest.approx(250), pytest.approx(250), 400)


def _record(index=0, sent=0.0, chunks=(0.5, 0.6, 0.8), end=None, tokens=None, error=None, task="t"):
    end = chunks[-1] if end is None and chunks else (end if end is not None else sent + 1)
    return RequestRecord(
        index,
        task,
        due_s=sent,
        sent_s=sent,
        end_s=end,
        chunk_times_s=list(chunks),
        num_prompt_tokens=10,
        num_output_tokens=len(chunks) if tokens is None else tokens,
        max_tokens=len(chunks) if tokens is None else tokens,
        error=error,
    )


def test_per_request_latencies():
    record = _record(sent=1.0, chunks=(1.5, 1.6, 1.8, 2.1))
    assert record.ttft_s == pytest.approx(0.5)
    assert record.e2e_s == pytest.approx(1.1)
    assert record.tpot_s == pytest.approx(0.6 / 3)
    assert record.itls_s == pytest.approx([0.1, 0.2, 0.3])
    # A chunk may carry several tokens: TPOT uses the token count, ITL the chunk gaps.
    assert _record(chunks=(0.5, 1.0), tokens=6).tpot_s == pytest.approx(0.5 / 5)
    assert _record(chunks=(0.5,)).tpot_s is None
    assert _record(chunks=()).ttft_s is None


def test_throughput_counts_completed_work_over_first_send_to_last_end():
    records = [
        _record(0, sent=0.0, chunks=(1.0, 2.0)),
        _record(1, sent=1.0, chunks=(2.0, 3.0, 4.0)),
        _record(2, sent=2.0, chunks=(), end=2.5, error="http_429"),
    ]
    summary = summarize(records)
    assert summary.duration_s == pytest.approx(4.0)
    assert (summary.num_completed, summary.num_failed, summary.errors) == (2, 1, {"http_429": 1})
    assert summary.request_throughput == pytest.approx(0.5)
    assert summary.output_token_throughput == pytest.approx(5 / 4)
    assert summary.total_token_throughput == pytest.approx((5 + 20) / 4)
    assert summary.e2e_ms.max == pytest.approx(3000)
    assert summary.goodput is None


def test_goodput_counts_only_successes_within_every_slo():
    fast = _record(0, chunks=(0.1, 0.2, 0.3))  # TTFT 100 ms, TPOT 100 ms, E2E 300 ms
    slow_start = _record(1, chunks=(0.9, 1.0, 1.1))  # TTFT 900 ms
    slow_tokens = _record(2, chunks=(0.1, 0.6, 1.1))  # TPOT 500 ms
    single = _record(3, chunks=(0.2,))  # no TPOT: does not count against it
    failed = _record(4, chunks=(), end=0.1, error="timeout")
    records = [fast, slow_start, slow_tokens, single, failed]
    summary = summarize(records, {"ttft": 500, "tpot": 200})
    assert summary.num_meeting_slos == 2
    assert summary.goodput == pytest.approx(2 / summary.duration_s)
    assert summarize(records, {"e2e": 1000}).num_meeting_slos == 2  # both slow ones end at 1.1 s
    assert summarize(records, {"ttft": 1000, "tpot": 1000, "e2e": 5000}).num_meeting_slos == 4


def test_short_outputs_are_counted():
    record = _record(chunks=(0.1, 0.2))
    record.max_tokens = 8
    assert summarize([record]).num_short_outputs == 1


@pytest.mark.parametrize("text, expected", [("ttft:500", ("ttft", 500.0)), ("e2e:2.5", ("e2e", 2.5))])
def test_parse_slo(text, expected):
    assert parse_slo(text) == expected


@pytest.mark.parametrize("text", ["ttft", "latency:3", "tpot:0", "tpot:x"])
def test_bad_slos_are_refused(text):
    with pytest.raises(ValueError):
        parse_slo(text)
    with pytest.raises(ValueError):
        summarize([], {"itl": 5})
