"""Continuous batching, both halves of a step.

`schedule()`: running sequences first (decodes and unfinished prefill chunks), then waiting ones admitted, all
under one token budget and the free KV blocks. When blocks run out, unused prompt prefixes are evicted first, then
a running sequence is preempted (it frees its blocks and is recomputed later): the most recently admitted, under
"fair" of the class served most.

Admission follows `config.scheduling_policy`. "fair": the waiting queue holds one FIFO per scheduling class (tenant)
and offers the head of the class with the smallest virtual token counter (waiting_queue.py, fair_share.py); a head
that cannot be admitted now only closes its class for this step, the others' heads are still tried (work
conserving), unless it has been starving for blocks; and while tenants contend, the last few seats go only to
classes under their share of them (seat_share.py). "fcfs": one arrival-ordered queue, admission stops at the
first sequence that does not fit (head-of-line blocking; kept so benchmarks can compare).

A sequence admitted (first, or again after a preemption) starts from the longest run of its full token blocks
already cached after the same context (prefix_cache.py): those blocks are shared, and only the rest is computed.

`postprocess(batch, sampled)`: what ran is now in the cache (sequences' `num_computed`, prompts'
`num_materialized` advance, blocks that became full are published for reuse), each sequence at its last token
takes its sampled token, and finished sequences leave, freeing their blocks and prompt entries. Only these two
methods move a sequence through its scheduling states.
"""

from __future__ import annotations

import enum
import time

from server.config import EngineConfig
from server.engine.batch import MaterializationChunk, SchedulerOutput, SequenceChunk
from server.engine.block_manager import BlockManager, OutOfBlocksError
from server.engine.fair_share import FairShare
from server.engine.prefix_cache import PrefixCache
from server.engine.prompt_cache import PromptCache, entry_key
from server.engine.prompt_table import OutOfRowsError
from server.engine.request import FinishReason, TokenLogprob
from server.engine.seat_share import SeatShare
from server.engine.sequence import Sequence, SequenceStatus
from server.engine.waiting_queue import WaitingQueue, is_starving


class _Admission(enum.Enum):
    """What trying to admit a waiting sequence came to."""

    ADMITTED = "admitted"
    NO_ROOM = "no room"  # no blocks or rows for its prompt, or no blocks for its first chunk
    PREFIX_PENDING = "prefix pending"  # its prompt's K/V are still being materialized
    SIBLING_PENDING = "sibling pending"  # the first sample of its group is still computing the shared prompt
    NO_BUDGET = "no budget"  # materializing its prompt used what the step had left


