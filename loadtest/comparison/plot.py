"""A PNG of the comparison: tokens/s per arm (overall and decode phase) against the roofline."""

from __future__ import annotations

from pathlib import Path

from loadtest.comparison.results import ArmResult
from loadtest.comparison.roofline import Roofline

SHORT_NAMES = {
    "a": "(a) PEFT\none at a time",
    "b": "(b) PEFT\ngrouped by task",
    "c": "(c) transformers\ngenerate_batch",
    "d": "(d) promptswap\nno prompts",
    "e": "(e) promptswap\ntask mix",
    "f": "(f) promptswap\nno prompts, prompts\nas long as (e)'s",
    "g": "(g) promptswap\nchat, prefix\ncaching on",
    "h": "(h) promptswap\nchat, prefix\ncaching off",
}


def write_comparison_plot(best: dict[str, ArmResult], roofline: Roofline, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted(best)
    positions = range(len(arms))
    figure, axis = plt.subplots(figsize=(10, 4.8))
    overall = [best[arm].tokens_per_s for arm in arms]
    decode = [best[arm].decode_tokens_per_s or 0 for arm in arms]
    axis.bar([p - 0.2 for p in positions], overall, width=0.4, label="tokens/s, whole run (prefill included)")
    axis.bar([p + 0.2 for p in positions], decode, width=0.4, label="tokens/s while all sequences decode")
    for position, value in zip(positions, overall):
        axis.annotate(f"{value:.0f}", (position - 0.2, value), ha="center", va="bottom", fontsize=8)
    for position, value in zip(positions, decode):
        if value:
            axis.annotate(f"{value:.0f}", (position + 0.2, value), ha="center", va="bottom", fontsize=8)
    axis.axhline(
        roofline.tokens_per_s,
        color="red",
        linestyle="--",
        label=f"roofline {roofline.tokens_per_s:.0f} tok/s ({roofline.matmul_gflops:.0f} GFLOP/s / 2·params)",
    )
    axis.axhline(0.6 * roofline.tokens_per_s, color="red", linestyle=":", label="60% of the roofline")
    axis.axhline(
        roofline.linear_floor_tokens_per_s,
        color="gray",
        linestyle="-.",
        label=f"the model's Linear layers alone: {roofline.linear_floor_tokens_per_s:.0f} tok/s",
    )
    axis.set_xticks(list(positions), [SHORT_NAMES[arm] for arm in arms], fontsize=8)
    top = 1.25 * max(roofline.tokens_per_s, *overall, *decode)
    axis.set(ylabel="generated tokens / s", title=title, ylim=(0, top))
    axis.legend(fontsize=8, loc="upper left")
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
