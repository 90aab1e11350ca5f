"""What a run measured: one record per request, and the summary the report prints (latency percentiles,
throughput, goodput under SLOs, errors). Times are seconds from the start of the run, on the client's clock.

Definitions (the ones vLLM's and TGI's benchmark clients use):
- TTFT: first content received - request sent.
- TPOT: (end - first content) / (output tokens - 1), per request; undefined for one-token outputs.
- ITL: gaps between consecutive content chunks (a chunk may carry more than one token).
- E2E: end - request sent.
- throughput: completed requests or tokens / (last end - first send).
- goodput: completed requests meeting every SLO / the same duration.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import asdict, dataclass, field

PERCENTILES = (50, 90, 95, 99)
SLO_METRICS = ("ttft", "tpot", "e2e")


@dataclass
class RequestRecord:
    index: int  # the RequestSpec's index
    task: str | None  # None: the base model
    due_s: float = math.nan  # when the arrival process wanted it sent (closed loop: when it was sent)
    sent_s: float = math.nan  # when it was actually sent; NaN until then
    end_s: float = math.nan  # when the response ended (or failed); NaN until then
    chunk_times_s: list[float] = field(default_factory=list)  # arrival of each non-empty content chunk
    num_prompt_tokens: int | None = None  # as the server counted them (None if it did not say)
    num_output_tokens: int = 0  # server's usage if given, else chunks received
    max_tokens: int = 0  # asked for
    error: str | None = None  # None: success; else a short kind, "http_429", "ReadTimeout", ...

    @property
    def is_success(self) -> bool:
        return self.error is None

    @property
    def ttft_s(self) -> float | None:
        return self.chunk_times_s[0] - self.sent_s if self.chunk_times_s else None

    @property
    def e2e_s(self) -> float:
        return self.end_s - self.sent_s

    @property
    def tpot_s(self) -> float | None:
        if not self.chunk_times_s or self.num_output_tokens < 2:
            return None
        return (self.end_s - self.chunk_times_s[0]) / (self.num_output_tokens - 1)

    @property
    def itls_s(self) -> list[float]:
        times = self.chunk_times_s
        return [later - earlier for earlier, later in itertools.pairwise(times)]

    def meets(self, slos_ms: dict[str, float]) -> bool:
        """Succeeded and within every SLO; a metric the request has no value for (TPOT of a 1-token output,
        TTFT without streaming) does not count against it."""
        if not self.is_success:
            return False
        values = {"ttft": self.ttft_s, "tpot": self.tpot_s, "e2e": self.e2e_s}
        return all(values[name] is None or values[name] * 1000 <= limit for name, limit in slos_ms.items())

    def to_json(self) -> dict:
        return asdict(self) | {"ttft_s": self.ttft_s, "tpot_s": self.tpot_s, "e2e_s": self.e2e_s}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


@dataclass(frozen=True)
class LatencyStats:
    """One latency metric over a run, in milliseconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencyStats:
        ms = [value * 1000 for value in seconds]
        if not ms:
            return cls(0, *([math.nan] * 6))
        return cls(len(ms), sum(ms) / len(ms), *(percentile(ms, q) for q in PERCENTILES), max(ms))


@dataclass(frozen=True)
class Summary:
    num_requests: int
    num_completed: int
    num_failed: int
    errors: dict[str, int]  # error kind -> count
    duration_s: float  # first send to last end
    request_throughput: float  # completed requests / s
    output_token_throughput: float  # generated tokens / s
    total_token_throughput: float  # prompt + generated tokens / s
    num_output_tokens: int
    num_prompt_tokens: int
    num_short_outputs: int  # completed with fewer tokens than asked (EOS honoured, stop, or a server limit)
    ttft_ms: LatencyStats
    tpot_ms: LatencyStats
    itl_ms: LatencyStats
    e2e_ms: LatencyStats
    send_lag_ms: LatencyStats  # sent - due: how far the generator fell behind its schedule
    slos_ms: dict[str, float]  # metric -> limit
    goodput: float | None  # requests / s meeting every SLO; None when no SLO was given
    num_meeting_slos: int | None


def summarize(records: list[RequestRecord], slos_ms: dict[str, float] | None = None) -> Summary:
    slos_ms = dict(slos_ms or {})
    unknown = set(slos_ms) - set(SLO_METRICS)
    if unknown:
        raise ValueError(f"unknown SLO metric(s) {sorted(unknown)}; use {SLO_METRICS}")
    done = [r for r in records if r.is_success]
    duration = _duration(records)
    num_output = sum(r.num_output_tokens for r in done)
    num_prompt = sum(r.num_prompt_tokens or 0 for r in done)
    num_meeting = sum(r.meets(slos_ms) for r in records) if slos_ms else None
    return Summary(
        num_requests=len(records),
        num_completed=len(done),
        num_failed=len(records) - len(done),
        errors=dict(Counter(r.error for r in records if r.error)),
        duration_s=duration,
        request_throughput=_rate(len(done), duration),
        output_token_throughput=_rate(num_output, duration),
        total_token_throughput=_rate(num_output + num_prompt, duration),
        num_output_tokens=num_output,
        num_prompt_tokens=num_prompt,
        num_short_outputs=sum(r.num_output_tokens < r.max_tokens for r in done),
        ttft_ms=LatencyStats.of([r.ttft_s for r in done if r.ttft_s is not None]),
        tpot_ms=LatencyStats.of([r.tpot_s for r in done if r.tpot_s is not None]),
        itl_ms=LatencyStats.of([gap for r in done for gap in r.itls_s]),
        e2e_ms=LatencyStats.of([r.e2e_s for r in done]),
        send_lag_ms=LatencyStats.of([r.sent_s - r.due_s for r in records if not math.isnan(r.sent_s)]),
        slos_ms=slos_ms,
        goodput=_rate(num_meeting, duration) if slos_ms else None,
        num_meeting_slos=num_meeting,
    )


def parse_slo(text: str) -> tuple[str, float]:
    """`ttft:500` -> ("ttft", 500.0): a metric and its limit in milliseconds."""
    name, _, value = text.partition(":")
    if name not in SLO_METRICS or not value:
        raise ValueError(f"SLO {text!r}: expected METRIC:MILLISECONDS with METRIC one of {SLO_METRICS}")
    limit = float(value)
    if limit <= 0:
        raise ValueError(f"SLO {text!r}: the limit must be > 0 ms")
    return name, limit


def _duration(records: list[RequestRecord]) -> float:
    ended = [r.end_s for r in records if not math.isnan(r.end_s)]
    if not ended:
        return 0.0
    return max(ended) - min(r.sent_s for r in records if not math.isnan(r.sent_s))


def _rate(count: float, duration: float) -> float:
    return count / duration if duration > 0 else math.nan