class Scheduler:
    def __init__(
        self,
        config: EngineConfig,
        block_manager: BlockManager,
        prompt_cache: PromptCache,
        prefix_cache: PrefixCache,
        vocab_size: int,
    ):
        self.config = config
        self.block_manager = block_manager
        self.prompt_cache = prompt_cache
        self.prefix_cache = prefix_cache
        self.vocab_size = vocab_size
        self.fair_share = FairShare()  # charged under either policy; only "fair" orders admission by it
        is_fair = config.scheduling_policy == "fair"
        self.waiting = WaitingQueue(self.fair_share if is_fair else None)
        self.seat_share = SeatShare(config.max_num_seqs) if is_fair else None  # the last seats, for latecomers
        self.running: list[Sequence] = []

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.fair_share.add(seq)
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Take a finished (or aborted) sequence out and free what it holds."""
        assert seq.is_finished, "only a finished sequence leaves the scheduler"
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.fair_share.remove(seq)
        self._free(seq)

    # ---- the first half of a step ----

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        if self.seat_share is not None:
            self.seat_share.observe([*self.running, *self.waiting.heads()])
        budget = self._schedule_running(out, self.config.max_num_batched_tokens)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        elif self.config.scheduling_policy == "fair":
            # Memory is short, so admit nobody... but the classes served less than every one a preemption hit: the
            # victims are taken from the classes served most, so otherwise a flood that fills the pool would keep a
            # light tenant out for as long as it grows.
            below = min(self.fair_share.counter(seq.scheduling_class) for seq in out.preempted)
            self._schedule_waiting(out, budget, below)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        pending = self._running_order()
        while pending and budget > 0:
            seq = pending[0]
            num_tokens = min(seq.num_uncomputed, budget)
            if not self._reserve(seq, seq.num_computed + num_tokens):
                victim = self._victim(pending)
                self._preempt(victim, out)
                pending.remove(victim)
                if victim is seq:
                    break
                continue
            self._schedule_chunk(seq, num_tokens, out)
            budget -= num_tokens
            pending.pop(0)
        return budget

    def _running_order(self) -> list[Sequence]:
        """Admission order; under "fair" the classes served least first (stable: admission order inside a class),
        so a short budget goes to them first and the victims come from the classes served most."""
        if self.config.scheduling_policy == "fcfs":
            return list(self.running)
        return sorted(self.running, key=lambda seq: self.fair_share.counter(seq.scheduling_class))

    def _victim(self, pending: list[Sequence]) -> Sequence:
        """Whom to preempt so `pending[0]` can grow: one not yet scheduled in this step, the most recently admitted
        ("fcfs"), or under "fair" the most recently admitted of the class served most, so a tenant under its share
        is not the one a flood's growth pushes out. The oldest running sequence is taken only when it is the only
        one left: it always progresses, so something always finishes."""
        oldest = self.running[0]
        candidates = [seq for seq in pending if seq is not oldest] or pending
        if self.config.scheduling_policy == "fcfs":
            return candidates[-1]
        most_served = max(candidates, key=lambda seq: self.fair_share.counter(seq.scheduling_class))
        return next(seq for seq in reversed(candidates) if seq.scheduling_class == most_served.scheduling_class)

    def _schedule_waiting(self, out: SchedulerOutput, budget: int, below: float | None = None) -> None:
        """Admit waiting sequences in the queue's order while the budget and `max_num_seqs` allow (and, with
        `below`, only classes whose counter is below it). A head that cannot be admitted now closes only its own class
        for this step; under "fcfs", or starving, it ends admission."""
        now = time.monotonic()
        closed: set[str] = set()  # classes whose head cannot be admitted in this step: no overtaking inside a class
        while budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting.next(closed)
            if seq is None:
                return
            if below is not None and self.fair_share.counter(seq.scheduling_class) >= below:
                return  # the queue offers classes by counter: every one after this is served as much
            if self.seat_share is not None and not self.seat_share.may_take_seat(seq, self.running):
                closed.add(seq.scheduling_class)  # over its share of seats: the last ones are kept for others
                continue
            used, admission = self._admit(seq, out, budget, now)
            budget -= used
            if admission is _Admission.ADMITTED:
                continue
            if admission is _Admission.NO_ROOM:
                seq.num_blocked_steps += 1
            if self.config.scheduling_policy == "fcfs" or is_starving(seq):
                return  # head-of-line: under "fair" only for a starving head, so what is freed is left for it
            closed.add(seq.scheduling_class)

    def _admit(self, seq: Sequence, out: SchedulerOutput, budget: int, now: float) -> tuple[int, _Admission]:
        """Try to move the waiting `seq` to running with its first chunk; returns (budget used, outcome)."""
        if self._is_sibling_pending(seq):
            return 0, _Admission.SIBLING_PENDING
        if not self._hold_prompt(seq):
            return 0, _Admission.NO_ROOM
        used, is_prompt_ready = self._materialize(seq, out, budget)
        if is_prompt_ready:
            self._take_cached(seq)
        num_tokens = min(seq.num_uncomputed, budget - used)
        admission = self._reserve_first_chunk(seq, is_prompt_ready, num_tokens)
        if admission is not _Admission.ADMITTED:
            self._free(seq)  # a waiting sequence holds nothing, or held prompts and blocks could starve the pool
            return used, admission
        self.prefix_cache.count(seq, seq.num_computed)
        self.fair_share.skip_cached(seq, seq.num_computed)  # cached prompt tokens are no service to charge
        self.waiting.remove(seq)
        seq.status = SequenceStatus.RUNNING
        if seq.first_scheduled_time is None:
            seq.first_scheduled_time = now
        self.running.append(seq)
        self._schedule_chunk(seq, num_tokens, out)
        return used + num_tokens, _Admission.ADMITTED

    def _reserve_first_chunk(self, seq: Sequence, is_prompt_ready: bool, num_tokens: int) -> _Admission:
        if not is_prompt_ready:
            return _Admission.PREFIX_PENDING
        if num_tokens <= 0:
            return _Admission.NO_BUDGET
        if not self._reserve(seq, seq.num_computed + num_tokens):
            return _Admission.NO_ROOM
        return _Admission.ADMITTED

    def _is_sibling_pending(self, seq: Sequence) -> bool:
        """The n samples of one prompt compute it once: a later one waits while the first, running, has not
        computed the prompt yet, then finds its full blocks in the prefix cache. Not behind a first one that waits
        itself (preempted): that could take long, and computing the prompt twice is only slower."""
        leader = seq.group_leader
        if leader is None or not self.prefix_cache.enabled:
            return False
        return leader.status is SequenceStatus.RUNNING and leader.num_computed < leader.num_prompt_tokens

    def _take_cached(self, seq: Sequence) -> None:
        """Start the waiting sequence from its cached full blocks (not one whose prompt logprobs or token labels
        are still to be computed: cached blocks come without logits or hidden states)."""
        if seq.needs_every_row:
            return
        seq.own_blocks = self.prefix_cache.take_cached(seq)
        seq.num_computed = len(seq.own_blocks) * self.block_manager.block_size

    def _hold_prompt(self, seq: Sequence) -> bool:
        """Make the sequence's soft prompt device-resident; False if there is no room now."""
        if seq.task_ref is None or seq.prompt_entry is not None:
            return True
        try:
            seq.prompt_entry = self.prompt_cache.hold(seq.task_ref)
        except (OutOfBlocksError, OutOfRowsError):
            return False
        return True

    def _drop_prompt(self, seq: Sequence) -> None:
        if seq.prompt_entry is not None:
            self.prompt_cache.drop(seq.prompt_entry)
            seq.prompt_entry = None

    def _materialize(self, seq: Sequence, out: SchedulerOutput, budget: int) -> tuple[int, bool]:
        """Schedule the next chunk of the sequence's prompt-tuning prefix's one-time K/V computation.

        Returns (budget used, whether readers may be scheduled in this step). Readers scheduled after the chunk
        that completes the prefix may share its step: every layer writes all new K/V before any attention reads.
        """
        entry = seq.prompt_entry
        if entry is None or entry.is_materialized:
            return 0, True
        scheduled = out.materialization_of(entry)
        if scheduled is not None:  # an earlier admission this step scheduled the prefix's next chunk
            return 0, scheduled.own_len == entry.prefix_len
        start = entry.num_materialized
        num_tokens = min(entry.prefix_len - start, budget)
        assert seq.task_ref is not None  # a sequence with a prompt entry has a task
        self.prompt_cache.hold(seq.task_ref)  # the chunk's own hold: the sequence may drop the entry this step
        out.chunks.append(
            MaterializationChunk(
                entry=entry,
                token_ids=tuple(self.vocab_size + row for row in entry.row_ids[start : start + num_tokens]),
                start_position=start,
                prefix_len=0,
                prefix_blocks=(),
                own_blocks=tuple(entry.prefix_blocks),
                own_start=start,
                needs_logits=False,
            )
        )
        self.fair_share.charge_materialization(seq, num_tokens)
        return num_tokens, start + num_tokens == entry.prefix_len

    def _schedule_chunk(self, seq: Sequence, num_tokens: int, out: SchedulerOutput) -> None:
        out.chunks.append(self._chunk(seq, num_tokens))
        self.fair_share.charge_chunk(seq, seq.num_computed + num_tokens)

    def _chunk(self, seq: Sequence, num_tokens: int) -> SequenceChunk:
        entry = seq.prompt_entry
        start = seq.num_computed
        return SequenceChunk(
            seq=seq,
            token_ids=tuple(seq.token_ids[start : start + num_tokens]),
            start_position=seq.prefix_len + start,
            prefix_len=seq.prefix_len,
            prefix_blocks=tuple(entry.prefix_blocks) if entry is not None else (),
            own_blocks=tuple(seq.own_blocks),
            own_start=start,
            needs_logits=start + num_tokens == len(seq.token_ids) and not seq.is_classification,
            needs_every_logit=seq.needs_prompt_logits,
            num_hidden_rows=seq.num_hidden_rows(start, num_tokens),
        )

    def _reserve(self, seq: Sequence, num_tokens: int) -> bool:
        """Give the sequence blocks for `num_tokens` own tokens, evicting unused prompts if that makes room."""
        while True:
            try:
                self.block_manager.grow(seq.own_blocks, num_tokens)
                return True
            except OutOfBlocksError:
                if not self.prompt_cache.evict_one():
                    return False

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self._free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
        out.preempted.append(seq)

    def _free(self, seq: Sequence) -> None:
        self.block_manager.free(seq.own_blocks[::-1])  # last first: a cached chain is forgotten from its tail
        seq.own_blocks = []
        seq.num_computed = 0
        self._drop_prompt(seq)

    # ---- the second half of a step ----

    def postprocess(
        self,
        batch: SchedulerOutput,
        sampled_token_ids: list[int],
        sampled_logprobs: list[TokenLogprob | None] | None = None,
    ) -> list[Sequence]:
        """Apply a step that ran: `sampled_token_ids` has one token per `batch.sampled_seqs`, in that order, and
        `sampled_logprobs` (if given) their logprobs where the sequence asked for them.

        Returns the sequences that took a token or were classified; the finished ones among them have already left
        the scheduler. A classification request's head rows were added as its chunks ran (LLMEngine).
        """
        for mat in batch.materializations:
            mat.entry.num_materialized += mat.num_tokens
            self.prompt_cache.drop(mat.entry)
        classified = []
        for chunk in batch.sequence_chunks:
            chunk.seq.num_computed += chunk.num_tokens
            self.prefix_cache.publish(chunk.seq, chunk.own_start)
            if chunk.seq.is_classification and chunk.seq.num_uncomputed == 0:
                chunk.seq.finish(FinishReason.CLASSIFIED)  # prefill only: its prompt is scored
                self.remove(chunk.seq)
                classified.append(chunk.seq)
        now = time.monotonic()
        sampled = batch.sampled_seqs
        logprobs = sampled_logprobs if sampled_logprobs is not None else [None] * len(sampled)
        for seq, token_id, logprob in zip(sampled, sampled_token_ids, logprobs, strict=True):
            try:
                seq.append_token(token_id, now, logprob)
            except Exception as exc:  # its detokenizer or stop matcher: that request's fault alone
                seq.fail(f"the engine failed on this request's output ({type(exc).__name__})")
            self.fair_share.charge_output(seq)
            if seq.is_finished:
                self.remove(seq)
        return sampled + classified

    # ---- a step that failed (step_isolation.py finds whose fault it was) ----

    def fail(self, seq: Sequence, error: str) -> None:
        """The request cannot be served: it finishes with `error` and frees what it holds."""
        if not seq.is_finished:
            seq.fail(error)
            self.remove(seq)

    def abandon(self, mat: MaterializationChunk, error: str) -> list[Sequence]:
        """A prompt's K/V computation failed: every request of that prompt fails (the one waiting for it would
        schedule it again each step). `num_materialized` did not advance, so a later request recomputes the
        part this chunk may have half written. Returns the failed sequences."""
        self.prompt_cache.drop(mat.entry)
        failed = [
            seq
            for seq in [*self.running, *self.waiting]
            if seq.task_ref is not None and entry_key(seq.task_ref) == mat.entry.key
        ]
        for seq in failed:
            self.fail(seq, error)
        return failed
