"""StopStringMatcher: output ends before the first stop string; text that may still become one is held back."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from server.engine.stop_strings import StopStringMatcher


def _stream(stop: tuple[str, ...], deltas: list[str]) -> tuple[list[str], StopStringMatcher]:
    """Feed deltas the way the engine does (add, then take) and return every take() result, final flush included."""
    matcher = StopStringMatcher(stop)
    outputs = []
    for delta in deltas:
        matcher.add(delta)
        outputs.append(matcher.take(final=matcher.is_stopped))
        if matcher.is_stopped:
            return outputs, matcher
    outputs.append(matcher.take(final=True))
    return outputs, matcher


def test_no_stop_strings_passes_everything_through_at_once():
    outputs, matcher = _stream((), ["Hel", "lo", " world"])
    assert outputs == ["Hel", "lo", " world", ""]
    assert not matcher.is_stopped


def test_stop_inside_one_delta_cuts_before_it():
    outputs, matcher = _stream(("STOP",), ["abc STOP def"])
    assert matcher.is_stopped
    assert "".join(outputs) == "abc "
    assert matcher.text == "abc "


def test_stop_across_token_boundaries():
    outputs, matcher = _stream(("<end>",), ["hi <", "e", "n", "d> tail"])
    assert matcher.is_stopped
    assert "".join(outputs) == "hi "
    assert outputs[0] == "hi "  # "<" is held back from the start
    assert outputs[1] == outputs[2] == ""


def test_text_ending_with_a_partial_stop_string_is_released_by_the_final_flush():
    outputs, matcher = _stream(("<end>",), ["abc <e", "n"])
    assert not matcher.is_stopped
    assert outputs[:2] == ["abc ", ""]
    assert outputs[-1] == "<en"
    assert "".join(outputs) == "abc <en"


def test_held_back_text_is_released_once_it_cannot_match():
    matcher = StopStringMatcher(("abc",))
    matcher.add("xa")
    assert matcher.take(final=False) == "x"
    matcher.add("b")
    assert matcher.take(final=False) == ""
    matcher.add("d")  # "abd" can no longer become "abc"
    assert matcher.take(final=False) == "abd"
    assert not matcher.is_stopped


def test_release_keeps_the_part_that_may_still_match():
    matcher = StopStringMatcher(("aab",))
    matcher.add("aa")
    assert matcher.take(final=False) == ""
    matcher.add("a")  # "aaa": the last "aa" may still become "aab"
    assert matcher.take(final=False) == "a"
    matcher.add("b")
    assert matcher.is_stopped
    assert matcher.take(final=True) == ""
    assert matcher.text == "a"


def test_earliest_stop_string_wins():
    outputs, _ = _stream(("world", "lo"), ["hello world"])
    assert "".join(outputs) == "hel"
    outputs, _ = _stream(("cd", "abcdef"), ["x", "abcdef"])
    assert "".join(outputs) == "x"  # the longer string starts first, though the shorter one completes first
    outputs, _ = _stream(("bc", "abcd"), ["x", "abce"])
    assert "".join(outputs) == "xa"
    outputs, _ = _stream(("abcd", "bc"), ["xab", "cd"])
    assert "".join(outputs) == "x"


def test_nothing_is_added_after_a_stop():
    matcher = StopStringMatcher(("!",))
    matcher.add("hi!")
    assert matcher.take(final=True) == "hi"
    matcher.add("more")
    assert matcher.take(final=True) == ""
    assert matcher.text == "hi"


def test_final_flush_emits_everything_left_once():
    matcher = StopStringMatcher(("###",))
    matcher.add("a##")
    assert matcher.take(final=False) == "a"
    assert matcher.take(final=True) == "##"
    assert matcher.take(final=True) == ""


def _expected(stops: tuple[str, ...], deltas: list[str]) -> tuple[str, bool]:
    """Generation ends with the first delta that completes a stop string; the output is the text so far, cut
    before the earliest stop string in it."""
    text = ""
    for delta in deltas:
        text += delta
        found = [i for i in (text.find(s) for s in stops) if i >= 0]
        if found:
            return text[: min(found)], True
    return text, False


def test_generation_stops_when_the_first_stop_string_completes():
    # "bc" completes before "abcd" could; the text never gets to hold "abcd"
    outputs, matcher = _stream(("abcd", "bc"), ["xabc", "d"])
    assert matcher.is_stopped
    assert "".join(outputs) == "xa"


_alphabet = st.sampled_from(list("ab<>\n é🙂"))


@settings(max_examples=400, deadline=None)
@given(
    text=st.text(_alphabet, max_size=40),
    stops=st.lists(st.text(_alphabet, min_size=1, max_size=4), max_size=4).map(tuple),
    cuts=st.lists(st.integers(0, 40), max_size=12),
)
def test_streamed_output_is_the_text_cut_before_the_first_stop(text, stops, cuts):
    bounds = sorted({c for c in cuts if c < len(text)} | {0, len(text)})
    deltas = [text[a:b] for a, b in itertools.pairwise(bounds)]
    expected, is_stopped = _expected(stops, deltas)
    if len(deltas) == 1:  # one delta: the plain cut of the whole text
        found = [i for i in (text.find(s) for s in stops) if i >= 0]
        assert expected == (text[: min(found)] if found else text)
    outputs, matcher = _stream(stops, deltas)
    assert "".join(outputs) == expected
    assert matcher.is_stopped == is_stopped
    emitted = ""
    for out in outputs:  # never emits text that later turns out to be part of a stop string
        emitted += out
        assert expected.startswith(emitted)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(_alphabet, max_size=40),
    stops=st.lists(st.text(_alphabet, min_size=1, max_size=4), max_size=4).map(tuple),
)
def test_one_character_at_a_time_holds_back_only_possible_stop_prefixes(text, stops):
    matcher = StopStringMatcher(stops)
    emitted = ""
    for ch in text:
        matcher.add(ch)
        emitted += matcher.take(final=matcher.is_stopped)
        if matcher.is_stopped:
            break
        held = matcher.text[len(emitted) :]
        # what is held back is the start of some stop string (or nothing)
        assert held == "" or any(s.startswith(held) for s in stops)


def test_work_per_token_is_bounded_by_the_new_text_and_the_longest_stop_string(monkeypatch):
    """A long generation: every string the matcher searches or scans for a held-back tail stays as short as the
    newest delta plus the longest stop string, however much text came before (it used to be the whole text)."""
    from server.engine import stop_strings

    scanned = []

    def recording(real):
        return lambda text, stops: scanned.append(len(text)) or real(text, stops)

    for name in ("first_stop", "held_back_length"):
        monkeypatch.setattr(stop_strings, name, recording(getattr(stop_strings, name)))
    stops = ("<|end|>", "abcab" * 50)
    longest = max(len(s) for s in stops)
    deltas = ["abca", "b", "<|", "en", "x yz", "abc"] * 4000  # near-misses of both stop strings, all the way
    matcher = StopStringMatcher(stops)
    emitted = []
    for delta in deltas:
        matcher.add(delta)
        emitted.append(matcher.take(final=False))
    assert not matcher.is_stopped
    emitted.append(matcher.take(final=True))
    assert "".join(emitted) == "".join(deltas) == matcher.text
    assert len(scanned) == 2 * len(deltas)
    assert max(scanned) <= longest - 1 + max(len(d) for d in deltas)


def test_a_stop_string_found_after_a_long_text_cuts_exactly_there():
    matcher = StopStringMatcher(("STOP",))
    for _ in range(5000):
        matcher.add("ST")
        matcher.take(final=False)
        matcher.add("OX ")
        matcher.take(final=False)
    matcher.add("S")
    matcher.add("TOP and more")
    assert matcher.is_stopped
    assert matcher.text == "STOX " * 5000
    assert matcher.take(final=True) == ""  # "S" had been held back, and is part of the stop string
