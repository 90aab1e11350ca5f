"""The comparison's decode-phase rate: the window where the whole first wave is decoding, and nothing else."""

from __future__ import annotations

import pytest

from loadtest.comparison.results import ArmResult, decode_rate


def test_decode_rate_counts_tokens_inside_the_all_decoding_window():
    # Two sequences admitted together; their first tokens at t=1 and t=2, last tokens at t=10 and t=12.
    wave = [[1.0, 3.0, 5.0, 7.0, 10.0], [2.0, 4.0, 6.0, 8.0, 12.0]]
    rate, batch = decode_rate(wave, wave_size=2)
    assert batch == 2
    # Window (2, 10]: 3, 5, 7, 10 and 4, 6, 8 -> 7 tokens in 8 s.
    assert rate == pytest.approx(7 / 8)


def test_later_requests_tokens_in_the_window_count_but_do_not_set_it():
    wave = [[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]]
    later = [[2.5, 2.9, 40.0]]
    rate, batch = decode_rate(wave + later, wave_size=2)
    assert (rate, batch) == (pytest.approx((6 + 2) / 3), 2)


def test_no_window_without_two_tokens_or_with_disjoint_sequences():
    assert decode_rate([[1.0]], wave_size=1) == (None, 0)
    assert decode_rate([[0.0, 1.0], [2.0, 3.0]], wave_size=2) == (None, 2)


def test_tokens_per_second_is_over_the_whole_wall_time():
    result = ArmResult("e", "x", num_requests=2, num_tokens=64, wall_s=4.0, decode_tokens_per_s=None, decode_batch=None)
    assert result.tokens_per_s == 16.0
