"""A histogram the engine updates once per step and anyone may read at any time (Prometheus bucket layout)."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # sequences per step


@dataclass(frozen=True)
class Histogram:
    """Immutable: `observed` returns a new one, so a reader in another thread always sees a consistent snapshot."""

    bounds: tuple[float, ...]  # bucket upper bounds, ascending
    bucket_counts: tuple[int, ...] = ()  # observations per bucket (not cumulative), one more for above every bound
    total: float = 0.0  # sum of the observations

    def __post_init__(self) -> None:
        if not self.bucket_counts:
            object.__setattr__(self, "bucket_counts", (0,) * (len(self.bounds) + 1))

    @property
    def count(self) -> int:
        return sum(self.bucket_counts)

    def observed(self, value: float) -> Histogram:
        counts = list(self.bucket_counts)
        counts[bisect.bisect_left(self.bounds, value)] += 1
        return Histogram(self.bounds, tuple(counts), self.total + value)

    def cumulative(self) -> list[tuple[float, int]]:
        """[(upper bound, observations <= it)], ending with (inf, count): Prometheus' `le` buckets."""
        running, out = 0, []
        for bound, count in zip((*self.bounds, math.inf), self.bucket_counts, strict=True):
            running += count
            out.append((bound, running))
        return out
