"""Virtual token counters (VTC: Sheng et al., "Fairness in Serving Large Language Models", OSDI 2024).

Each active scheduling class (a tenant, or the anonymous caller) has a counter: the service it has received, in
weighted tokens. The fair policy admits the head of the backlogged class with the smallest counter
(waiting_queue.py), so under contention classes receive service in proportion to their weights, within a bound.

Service is charged as the scheduler hands it out, `cost / weight`:
- a sequence's own prompt tokens when the chunk that computes them is scheduled, each once: recomputing them after
  a preemption is the engine's cost, not service the class asked for (per-sequence high-water marks); tokens found
  in the prefix cache at admission are not computed, and not charged;
- its task's virtual tokens once, at its first admission (the K/V are shared, but a soft prompt is part of what the
  request asks the engine to attend, and the tenant chose its length). When the sequence's own head schedules a
  chunk of its prompt's one-time K/V computation, that part is charged then, in advance: a prompt longer than
  what a step has left takes the budget for several steps, and uncharged its class would keep the smallest counter
  and go first in each of them, blocking the other classes' admissions as if nothing had been served;
- each generated token when postprocess appends it.

Counters only compare among active classes (a class is active from the arrival of its first live sequence to the
departure of its last one). A class that becomes active again is raised to the smallest counter among the other
active classes, so idle time earns no credit; it keeps a larger counter of its own (service it was given ahead of
the others is not forgiven by going idle). A class that becomes active while no other is keeps its own (raised to
the floor below if it was forgotten: alone, only its differences with the classes that join it later matter).

Idle classes are forgotten once the floor (the smallest active counter, as of the last change of which classes
are active) has reached their counter: raising them would give the same value. So the counters held are those of
the active classes and of the few idle ones still ahead, not of every tenant ever seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.engine.sequence import Sequence

PROMPT_TOKEN_COST = 1.0  # per prompt token, virtual ones included (the paper's w_p)
OUTPUT_TOKEN_COST = 2.0  # per generated token (the paper's w_q): serving one costs about twice a prompt token


class FairShare:
    """The counters of one scheduler: told of every sequence's arrival and departure, charged as it serves them."""

    def __init__(self) -> None:
        self._counters: dict[str, float] = {}  # active classes, and idle ones whose counter is above the floor
        self._num_live: dict[str, int] = {}  # live sequences per active class
        self._charged: dict[Sequence, _Charged] = {}  # per live sequence: what it has been charged for
        self._floor = 0.0  # the smallest active counter when the set of active classes last changed

    def counter(self, scheduling_class: str) -> float:
        """The class's weighted service so far; defined for active classes only."""
        return self._counters[scheduling_class]

    @property
    def num_classes(self) -> int:
        """Classes with a counter: the active ones and the idle ones still above the floor."""
        return len(self._counters)

    # ---- which classes are active ----

    def add(self, seq: Sequence) -> None:
        """A sequence arrives: its class becomes active if it was idle."""
        self._charged[seq] = _Charged()
        if seq.scheduling_class not in self._num_live:
            self._activate(seq.scheduling_class)
        self._num_live[seq.scheduling_class] += 1

    def remove(self, seq: Sequence) -> None:
        """A sequence left (finished or aborted); its class goes idle with its last one. A sequence never added
        (aborted while its prompt was loading) is ignored."""
        if self._charged.pop(seq, None) is None:
            return
        self._num_live[seq.scheduling_class] -= 1
        if self._num_live[seq.scheduling_class] == 0:
            self._deactivate(seq.scheduling_class)

    def _activate(self, scheduling_class: str) -> None:
        base = min((self._counters[c] for c in self._num_live), default=self._floor)
        self._counters[scheduling_class] = max(self._counters.get(scheduling_class, base), base)
        self._num_live[scheduling_class] = 0
        self._raise_floor(min(self._counters[c] for c in self._num_live))

    def _deactivate(self, scheduling_class: str) -> None:
        del self._num_live[scheduling_class]
        # with none left, the floor is the last one's counter: a class active alone next starts from there
        self._raise_floor(min((self._counters[c] for c in self._num_live), default=self._counters[scheduling_class]))

    def _raise_floor(self, floor: float) -> None:
        """The floor never decreases (counters only grow; a class joins at or above the others' minimum), so an idle
        class at or below it would be raised to at least the floor anyway: forget it."""
        self._floor = floor
        for scheduling_class in [c for c, v in self._counters.items() if v <= floor and c not in self._num_live]:
            del self._counters[scheduling_class]

    # ---- service ----

    def charge_materialization(self, seq: Sequence, num_tokens: int) -> None:
        """The waiting `seq` scheduled `num_tokens` of its prompt's K/V computation: an advance on its virtual
        tokens."""
        self._charge_virtual(seq, num_tokens)

    def charge_chunk(self, seq: Sequence, num_scheduled: int) -> None:
        """A chunk that computes the sequence's own tokens up to `num_scheduled` is scheduled: charge its virtual
        tokens not yet charged (at the first admission), and the prompt tokens in the chunk never charged before."""
        if seq.task_ref is not None:
            self._charge_virtual(seq, seq.task_ref.num_virtual_tokens)
        charged = self._charged[seq]
        num_new = min(num_scheduled, seq.num_prompt_tokens) - charged.num_prompt
        if num_new > 0:
            charged.num_prompt += num_new
            self._charge(seq, PROMPT_TOKEN_COST * num_new)

    def skip_cached(self, seq: Sequence, num_cached: int) -> None:
        """The sequence was admitted with its first `num_cached` tokens found in the prefix cache: those prompt
        tokens are never charged (reusing K/V is not service the engine computes)."""
        charged = self._charged[seq]
        charged.num_prompt = max(charged.num_prompt, min(num_cached, seq.num_prompt_tokens))

    def charge_output(self, seq: Sequence) -> None:
        """The sequence took a generated token."""
        self._charge(seq, OUTPUT_TOKEN_COST)

    def _charge_virtual(self, seq: Sequence, num_tokens: int) -> None:
        assert seq.task_ref is not None  # only a sequence with a soft prompt has virtual tokens
        charged = self._charged[seq]
        num_new = min(num_tokens, seq.task_ref.num_virtual_tokens - charged.num_virtual)
        if num_new > 0:
            charged.num_virtual += num_new
            self._charge(seq, PROMPT_TOKEN_COST * num_new)

    def _charge(self, seq: Sequence, cost: float) -> None:
        self._counters[seq.scheduling_class] += cost / seq.request.caller.weight


@dataclass
class _Charged:
    """High-water marks: tokens of a sequence already charged, never charged again."""

    num_virtual: int = 0  # of its soft prompt's virtual tokens
    num_prompt: int = 0  # of its own prompt tokens
