"""Seats for latecomers: under "fair", the last few of `max_num_seqs` are kept for tenants under their share.

Virtual token counters decide who is admitted next, but only when a seat is free. A flood that holds every seat
(its requests long, its backlog deep) frees one only when one of its requests ends, so a light tenant's request
would wait for that however small its counter. So while more than one class has been active lately, a class may
take one of the last `headroom` free seats only if it holds fewer seats than its weighted share of all of them;
the flood then leaves those few free, and a light tenant's request starts in the next step. A class alone (no
other active in the last `memory_steps` steps) uses every seat: the cost of the headroom is a few seats out of
`max_num_seqs`, and only while tenants contend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.engine.sequence import Sequence

# Seats kept: max_num_seqs // 32, 4 of the default 128; none below 32 seats, where one seat is a large part of the
# batch and holding it back would cost more than a latecomer's wait (and would bend the counters' token shares).
HEADROOM_FRACTION = 32
MEMORY_STEPS = 64  # a class counts as active this long after its last live sequence (light tenants come and go)


class SeatShare:
    def __init__(self, max_num_seqs: int):
        self.max_num_seqs = max_num_seqs
        self.headroom = max_num_seqs // HEADROOM_FRACTION
        self._step = 0
        self._last_seen: dict[str, tuple[int, float]] = {}  # class -> (last step it had a live sequence, weight)

    def observe(self, live: list[Sequence]) -> None:
        """Once per step: the classes with a live sequence (running ones, and each waiting class's head)."""
        self._step += 1
        for seq in live:
            self._last_seen[seq.scheduling_class] = (self._step, seq.request.caller.weight)
        horizon = self._step - MEMORY_STEPS
        for scheduling_class in [c for c, (step, _) in self._last_seen.items() if step < horizon]:
            del self._last_seen[scheduling_class]

    def may_take_seat(self, seq: Sequence, running: list[Sequence]) -> bool:
        """Whether `seq`'s class may take a free seat now."""
        if self.max_num_seqs - len(running) > self.headroom or len(self._last_seen) <= 1:
            return True
        total_weight = sum(weight for _, weight in self._last_seen.values())
        share = self.max_num_seqs * seq.request.caller.weight / total_weight
        held = sum(1 for other in running if other.scheduling_class == seq.scheduling_class)
        return held < share
