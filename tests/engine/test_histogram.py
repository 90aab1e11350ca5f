"""The engine's batch-size histogram: Prometheus buckets, and reading it never changes it."""

from __future__ import annotations

import math

from server.engine.histogram import Histogram


def test_observations_land_in_the_first_bucket_at_or_above_them():
    histogram = Histogram((1, 4, 16))
    for value in (1, 2, 4, 5, 16, 17, 1000):
        histogram = histogram.observed(value)
    assert histogram.bucket_counts == (1, 2, 2, 2)
    assert histogram.cumulative() == [(1, 1), (4, 3), (16, 5), (math.inf, 7)]
    assert (histogram.count, histogram.total) == (7, 1045)


def test_a_snapshot_is_never_changed_by_later_observations():
    empty = Histogram((1, 2))
    once = empty.observed(2)
    assert empty.count == 0 and empty.cumulative() == [(1, 0), (2, 0), (math.inf, 0)]
    assert once.count == 1 and once.cumulative() == [(1, 0), (2, 1), (math.inf, 1)]
