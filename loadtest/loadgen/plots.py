"""PNG plots of a run (matplotlib, headless): latency distributions, and the run over time."""

from __future__ import annotations

import math
from pathlib import Path

from loadtest.loadgen.metrics import RequestRecord

GROUPS = (("all", lambda r: True), ("base model", lambda r: r.task is None), ("tasks", lambda r: r.task is not None))


def write_plots(records: list[RequestRecord], prefix: Path, title: str) -> list[Path]:
    """`PREFIX_latency.png` and `PREFIX_timeline.png`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    return [
        _latency_cdfs(records, Path(f"{prefix}_latency.png"), title),
        _timeline(records, Path(f"{prefix}_timeline.png"), title),
    ]


def _latency_cdfs(records: list[RequestRecord], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    done = [r for r in records if r.is_success]
    metrics = (
        ("TTFT", lambda r: [r.ttft_s] if r.ttft_s is not None else []),
        ("TPOT", lambda r: [r.tpot_s] if r.tpot_s is not None else []),
        ("ITL", lambda r: r.itls_s),
        ("end-to-end latency", lambda r: [r.e2e_s]),
    )
    is_mixed = len({r.task is None for r in done}) == 2
    groups = GROUPS if is_mixed else GROUPS[:1]  # split base / tasks only when the run has both
    figure, axes = plt.subplots(2, 2, figsize=(9, 6))
    for axis, (name, values_of) in zip(axes.flat, metrics):
        for label, member in groups:
            values = sorted(v * 1000 for r in done if member(r) for v in values_of(r))
            if values:
                axis.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=label)
        axis.set(title=name, xlabel="ms", ylabel="fraction of requests" if name != "ITL" else "fraction of gaps")
        axis.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    figure.suptitle(f"{title}: latency CDFs")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def _timeline(records: list[RequestRecord], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    sent = [r for r in records if not math.isnan(r.sent_s)]
    end = max((r.end_s for r in sent if not math.isnan(r.end_s)), default=1.0)
    num_bins = max(1, min(200, math.ceil(end)))
    width = end / num_bins
    edges = [i * width for i in range(num_bins + 1)]
    figure, (in_flight, throughput, latency) = plt.subplots(3, 1, figsize=(9, 7), sharex=True)

    steps = sorted([(r.sent_s, 1) for r in sent] + [(r.end_s, -1) for r in sent if not math.isnan(r.end_s)])
    times, counts, count = [0.0], [0], 0
    for time_s, delta in steps:
        count += delta
        times.append(time_s)
        counts.append(count)
    in_flight.step(times, counts, where="post")
    in_flight.set(ylabel="requests in flight")

    tokens = [0.0] * num_bins
    for r in sent:
        per_chunk = r.num_output_tokens / len(r.chunk_times_s) if r.chunk_times_s else 0
        for time_s in r.chunk_times_s:
            tokens[min(int(time_s / width), num_bins - 1)] += per_chunk
    throughput.bar(edges[:-1], [t / width for t in tokens], width=width, align="edge")
    throughput.set(ylabel="output tokens/s")

    done = [r for r in sent if r.is_success]
    latency.scatter([r.sent_s for r in done], [r.e2e_s for r in done], s=8, label="end-to-end")
    latency.scatter(
        [r.sent_s for r in done if r.ttft_s is not None],
        [r.ttft_s for r in done if r.ttft_s is not None],
        s=8,
        label="TTFT",
    )
    failed = [r for r in sent if not r.is_success]
    if failed:
        latency.scatter([r.sent_s for r in failed], [0] * len(failed), marker="x", color="red", label="failed")
    latency.set(xlabel="seconds since start (by send time)", ylabel="latency (s)")
    latency.legend(fontsize=8)
    for axis in (in_flight, throughput, latency):
        axis.grid(alpha=0.3)
    figure.suptitle(f"{title}: over time")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
