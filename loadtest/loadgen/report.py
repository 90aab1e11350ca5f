"""Writing a run out: the JSON results file and the table printed at the end."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from loadtest.loadgen.metrics import LatencyStats, RequestRecord, Summary, summarize


def results_document(
    config: dict, records: list[RequestRecord], summary: Summary, include_requests: bool = True
) -> dict:
    document = {
        "tool": "promptswap-loadgen",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpu_count": _cpu_count(),
            "load_average": _load_average(),
        },
        "config": config,
        "summary": asdict(summary),
        "by_group": {name: asdict(group) for name, group in summarize_groups(records, summary.slos_ms).items()},
    }
    if include_requests:
        document["requests"] = [record.to_json() for record in records]
    return document


def summarize_groups(
    records: list[RequestRecord], slos_ms: dict[str, float], group_of: Callable[[RequestRecord], str] | None = None
) -> dict[str, Summary]:
    """The summary of each group of requests; by default "base" (no task) and "task" (any soft prompt)."""
    group_of = group_of or (lambda record: "base" if record.task is None else "task")
    groups: dict[str, list[RequestRecord]] = {}
    for record in records:
        groups.setdefault(group_of(record), []).append(record)
    return {name: summarize(members, slos_ms) for name, members in sorted(groups.items())}


def write_json(document: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nan_to_none(document), indent=1, default=_json_default, allow_nan=False) + "\n")
    return path


def format_summary(summary: Summary, title: str = "") -> str:
    s = summary
    lines = ([f"==== {title} ===="] if title else []) + _counts(s) + [""]
    lines.append(f"{'latency (ms)':<14}{'mean':>9}{'p50':>9}{'p90':>9}{'p95':>9}{'p99':>9}{'max':>9}")
    for name, stats in (
        ("TTFT", s.ttft_ms),
        ("TPOT", s.tpot_ms),
        ("ITL", s.itl_ms),
        ("E2E", s.e2e_ms),
        ("send lag", s.send_lag_ms),
    ):
        lines.append(_latency_row(name, stats))
    return "\n".join(lines)


def _counts(s: Summary) -> list[str]:
    lines = [
        f"requests          {s.num_completed} completed, {s.num_failed} failed of {s.num_requests}"
        + (f"  errors: {s.errors}" if s.errors else ""),
        f"duration          {s.duration_s:.2f} s",
        f"request rate      {s.request_throughput:.3f} req/s",
        f"output tokens     {s.num_output_tokens}  ({s.output_token_throughput:.1f} tok/s)",
        f"total tokens      {s.num_prompt_tokens + s.num_output_tokens}  ({s.total_token_throughput:.1f} tok/s)",
    ]
    if s.num_short_outputs:
        lines.append(f"short outputs     {s.num_short_outputs} ended before max_tokens")
    if s.goodput is not None:
        slos = ", ".join(f"{name} <= {limit:g} ms" for name, limit in s.slos_ms.items())
        lines.append(f"goodput           {s.goodput:.3f} req/s  ({s.num_meeting_slos}/{s.num_requests} within {slos})")
    return lines


def _latency_row(name: str, stats: LatencyStats) -> str:
    if not stats.count:
        return f"{name:<14}{'-':>9}"
    values = (stats.mean, stats.p50, stats.p90, stats.p95, stats.p99, stats.max)
    return f"{name:<14}" + "".join(f"{value:9.1f}" for value in values)


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _cpu_count() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def nan_to_none(value):
    """JSON has no NaN: NaN (and infinities) become null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(item) for item in value]
    return value
