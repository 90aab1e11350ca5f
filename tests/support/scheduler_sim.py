"""A scheduler stepped without a model, for the scheduler's tests (tests/engine/test_scheduler.py,
test_fair_scheduling.py).

Prompts are real PEFT files uploaded to an in-memory PromptRegistry. A step is the engine's without the model:
`Scheduler.schedule`, then the real `Scheduler.postprocess` with one fake token per sequence that asks for one, and
every step is checked against the scheduler's invariants (`Sim.check`) between the two.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from prompt_store.access import ANONYMOUS, Caller
from prompt_store.model_shape import ModelShape
from prompt_store.registry import PromptRegistry
from prompt_store.spec import PromptKind
from server.config import EngineConfig, StoreConfig
from server.engine.batch import MaterializationChunk, SchedulerOutput
from server.engine.block_manager import BlockManager
from server.engine.detokenizer import IncrementalDetokenizer
from server.engine.kv_cache import KVCache
from server.engine.prefix_cache import PrefixCache
from server.engine.prompt_cache import PromptCache
from server.engine.prompt_table import PromptTable
from server.engine.request import FinishReason, GenerationRequest, SamplingParams
from server.engine.scheduler import Scheduler
from server.engine.sequence import Sequence, SequenceStatus
from server.engine.stop_strings import StopStringMatcher
from tests.support.adapters import adapter_files

VOCAB = 100
SHAPE = ModelShape(hidden_size=32, num_layers=2, num_kv_heads=2, head_dim=8, vocab_size=VOCAB)
CPU = torch.device("cpu")
# task -> (peft type, num_virtual_tokens, extra PEFT options)
TASKS = {
    "pt4": ("PROMPT_TUNING", 4, {}),
    "pt6": ("PROMPT_TUNING", 6, {}),
    "prefix5": ("PREFIX_TUNING", 5, {}),
    "prefix8": ("PREFIX_TUNING", 8, {}),
    "multi": ("MULTITASK_PROMPT_TUNING", 3, {"num_tasks": 2, "num_ranks": 1}),
    "pt20": ("PROMPT_TUNING", 20, {}),  # longer than a small step budget: materialized over several steps
}


def make_registry(root: Path) -> PromptRegistry:
    """An in-memory registry with every task of TASKS uploaded (PEFT files written under `root`)."""
    reg = PromptRegistry(SHAPE, StoreConfig(), "tiny-base", None)
    for seed, (task, (peft_type, p, options)) in enumerate(TASKS.items()):
        reg.upload(task, *adapter_files(root / task, SHAPE, peft_type, p, seed, **options))
    reg.spare_files = {  # a second version of pt4, for tests that upload it
        "pt4": adapter_files(root / "pt4-v2", SHAPE, "PROMPT_TUNING", 4, seed=50)
    }
    return reg


class _Tokenizer:
    def decode(self, ids, **kwargs) -> str:
        return "".join(chr(ord("a") + i % 26) for i in ids)


def _fake_token(seq: Sequence) -> int:
    return (7 * len(seq.token_ids) + 3) % VOCAB


class Sim:
    """A scheduler over a real BlockManager / PromptCache / KVCache / PromptTable, stepped without a model."""

    def __init__(
        self,
        registry: PromptRegistry,
        *,
        num_blocks: int = 64,
        block_size: int = 4,
        max_num_seqs: int = 8,
        max_num_batched_tokens: int = 32,
        prompt_table_rows: int = 64,
        max_model_len: int | None = None,
        scheduling_policy: str = "fair",
        enable_prefix_caching: bool = True,
    ):
        self.registry = registry
        self.max_model_len = max_model_len  # as LLMEngine: virtual + own tokens; None: no cap
        self.config = EngineConfig(
            block_size=block_size,
            num_kv_blocks=num_blocks,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            prompt_table_rows=prompt_table_rows,
            scheduling_policy=scheduling_policy,
            enable_prefix_caching=enable_prefix_caching,
        )
        self.block_manager = BlockManager(num_blocks, block_size)
        self.prompt_table = PromptTable(prompt_table_rows, SHAPE.hidden_size, CPU, torch.float32)
        self.prompt_cache = PromptCache(
            registry, self.block_manager, KVCache(SHAPE, num_blocks, block_size, CPU, torch.float32), self.prompt_table
        )
        self.prefix_cache = PrefixCache(self.block_manager, enable_prefix_caching)
        self.scheduler = Scheduler(self.config, self.block_manager, self.prompt_cache, self.prefix_cache, VOCAB)
        self.arrivals: list[Sequence] = []
        self.first_admitted: list[Sequence] = []
        self.num_steps = 0
        self.arrival_step: dict[str, int] = {}  # request id -> steps run before it arrived
        self.finish_step: dict[str, int] = {}  # request id -> steps run when it finished (aborts not included)

    # ---- requests ----
    def add(
        self,
        prompt_len: int,
        task: str | None = None,
        max_new_tokens: int = 4,
        subtask: int = 0,
        caller: Caller = ANONYMOUS,
        prompt: tuple[int, ...] | None = None,
    ) -> Sequence:
        """A request of `prompt_len` tokens (or exactly `prompt`), different from every other's unless given."""
        if prompt is None:
            prompt = tuple((len(self.arrivals) * 13 + i) % VOCAB for i in range(prompt_len))
        request = GenerationRequest(
            request_id=f"r{len(self.arrivals)}",
            prompt_token_ids=prompt,
            sampling=SamplingParams(max_new_tokens=max_new_tokens),
            task=task,
            subtask=subtask,
            caller=caller,
        )
        task_ref = self.registry.pin(task, subtask) if task is not None else None
        seq = Sequence(
            request=request,
            task_ref=task_ref,
            detokenizer=IncrementalDetokenizer(_Tokenizer(), prompt),
            stop_matcher=StopStringMatcher(()),
            generator=None,
            token_ids=list(prompt),
            max_model_len=self.max_model_len,
        )
        self.scheduler.add(seq)
        self.arrivals.append(seq)
        self.arrival_step[seq.request_id] = self.num_steps
        return seq

    def abort(self, seq: Sequence) -> None:
        seq.finish(FinishReason.ABORTED)
        self.scheduler.remove(seq)
        self._unpin(seq)

    def _unpin(self, seq: Sequence) -> None:  # LLMEngine's part once a sequence finishes
        if seq.task_ref is not None:
            self.registry.unpin(seq.task_ref)

    def close(self) -> None:
        """Abort whatever is left, so the module's registry ends with no pins."""
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
            self.abort(seq)

    # ---- steps ----
    def step(self) -> SchedulerOutput:
        running_before = list(self.scheduler.running)
        order = self._running_order_keys()
        share = self.scheduler.fair_share
        waiting_counters = {seq.scheduling_class: share.counter(seq.scheduling_class) for seq in self.scheduler.waiting}
        out = self.scheduler.schedule()
        self.check(out, running_before, order, waiting_counters)
        sampled = [_fake_token(seq) for seq in out.sampled_seqs]
        for seq in self.scheduler.postprocess(out, sampled):
            assert seq.token_ids[-1] == sampled.pop(0)
            if seq.is_finished:
                assert all(seq is not q for q in [*self.scheduler.running, *self.scheduler.waiting])
                self._unpin(seq)
                self.finish_step[seq.request_id] = self.num_steps + 1
        self.num_steps += 1
        return out

    def run(self, max_steps: int = 1000) -> list[SchedulerOutput]:
        outs = []
        while self.scheduler.has_work:
            assert len(outs) < max_steps, "no progress: the scheduler is stuck"
            outs.append(self.step())
        return outs

    def _running_order_keys(self) -> dict[int, tuple]:
        """The order running sequences get their chunks in: admission order, under "fair" the classes served least
        first (their counters at the start of the step)."""
        share = self.scheduler.fair_share
        is_fair = self.config.scheduling_policy == "fair"
        return {
            id(seq): ((share.counter(seq.scheduling_class) if is_fair else 0.0), position)
            for position, seq in enumerate(self.scheduler.running)
        }

    # ---- invariants ----
    def check(
        self,
        out: SchedulerOutput,
        running_before: list[Sequence],
        order: dict[int, tuple],
        waiting_counters: dict[str, float],
    ) -> None:
        sched, config = self.scheduler, self.config
        assert out.num_tokens <= config.max_num_batched_tokens, "token budget exceeded"
        assert len(sched.running) <= config.max_num_seqs
        seq_chunks = out.sequence_chunks
        assert len({id(c.seq) for c in seq_chunks}) == len(seq_chunks), "a sequence scheduled twice in one step"
        # running sequences first (in `order`), then the newly admitted ones (in admission order)
        position = {id(s): i for i, s in enumerate(sched.running)}
        assert all(id(c.seq) in position for c in seq_chunks)
        newly = [s for s in sched.running if all(s is not r for r in running_before)]
        num_old = len(seq_chunks) - len(newly)
        keys = [order[id(c.seq)] for c in seq_chunks[:num_old]]
        assert keys == sorted(keys) and all(id(c.seq) in order for c in seq_chunks[:num_old])
        assert [c.seq for c in seq_chunks[num_old:]] == newly
        assert sched.running[len(sched.running) - len(newly) :] == newly
        if out.preempted and newly:
            # under "fair", only classes served less than every class a preemption hit: below it at the step's start,
            # it was below it when admitted (counters only grow) and stays below the victims' counters after the step
            assert self.config.scheduling_policy == "fair", "admitted a sequence in a step that preempted one"
            below = min(sched.fair_share.counter(seq.scheduling_class) for seq in out.preempted)
            assert all(waiting_counters[seq.scheduling_class] < below for seq in newly)
        for seq in newly:
            if seq.num_preemptions == 0:
                self._check_fcfs(seq)
        materializing = []  # materialization chunks packed so far
        for c in out.chunks:
            if isinstance(c, MaterializationChunk):
                self._check_materialization(c, materializing)
                materializing.append(c)
            else:
                self._check_chunk(c, materializing)
        for seq in out.preempted:
            assert seq.status is SequenceStatus.WAITING and any(seq is w for w in sched.waiting)
            assert seq.num_computed == 0 and seq.own_blocks == [] and seq.prompt_entry is None
        self._check_blocks(out)

    def _check_fcfs(self, seq: Sequence) -> None:
        """First come, first served within the sequence's class; across all of them too under "fcfs"."""
        earlier = self.arrivals[: next(i for i, s in enumerate(self.arrivals) if s is seq)]
        if self.config.scheduling_policy == "fair":
            earlier = [s for s in earlier if s.scheduling_class == seq.scheduling_class]
        skipped = [
            s for s in earlier if s.num_computed == 0 and s.status is SequenceStatus.WAITING and not s.num_preemptions
        ]
        assert not skipped, "admitted ahead of an earlier request (not first-come-first-served)"
        self.first_admitted.append(seq)

    def _check_materialization(self, c, materializing) -> None:
        entry = c.entry
        assert entry.kind is PromptKind.EMBEDDING and entry.num_users >= 1, "a chunk in flight holds its prompt"
        assert all(entry is not m.entry for m in materializing), "one prompt materialized twice in a step"
        # a chunk covers the next rows after what earlier steps computed (postprocess has not advanced it yet)
        start = entry.num_materialized
        assert c.num_tokens > 0 and start + c.num_tokens <= entry.prefix_len
        assert c.token_ids == tuple(VOCAB + row for row in entry.row_ids[start : start + c.num_tokens])
        assert c.own_blocks == tuple(entry.prefix_blocks) and c.prefix_blocks == () and c.prefix_len == 0
        assert c.start_position == start and c.own_start == start and not c.needs_logits
        assert self.prompt_cache._entries.get(entry.key) is entry

    def _check_chunk(self, c, materializing) -> None:
        seq, entry = c.seq, c.seq.prompt_entry
        assert seq.status is SequenceStatus.RUNNING and c.num_tokens > 0
        assert (entry is None) == (seq.task_ref is None)
        if entry is not None:
            assert self.prompt_cache._entries.get(entry.key) is entry, "attends a prompt that is not resident"
            completed_earlier_in_step = any(m.entry is entry and m.own_len == entry.prefix_len for m in materializing)
            assert entry.is_materialized or completed_earlier_in_step, "attends prefix K/V nobody computed"
            assert c.prefix_blocks == tuple(entry.prefix_blocks) and c.prefix_len == entry.prefix_len
        else:
            assert c.prefix_blocks == () and c.prefix_len == 0
        assert c.own_start == seq.num_computed
        assert c.token_ids == tuple(seq.token_ids[c.own_start : c.own_len])
        assert c.start_position == c.prefix_len + c.own_start
        assert c.own_blocks == tuple(seq.own_blocks)
        assert len(c.own_blocks) * self.config.block_size >= c.own_len
        assert c.needs_logits == (c.own_len == len(seq.token_ids))

    def _check_blocks(self, out: SchedulerOutput) -> None:
        sched, cache = self.scheduler, self.prompt_cache
        live = list(sched.running) + list(sched.waiting)
        entries = list(cache._entries.values())
        manager, size = self.block_manager, self.config.block_size
        prefix_blocks = [b for e in entries for b in e.prefix_blocks]
        held = Counter(b for s in live for b in s.own_blocks) + Counter(prefix_blocks)
        assert all(manager._num_holders[b] == n for b, n in held.items()), "a hold is not counted, or one leaked"
        assert manager.num_free + len(held) == manager.num_blocks, "blocks leaked"
        assert not any(b in manager._key_of for b in prefix_blocks), "a prompt's prefix block is a cached one"
        for s in live:  # a sequence's published blocks are its first ones, full and computed: read-only
            published = [i for i, b in enumerate(s.own_blocks) if b in manager._key_of]
            assert published == list(range(len(published))) and len(published) * size <= s.num_computed
            for i in published:
                assert manager._key_of[s.own_blocks[i]] == s.block_keys[i], "a block shared under another's key"
        for c in out.sequence_chunks:  # what this step wrote
            written = c.own_blocks[c.own_start // size : -(-c.own_len // size)]
            assert not any(b in manager._key_of and held[b] > 1 for b in written), "a shared block was written"
        assert all(s.own_blocks == [] and s.num_computed == 0 for s in sched.waiting)
        users = Counter(id(s.prompt_entry) for s in live if s.prompt_entry is not None)
        users.update(id(m.entry) for m in out.materializations)  # each chunk in flight holds its entry too
        for entry in entries:
            assert entry.num_users == users[id(entry)]
            assert len(entry.prefix_blocks) == self.block_manager.blocks_for(entry.prefix_len)
        for seq in live:
            if seq.prompt_entry is not None:  # an entry in use is never evicted
                assert cache._entries.get(seq.prompt_entry.key) is seq.prompt_entry
        rows = [r for e in entries for r in e.row_ids]
        assert len(rows) == len(set(rows)) and self.prompt_table.num_free + len(rows) == self.config.prompt_table_rows

    def entry(self, task: str, subtask: int = 0):
        return next(e for e in self.prompt_cache._entries.values() if e.key[0] == task and e.key[2] == subtask)
