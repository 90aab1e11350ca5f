"""The engine: `add_request` / `abort` from any thread, `step()` from one loop thread.

A step: take arrivals and aborts -> schedule -> run -> sample -> postprocess -> unpin the finished -> deliver.
The scheduler owns both halves of the step's state (scheduler.py); this file owns the request table, which spans
from `add_request` to the delivery of a request's last output.

Faults stay local: a request whose prompt version is cold waits, off the scheduler, while a worker loads it
(prompt_loader.py), and fails alone if the file is damaged; a run or sample that raises fails only the requests
at fault (step_isolation.py). What the engine cannot attribute (the scheduler, delivery) raises out of `step()`:
its state can no longer be trusted, and EngineClient ends the process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

import torch

from prompt_store.spec import TaskKind
from server.config import EngineConfig
from server.engine import attention
from server.engine.batch import MaterializationChunk, SchedulerOutput, SequenceChunk
from server.engine.block_manager import BlockManager
from server.engine.classification import apply_heads
from server.engine.detokenizer import IncrementalDetokenizer
from server.engine.errors import RequestValidationError
from server.engine.fault_injection import FaultInjector
from server.engine.histogram import BATCH_SIZE_BUCKETS, Histogram
from server.engine.kv_cache import KVCache
from server.engine.live_request import LiveRequest, OutputCallback, RequestHandle
from server.engine.logprobs import token_logprobs
from server.engine.model_runner import ModelRunner
from server.engine.prefix_cache import PrefixCache
from server.engine.prompt_cache import PromptCache
from server.engine.prompt_loader import PromptLoader
from server.engine.prompt_table import PromptTable
from server.engine.request import EngineStats, FinishReason, GenerationRequest, RequestOutput
from server.engine.sampler import SampleResult, SampleRow, sample_rows
from server.engine.scheduler import Scheduler
from server.engine.sequence import Sequence
from server.engine.step_isolation import isolate
from server.engine.stop_strings import StopStringMatcher
from server.engine.structured_output import GrammarCompiler, GrammarMatcher
from server.model.architecture import ServedArchitecture, served_architecture

if TYPE_CHECKING:
    from prompt_store.registry import PromptRegistry
    from prompt_store.registry_types import TaskVersionRef

log = logging.getLogger("promptswap.engine")


class LLMEngine:
    def __init__(self, config: EngineConfig, model, tokenizer, registry: PromptRegistry):
        self.config = config
        self.tokenizer = tokenizer
        self.registry = registry
        shape = registry.shape
        device = model.device
        model.set_attn_implementation(attention.register())
        architecture = served_architecture(model)
        self.max_model_len = _capped_to_window(
            min(config.max_model_len, _model_max_len(model.config), (config.num_kv_blocks // 2) * config.block_size),
            architecture,
        )
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        self.grammars = GrammarCompiler(tokenizer, shape.vocab_size, self.eos_token_ids)
        self.block_manager = BlockManager(config.num_kv_blocks, config.block_size)
        kv_cache = KVCache(shape, config.num_kv_blocks, config.block_size, device, model.dtype)
        prompt_table = PromptTable(config.prompt_table_rows, shape.hidden_size, device, model.dtype)
        self.prompt_cache = PromptCache(registry, self.block_manager, kv_cache, prompt_table)
        self.prefix_cache = PrefixCache(self.block_manager, config.enable_prefix_caching)
        self.scheduler = Scheduler(config, self.block_manager, self.prompt_cache, self.prefix_cache, shape.vocab_size)
        self.runner = ModelRunner(
            model, kv_cache, prompt_table, config.use_reference_kernels, architecture.embedding_scale
        )
        self._lock = threading.Lock()  # guards the request table and the arrivals across threads
        self._requests: dict[str, LiveRequest] = {}  # every request not yet delivered its last output
        self._arrivals: deque[LiveRequest] = deque()  # added, not yet handed to the scheduler
        self._aborts: deque[str] = deque()
        self._loading: list[LiveRequest] = []  # arrived, its prompt version still being loaded (loop thread only)
        self._group_leaders: dict[str, Sequence] = {}  # sample group -> its first live sequence (under the lock)
        self._wakeup = threading.Event()
        self.loader = PromptLoader(registry, on_loaded=self._wakeup.set)
        self.faults = FaultInjector.parse(config.fault_injection, tokenizer)  # None unless a test sets it
        self.batch_sizes = Histogram(BATCH_SIZE_BUCKETS)  # sequences per step that ran; replaced, never mutated
        self.num_step_failures = 0
        self._stats = self._snapshot()

    # ---- callers' side (any thread) ----

    def add_request(self, request: GenerationRequest, on_output: OutputCallback | None = None) -> RequestHandle:
        """Pin the task's version now (the active one, or `task_version` if kept) and queue the request; raises
        UnknownTaskError, RequestValidationError."""
        self._validate(request)
        grammar = self._grammar(request)
        task_ref = (
            self.registry.pin(request.task, request.subtask, request.caller, request.task_version)
            if request.task is not None
            else None
        )
        try:
            self._check_kind(request, task_ref)
            self._check_length(request, task_ref.num_virtual_tokens if task_ref else 0)
        except RequestValidationError:
            if task_ref is not None:
                self.registry.unpin(task_ref)
            raise
        handle = RequestHandle(request.request_id, task_ref, on_output)
        prompt_load = self.loader.load(task_ref) if task_ref is not None else None
        live = LiveRequest(self._new_sequence(request, task_ref, grammar), handle, prompt_load)
        with self._lock:
            if request.request_id in self._requests:
                if task_ref is not None:
                    self.registry.unpin(task_ref)
                raise RequestValidationError(f"request id {request.request_id!r} is already in use")
            self._requests[request.request_id] = live
            self._arrivals.append(live)
            if request.group is not None:
                live.seq.group_leader = self._group_leaders.setdefault(request.group, live.seq)
        self._wakeup.set()
        return live.handle

    def abort(self, request_id: str) -> None:
        self._aborts.append(request_id)
        self._wakeup.set()

    def wait_for_work(self, timeout: float) -> None:
        if not self._has_step_work():
            self._wakeup.wait(timeout)
        self._wakeup.clear()

    def has_work(self) -> bool:
        """Any request not yet finished, prompt loads under way included."""
        return self._has_step_work() or bool(self._loading)

    def _has_step_work(self) -> bool:
        """What a step can move now: a request still loading its prompt cannot."""
        is_load_done = any(not live.is_loading for live in self._loading)
        return bool(self._arrivals or self._aborts or self.scheduler.has_work or is_load_done)

    def num_waiting(self) -> int:
        return len(self._arrivals) + len(self._loading) + len(self.scheduler.waiting)

    def live_request_ids(self) -> list[str]:
        with self._lock:
            return list(self._requests)

    @property
    def num_steps(self) -> int:
        """Steps that ran a batch."""
        return self.batch_sizes.count

    def stats(self) -> EngineStats:
        """The snapshot the loop thread took after its last step; reading it changes nothing and races nothing."""
        return self._stats

    def _snapshot(self) -> EngineStats:
        """On the loop thread only: the prompt cache's entries are iterated here."""
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=self.num_waiting(),
            num_free_blocks=self.block_manager.num_free,
            num_total_blocks=self.block_manager.num_blocks,
            num_registry_blocks=self.prompt_cache.num_blocks,
            num_resident_tasks=self.prompt_cache.num_resident,
            num_steps=self.num_steps,
            batch_sizes=self.batch_sizes,
            num_step_failures=self.num_step_failures,
            num_prefix_cache_queried_tokens=self.prefix_cache.num_queried_tokens,
            num_prefix_cache_hit_tokens=self.prefix_cache.num_hit_tokens,
        )

    # ---- the loop thread ----

    def step(self) -> list[RequestOutput]:
        """One iteration of continuous batching; returns the outputs it delivered."""
        updated = self._take_arrivals_and_aborts()
        updated += self._admit_loaded()
        batch = self.scheduler.schedule()
        if self.faults is not None:
            self.faults.check("loop", batch)
        if batch.chunks:
            updated += self._run(batch)
            self.batch_sizes = self.batch_sizes.observed(batch.num_seqs)
        self._unpin_finished(updated)
        self._stats = self._snapshot()  # before delivery: a caller that saw its last output sees it finished here
        return self._deliver(updated)

    def _take_arrivals_and_aborts(self) -> list[Sequence]:
        """Move arrivals to the loading list (`_admit_loaded` hands them on); finish and remove aborted requests.
        Returns the aborted sequences.

        Both under one hold of the lock: an abort is then never handled before its own request's arrival.
        """
        with self._lock:
            arrivals, self._arrivals = self._arrivals, deque()
            self._loading += arrivals  # to the scheduler once their prompt is loaded: _admit_loaded
            aborted = []
            while self._aborts:
                live = self._requests.get(self._aborts.popleft())
                if live is not None and not live.seq.is_finished:
                    live.seq.finish(FinishReason.ABORTED)
                    self.scheduler.remove(live.seq)
                    aborted.append(live.seq)
        return aborted

    def _admit_loaded(self) -> list[Sequence]:
        """Requests whose prompt version is in the host tier go to the scheduler, in arrival order; those whose
        load failed (a damaged file) fail, alone. Returns the failed ones."""
        failed, still_loading = [], []
        for live in self._loading:
            seq, load = live.seq, live.prompt_load
            if seq.is_finished:  # aborted while its prompt was loading
                continue
            if live.is_loading:
                still_loading.append(live)
            elif load is not None and load.exception() is not None:
                assert seq.task_ref is not None  # only task requests load a prompt
                seq.fail(
                    f"task {seq.task_ref.task!r} version {seq.task_ref.version} could not be loaded from "
                    f"the prompt store: {load.exception()}"
                )
                failed.append(seq)
            else:
                self.scheduler.add(seq)
        self._loading = still_loading
        return failed

    def _run(self, batch: SchedulerOutput) -> list[Sequence]:
        """Run, sample and postprocess; if run or sample raises, only the requests at fault fail."""
        try:
            sampled = self._forward(batch)
        except Exception:
            log.exception("a step of %d chunks failed; running them one by one to find the cause", len(batch.chunks))
            self.num_step_failures += 1
            isolated = isolate(batch, self._forward)
            failed = self._fail_chunks(isolated.failed_chunks)
            postprocessed = self.scheduler.postprocess(
                isolated.batch, isolated.sampled_token_ids, isolated.sampled_logprobs
            )
            return failed + postprocessed
        return self.scheduler.postprocess(batch, sampled.token_ids, sampled.logprobs)

    def _forward(self, batch: SchedulerOutput) -> SampleResult:
        if self.faults is not None:
            self.faults.check("run", batch)
        run = self.runner.run(batch.chunks)
        if run.hidden is not None:
            for rows in apply_heads(run.hidden, batch.sequence_chunks):
                rows.chunk.seq.add_classification(rows.first_token, rows.logits, rows.labels)
        return self._sample(batch, self._take_prompt_logprobs(batch, run.logits))

    def _take_prompt_logprobs(self, batch: SchedulerOutput, logits: torch.Tensor) -> torch.Tensor:
        """Give the chunks that return every row's logits their prompt tokens' logprobs (of the raw logits);
        returns the rows to sample from, one per `batch.sampled_seqs`."""
        if not any(chunk.needs_every_logit for chunk in batch.chunks):
            return logits
        sample_rows, offset = [], 0
        for chunk in batch.chunks:
            if chunk.needs_every_logit and isinstance(chunk, SequenceChunk):
                self._add_prompt_logprobs(chunk, logits[offset : offset + chunk.num_tokens])
            offset += chunk.num_logit_rows
            if chunk.needs_logits:
                sample_rows.append(offset - 1)
        return logits[torch.tensor(sample_rows, dtype=torch.int64, device=logits.device)]

    def _add_prompt_logprobs(self, chunk: SequenceChunk, logits: torch.Tensor) -> None:
        """Row i predicts own token own_start + i + 1; rows predicting past the prompt are not the prompt's."""
        seq = chunk.seq
        num_rows = min(chunk.num_tokens, seq.num_prompt_tokens - 1 - chunk.own_start)
        if num_rows <= 0:
            return
        first = chunk.own_start + 1
        targets = list(seq.token_ids[first : first + num_rows])
        num_top = seq.request.sampling.prompt_logprobs or 0
        seq.add_prompt_logprobs(first, token_logprobs(logits[:num_rows], targets, [num_top] * num_rows))

    def _fail_chunks(self, failed_chunks) -> list[Sequence]:
        failed = []
        for chunk, error in failed_chunks:
            if isinstance(chunk, MaterializationChunk):
                failed += self.scheduler.abandon(chunk, error)
            else:
                self.scheduler.fail(chunk.seq, error)
                failed.append(chunk.seq)
        return failed

    def _sample(self, batch: SchedulerOutput, logits: torch.Tensor) -> SampleResult:
        rows = [
            SampleRow(
                seq.request.sampling, seq.token_ids, seq.num_prompt_tokens, seq.generator, seq.banned_ids, seq.grammar
            )
            for seq in batch.sampled_seqs
        ]
        return sample_rows(logits, rows)

    def _unpin_finished(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            if seq.is_finished and seq.task_ref is not None:
                self.registry.unpin(seq.task_ref)

    def _deliver(self, seqs: list[Sequence]) -> list[RequestOutput]:
        """The one way out: each sequence's news to its handle; a finished request leaves the table first."""
        now = time.monotonic()
        outputs = [seq.take_output(now) for seq in seqs]
        with self._lock:
            handles = [self._requests[out.request_id].handle for out in outputs]
            for seq, out in zip(seqs, outputs, strict=True):
                if out.finished:
                    del self._requests[out.request_id]
                    group = seq.request.group
                    if group is not None and self._group_leaders.get(group) is seq:
                        del self._group_leaders[group]
        for handle, out in zip(handles, outputs, strict=True):
            try:
                handle.deliver(out)
            except Exception:  # the caller's side is gone (its event loop closed at shutdown): nothing to tell
                log.exception("could not deliver an output of request %s", out.request_id)
        return outputs

    # ---- admission helpers ----

    def _validate(self, request: GenerationRequest) -> None:
        if not request.prompt_token_ids:
            raise RequestValidationError("the prompt is empty: give at least one token of input")
        if request.task is None and request.task_version is not None:
            raise RequestValidationError("the base model has no versions to pin")
        vocab = self.registry.shape.vocab_size
        if any(not 0 <= t < vocab for t in request.prompt_token_ids):
            raise RequestValidationError(f"prompt token ids must be in [0, {vocab})")
        sampling = request.sampling
        if any(not 0 <= t < vocab for t, _ in sampling.logit_bias):
            raise RequestValidationError(f"logit_bias token ids must be in [0, {vocab})", param="logit_bias")
        if sampling.response_format is not None and sampling.min_tokens > 0:
            # The grammar may allow only an end-of-sequence token where min_tokens bans it: no token would be left.
            raise RequestValidationError("min_tokens cannot be combined with response_format", param="min_tokens")
        if sampling.response_format is not None and sampling.ignore_eos:
            raise RequestValidationError("ignore_eos cannot be combined with response_format", param="ignore_eos")
        if any(not 0 <= t < vocab for t in sampling.stop_token_ids):
            raise RequestValidationError(f"stop_token_ids must be in [0, {vocab})", param="stop_token_ids")

    def _check_kind(self, request: GenerationRequest, task_ref: TaskVersionRef | None) -> None:
        """Generation requests need a generation task (or the base model), classification requests a
        classification task: the wrong kind is a 400 naming the task's kind."""
        kind = task_ref.task_kind if task_ref is not None else TaskKind.GENERATE
        if request.classify and not kind.is_classification:
            what = f"task {request.task!r} is a {kind.value} task" if request.task else "the base model generates"
            raise RequestValidationError(
                f"{what}; classification needs a classify-sequence or classify-tokens task", param="model"
            )
        if not request.classify and kind.is_classification:
            raise RequestValidationError(
                f"task {request.task!r} is a {kind.value} task: use POST /v1/classify, not a generation route",
                param="model",
            )

    def _grammar(self, request: GenerationRequest) -> GrammarMatcher | None:
        response_format = request.sampling.response_format
        return self.grammars.matcher(response_format) if response_format is not None else None

    def _check_length(self, request: GenerationRequest, num_virtual_tokens: int) -> None:
        total = num_virtual_tokens + len(request.prompt_token_ids)
        if total >= self.max_model_len:
            raise RequestValidationError(
                f"the prompt has {len(request.prompt_token_ids)} tokens (+{num_virtual_tokens} virtual); "
                f"the model takes at most {self.max_model_len - 1} before generating"
            )

    def _new_sequence(self, request: GenerationRequest, task_ref, grammar: GrammarMatcher | None) -> Sequence:
        generator = None
        if request.sampling.do_sample:
            seed = request.sampling.seed
            generator = torch.Generator()
            generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        return Sequence(
            request=request,
            task_ref=task_ref,
            detokenizer=IncrementalDetokenizer(self.tokenizer, request.prompt_token_ids),
            stop_matcher=StopStringMatcher(request.sampling.stop),
            generator=generator,
            token_ids=list(request.prompt_token_ids),
            eos_token_ids=self.eos_token_ids,
            max_model_len=self.max_model_len,
            prompt_logprobs=[None] if request.sampling.prompt_logprobs is not None else None,
            grammar=grammar,
        )


def _model_max_len(config) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 30


def _capped_to_window(max_model_len: int, architecture: ServedArchitecture) -> int:
    """Paged attention sees the whole context; a sequence that fits in the sliding window never notices the
    difference, so none is let grow past it."""
    window = architecture.attention_window
    if window is None or window >= max_model_len:
        return max_model_len
    log.info(
        "max_model_len capped from %d to %d tokens: %s attends over a sliding window of %d, which the paged "
        "attention does not implement",
        max_model_len,
        window,
        architecture.model_type,
        window,
    )
    return window


def _eos_token_ids(model, tokenizer) -> frozenset[int]:
    """What `generate` stops on: the generation config's EOS ids, else the tokenizer's."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return frozenset()
    return frozenset(eos if isinstance(eos, (list, tuple)) else [eos])
