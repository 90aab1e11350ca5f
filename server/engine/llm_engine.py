"""The engine: `add_request` / `abort` from any thread, `step()` from one loop thread.

step() = schedule -> run -> postprocess.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Callable

import torch

from server.config import EngineConfig
from server.engine import attention
from server.engine.batch import SchedulerOutput
from server.engine.block_manager import BlockManager
from server.engine.detokenizer import IncrementalDetokenizer
from server.engine.errors import RequestValidationError
from server.engine.kv_cache import KVCache
from server.engine.model_runner import ModelRunner
from server.engine.output_builder import finish_sequence, take_output
from server.engine.prompt_cache import PromptCache
from server.engine.prompt_table import PromptTable
from server.engine.request import EngineStats, FinishReason, GenerationRequest, RequestOutput
from server.engine.sampler import sample
from server.engine.scheduler import Scheduler
from server.engine.sequence import Sequence
from server.engine.stop_strings import StopStringMatcher

if TYPE_CHECKING:
    from prompt_store.registry import PromptRegistry

OutputCallback = Callable[[RequestOutput], None]


class RequestHandle:
    """A request's outputs, readable from any thread (or delivered to a callback instead)."""

    def __init__(self, request_id: str, task_ref, on_output: OutputCallback | None):
        self.request_id = request_id
        self.task: str | None = task_ref.task if task_ref else None  # the version pinned at admission
        self.task_version: int | None = task_ref.version if task_ref else None
        self._queue: queue.Queue[RequestOutput] = queue.Queue()
        self.deliver: OutputCallback = on_output or self._queue.put

    def outputs(self, timeout: float | None = None):
        """Yield outputs until the finished one."""
        while True:
            out = self._queue.get(timeout=timeout)
            yield out
            if out.finished:
                return

    def result(self, timeout: float | None = None) -> tuple[list[int], str, RequestOutput]:
        """All generated token ids, the text, and the last output."""
        token_ids, text, last = [], "", None
        for last in self.outputs(timeout):
            token_ids += last.new_token_ids
            text += last.new_text
        return token_ids, text, last


