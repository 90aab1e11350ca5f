"""Stop-string matching over streamed text: the output ends before the first stop string, and text that might
still grow into a stop string is held back from the stream until it cannot.

Work per `add` and `take` is bounded by the new text and the longest stop string, never by the text so far: a stop
string that ends in the new text starts at most `longest - 1` characters before it, so only that window and the new
text are searched, and only text not handed out yet (the new text and a held-back tail) is cut or copied.
"""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stop: tuple[str, ...]):
        self._stop = stop
        self._window = max((len(s) for s in stop), default=1) - 1  # characters of old text a new match can start in
        self._taken: list[str] = []  # text already handed out, in pieces
        self._pending = ""  # text not handed out yet
        self._tail = ""  # the last `_window` characters of all text so far
        self.is_stopped = False

    @property
    def text(self) -> str:
        """All output text so far, cut before a stop string once one is found. O(text): for tests and logs."""
        return "".join(self._taken) + self._pending

    def add(self, delta: str) -> None:
        if self.is_stopped or not delta:
            return
        searched = self._tail + delta
        pending = self._pending + delta
        cut = first_stop(searched, self._stop)
        if cut is not None:
            # `searched` and `pending` end together; a match starts in held-back text, never in text already taken.
            pending = pending[: max(0, len(pending) - (len(searched) - cut))]
            self.is_stopped = True
        self._pending = pending
        self._tail = _last(searched, self._window)

    def take(self, final: bool) -> str:
        """Text safe to emit now; with `final`, everything left."""
        held = 0 if final or self.is_stopped else held_back_length(_last(self._pending, self._window), self._stop)
        out, self._pending = self._pending[: len(self._pending) - held], self._pending[len(self._pending) - held :]
        if out:
            self._taken.append(out)
        return out


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop string in `text` starts."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back_length(tail: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `tail` that is the start of some stop string."""
    for size in range(len(tail), 0, -1):
        end = tail[-size:]
        if any(s.startswith(end) for s in stops):
            return size
    return 0


def _last(text: str, num_chars: int) -> str:
    return text[max(0, len(text) - num_chars) :]
