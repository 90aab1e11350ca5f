"""Stop-string matching over streamed text: the output ends before the first stop string, and text that might
still grow into a stop string is held back from the stream until it cannot."""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stop: tuple[str, ...]):
        self._stop = stop
        self._longest = max((len(s) for s in stop), default=0)
        self.text = ""  # all output text so far, cut before a stop string once one is found
        self._emitted = 0  # characters of `text` already handed out
        self.is_stopped = False

    def add(self, delta: str) -> None:
        if self.is_stopped or not delta:
            return
        search_from = max(0, len(self.text) - self._longest + 1)
        self.text += delta
        cut = self._first_stop(search_from)
        if cut is not None:
            self.text = self.text[:cut]
            self.is_stopped = True

    def _first_stop(self, search_from: int) -> int | None:
        found = [i for i in (self.text.find(s, search_from) for s in self._stop) if i >= 0]
        return min(found) if found else None

    def take(self, final: bool) -> str:
        """Text safe to emit now; with `final`, everything left."""
        end = len(self.text) if final or self.is_stopped else len(self.text) - self._held_back()
        end = max(end, self._emitted)
        out = self.text[self._emitted:end]
        self._emitted = end
        return out

    def _held_back(self) -> int:
        """Length of the longest end of `text` that is the start of some stop string."""
        for size in range(min(self._longest - 1, len(self.text)), 0, -1):
            tail = self.text[-size:]
            if any(s.startswith(tail) for s in self._stop):
                return size
        return 0