class LLMEngine:
    def __init__(self, config: EngineConfig, model, tokenizer, registry: PromptRegistry):
        self.config = config
        self.tokenizer = tokenizer
        self.registry = registry
        shape = registry.shape
        device = model.device
        model.set_attn_implementation(attention.register())
        self.max_model_len = min(config.max_model_len, _model_max_len(model.config),
                                 (config.num_kv_blocks // 2) * config.block_size)
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        self.block_manager = BlockManager(config.num_kv_blocks, config.block_size)
        kv_cache = KVCache(shape, config.num_kv_blocks, config.block_size, device, model.dtype)
        prompt_table = PromptTable(config.prompt_table_rows, shape.hidden_size, device, model.dtype)
        self.prompt_cache = PromptCache(registry, self.block_manager, kv_cache, prompt_table)
        self.scheduler = Scheduler(config, self.block_manager, self.prompt_cache, shape.vocab_size)
        self.runner = ModelRunner(model, kv_cache, prompt_table, config.use_reference_kernels)
        self._admission_lock = threading.Lock()  # guards the inbox and the live request ids across threads
        self._request_ids: set[str] = set()  # every request not yet retired, inbox included
        self._inbox: deque[tuple[Sequence, RequestHandle]] = deque()
        self._aborts: deque[str] = deque()
        self._handles: dict[str, RequestHandle] = {}
        self._live: dict[str, Sequence] = {}
        self._wakeup = threading.Event()
        self.num_steps = 0
        self._batch_sizes: deque[int] = deque(maxlen=4096)

    # ---- callers' side (any thread) ----

    def add_request(self, request: GenerationRequest, on_output: OutputCallback | None = None) -> RequestHandle:
        """Pin the task's active version now and queue the request; raises UnknownTaskError, RequestValidationError."""
        self._validate(request)
        task_ref = self.registry.pin(request.task, request.subtask) if request.task is not None else None
        try:
            self._check_length(request, task_ref.num_virtual_tokens if task_ref else 0)
        except RequestValidationError:
            if task_ref is not None:
                self.registry.unpin(task_ref)
            raise
        seq = self._new_sequence(request, task_ref)
        handle = RequestHandle(request.request_id, task_ref, on_output)
        with self._admission_lock:
            if request.request_id in self._request_ids:
                if task_ref is not None:
                    self.registry.unpin(task_ref)
                raise RequestValidationError(f"request id {request.request_id!r} is already in use")
            self._request_ids.add(request.request_id)
            self._inbox.append((seq, handle))
        self._wakeup.set()
        return handle

    def abort(self, request_id: str) -> None:
        self._aborts.append(request_id)
        self._wakeup.set()

    def wait_for_work(self, timeout: float) -> None:
        if not self.has_work():
            self._wakeup.wait(timeout)
        self._wakeup.clear()

    def has_work(self) -> bool:
        return bool(self._inbox or self._aborts or self.scheduler.has_work)

    def num_waiting(self) -> int:
        return len(self._inbox) + len(self.scheduler.waiting)

    def live_request_ids(self) -> list[str]:
        with self._admission_lock:
            return list(self._request_ids)

    # ---- the loop thread ----

    def step(self) -> list[RequestOutput]:
        outputs = self._take_inbox_and_aborts()
        batch = self.scheduler.schedule()
        _mark_scheduled(batch, time.monotonic())
        if batch.chunks:
            logits = self.runner.run(batch.chunks)
            outputs += self._postprocess(batch, logits)
        self._deliver(outputs)
        return outputs

    def _postprocess(self, batch: SchedulerOutput, logits: torch.Tensor) -> list[RequestOutput]:
        self.num_steps += 1
        self._batch_sizes.append(batch.num_seqs)
        sampled_chunks = [c for c in batch.chunks if c.needs_logits]
        token_ids = sample(logits, [c.seq.request.sampling for c in sampled_chunks],
                           [c.seq.token_ids for c in sampled_chunks], [c.seq.generator for c in sampled_chunks])
        now = time.monotonic()
        for chunk in batch.chunks:
            if chunk.seq is None:
                chunk.entry.is_materializing = False
            else:
                chunk.seq.num_computed += chunk.num_tokens
        outputs = []
        for chunk, token_id in zip(sampled_chunks, token_ids):
            seq = chunk.seq
            self._append_token(seq, token_id, now)
            if seq.is_finished or seq.pending_token_ids:
                outputs.append(take_output(seq, now))
                if seq.is_finished:
                    self._retire(seq)
        return outputs

    def _append_token(self, seq: Sequence, token_id: int, now: float) -> None:
        seq.token_ids.append(token_id)
        seq.pending_token_ids.append(token_id)
        seq.first_token_time = seq.first_token_time or now
        if token_id in self.eos_token_ids and not seq.request.sampling.ignore_eos:
            return finish_sequence(seq, FinishReason.EOS)
        seq.stop_matcher.add(seq.detokenizer.add(token_id))
        if seq.stop_matcher.is_stopped:
            return finish_sequence(seq, FinishReason.STOP)
        if seq.num_generated >= seq.request.sampling.max_new_tokens \
                or seq.prefix_len + len(seq.token_ids) >= self.max_model_len:
            finish_sequence(seq, FinishReason.LENGTH)

    def _take_inbox_and_aborts(self) -> list[RequestOutput]:
        with self._admission_lock:
            arrived, self._inbox = self._inbox, deque()
        for seq, handle in arrived:
            self._live[seq.request_id] = seq
            self._handles[seq.request_id] = handle
            self.scheduler.add(seq)
        outputs = []
        while self._aborts:
            seq = self._live.get(self._aborts.popleft())
            if seq is not None and not seq.is_finished:
                finish_sequence(seq, FinishReason.ABORTED)
                outputs.append(take_output(seq, time.monotonic()))
                self._retire(seq)
        return outputs

    def _retire(self, seq: Sequence) -> None:
        self.scheduler.finish(seq)
        if seq.task_ref is not None:
            self.registry.unpin(seq.task_ref)
        self._live.pop(seq.request_id, None)
        with self._admission_lock:
            self._request_ids.discard(seq.request_id)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            handle = self._handles.get(out.request_id)
            if handle is None:
                continue
            if out.finished:
                del self._handles[out.request_id]
            handle.deliver(out)

    # ---- admission helpers ----

    def _validate(self, request: GenerationRequest) -> None:
        if not request.prompt_token_ids:
            raise RequestValidationError("the prompt is empty: give at least one token of input")
        vocab = self.registry.shape.vocab_size
        if any(not 0 <= t < vocab for t in request.prompt_token_ids):
            raise RequestValidationError(f"prompt token ids must be in [0, {vocab})")

    def _check_length(self, request: GenerationRequest, num_virtual_tokens: int) -> None:
        total = num_virtual_tokens + len(request.prompt_token_ids)
        if total >= self.max_model_len:
            raise RequestValidationError(
                f"the prompt has {len(request.prompt_token_ids)} tokens (+{num_virtual_tokens} virtual); "
                f"the model takes at most {self.max_model_len - 1} before generating")

    def _new_sequence(self, request: GenerationRequest, task_ref) -> Sequence:
        generator = None
        if request.sampling.do_sample:
            seed = request.sampling.seed
            generator = torch.Generator()
            generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        return Sequence(
            request=request, task_ref=task_ref,
            detokenizer=IncrementalDetokenizer(self.tokenizer, request.prompt_token_ids),
            stop_matcher=StopStringMatcher(request.sampling.stop), generator=generator,
            token_ids=list(request.prompt_token_ids))

    def stats(self) -> EngineStats:
        sizes = []
        while self._batch_sizes:
            sizes.append(self._batch_sizes.popleft())
        return EngineStats(
            num_running=len(self.scheduler.running), num_waiting=self.num_waiting(),
            num_free_blocks=self.block_manager.num_free, num_total_blocks=self.block_manager.num_blocks,
            num_registry_blocks=self.prompt_cache.num_blocks, num_resident_tasks=self.prompt_cache.num_resident,
            num_steps=self.num_steps, last_batch_sizes=tuple(sizes))


def _mark_scheduled(batch: SchedulerOutput, now: float) -> None:
    for chunk in batch.chunks:
        if chunk.seq is not None and chunk.seq.first_scheduled_time is None:
            chunk.seq.first_scheduled_time = now


def _model_max_len(config) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 30


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
