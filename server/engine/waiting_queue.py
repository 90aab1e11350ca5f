"""The sequences waiting for admission: one FIFO per scheduling class, and the order they are admitted in.

Every waiting sequence has a ticket: an arrival takes the next one at the back, a preempted sequence the next one
at the front. Tickets order each class's FIFO, and merged across classes they give the one arrival-ordered queue
(preempted first) that "fcfs" admits from. Under "fair" the next is the head of the class with the smallest virtual
token counter (fair_share.py), ties by ticket, so with a single class both orders are the same.

A head that keeps finding no room is starving (`is_starving`): when its turn comes, the scheduler admits nobody
while it does not fit. Its turn still follows the counters: a starving head of a tenant served more than the others
does not hold back a tenant under its share (the light tenant beside a flood), and it is not starved either, since
the others' counters grow while it waits until its class is the first tried.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.engine.fair_share import FairShare
    from server.engine.sequence import Sequence

# A sequence whose admission found no blocks or prompt rows on more than this many steps is starving: from its
# turn on, while it does not fit, nobody is admitted. Otherwise skipping it (so other classes use what is free)
# lets a stream of small requests take every block that is freed, forever, before enough are free at once for a
# large prompt. Counted over the sequence's life, not reset at admission: admitted with the last free blocks, it is
# the most recent and the first preempted, and a count reset each time lets that repeat forever.
MAX_BLOCKED_STEPS = 8


def is_starving(seq: Sequence) -> bool:
    return seq.num_blocked_steps > MAX_BLOCKED_STEPS


@dataclass(eq=False)
class _Entry:
    seq: Sequence
    ticket: int  # order within the class's FIFO, and across classes under "fcfs"


class WaitingQueue:
    """What `Scheduler.waiting` is: sized, iterable in ticket order, and the next sequence to try admitting."""

    def __init__(self, fair_share: FairShare | None):
        self._fair_share = fair_share  # None: first come, first served
        self._fifos: dict[str, deque[_Entry]] = {}  # scheduling class -> its waiting sequences; never empty
        self._next_back = 0
        self._next_front = -1
        self._num_waiting = 0

    def __len__(self) -> int:
        return self._num_waiting

    def __iter__(self) -> Iterator[Sequence]:
        """In ticket order: arrival order, preempted sequences first."""
        entries = sorted((e for fifo in self._fifos.values() for e in fifo), key=lambda e: e.ticket)
        return iter([e.seq for e in entries])

    def __contains__(self, seq: object) -> bool:
        return any(e.seq is seq for fifo in self._fifos.values() for e in fifo)

    def append(self, seq: Sequence) -> None:
        """An arrival, at the back of its class."""
        self._fifo(seq).append(_Entry(seq, self._next_back))
        self._next_back += 1
        self._num_waiting += 1

    def appendleft(self, seq: Sequence) -> None:
        """A preempted sequence, at the front of its class (and of everything, under "fcfs")."""
        self._fifo(seq).appendleft(_Entry(seq, self._next_front))
        self._next_front -= 1
        self._num_waiting += 1

    def remove(self, seq: Sequence) -> None:
        fifo = self._fifos[seq.scheduling_class]
        fifo.remove(next(e for e in fifo if e.seq is seq))
        self._num_waiting -= 1
        if not fifo:
            del self._fifos[seq.scheduling_class]

    def _fifo(self, seq: Sequence) -> deque[_Entry]:
        return self._fifos.setdefault(seq.scheduling_class, deque())

    def heads(self) -> list[Sequence]:
        """The first waiting sequence of each class."""
        return [fifo[0].seq for fifo in self._fifos.values()]

    # ---- admission order ----

    def next(self, closed: set[str]) -> Sequence | None:
        """The sequence to try admitting next: the head of a class not in `closed` (classes whose head could not be
        admitted in this step): the oldest ("fcfs"), or the head of the class with the smallest counter ("fair")."""
        heads = [fifo[0] for scheduling_class, fifo in self._fifos.items() if scheduling_class not in closed]
        if not heads:
            return None
        fair_share = self._fair_share
        if fair_share is None:
            return min(heads, key=lambda e: e.ticket).seq
        return min(heads, key=lambda e: (fair_share.counter(e.seq.scheduling_class), e.ticket)).seq
