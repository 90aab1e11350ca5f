"""The thread-safe face of the engine that the HTTP layer talks to: text in, a stream of RequestOutputs back.

The engine's step loop runs in its own thread; every public method here may be called from the asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, cast

from prompt_store.access import ANONYMOUS, Caller
from prompt_store.store_poller import StorePoller
from server.config import ServerConfig
from server.engine.errors import EngineNotReadyError, QueueFullError, RequestValidationError
from server.engine.request import EngineStats, GenerationRequest, RequestOutput, ResponseFormat, SamplingParams
from server.engine.token_text import TokenText, TokenTexts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from prompt_store.registry import PromptRegistry
    from server.engine.llm_engine import LLMEngine

log = logging.getLogger("promptswap.engine")


@dataclass(frozen=True)
class SubmitRequest:
    prompt: str | tuple[int, ...]  # text (tokenized like `tokenizer(text).input_ids`) or token ids
    sampling: SamplingParams
    task: str | None = None  # None or the base model id: no soft prompt
    subtask: int = 0  # multitask prompt tuning sub-task
    request_id: str | None = None  # generated when None
    caller: Caller = ANONYMOUS  # whose request (visibility of tasks, fair-scheduling class)
    task_version: int | None = None  # NAME@N: pin this kept version; None: the active one
    group: str | None = None  # the n samples of one prompt: the same value on each (their prompt blocks are shared)
    classify: bool = False  # score with the task's classification head (prefill only) instead of generating


class RequestStream:
    """Outputs of one request, in order; the last has `finished` set. Iterate with `async for`."""

    def __init__(self, request_id: str, num_prompt_tokens: int, client: EngineClient):
        self.request_id = request_id
        self.num_prompt_tokens = num_prompt_tokens
        self.task: str | None = None
        self.task_version: int | None = None
        self.task_owner: str | None = None  # the task's tenant; None: a shared task or the base model
        self.num_virtual_tokens = 0  # of the task version pinned at admission
        self._queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self._client = client
        self._is_done = False

    def __aiter__(self):
        return self

    async def __anext__(self) -> RequestOutput:
        if self._is_done:
            raise StopAsyncIteration
        out = await self._queue.get()
        self._is_done = out.finished
        return out

    def cancel(self) -> None:
        """Abort the request (client gone, deadline); the engine frees its blocks and pins in its next step."""
        if not self._is_done:
            self._client.abort(self.request_id)


class EngineClient:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.base_model_id = config.base_model_id
        self.registry: PromptRegistry | None = None  # set once loaded
        self.engine: LLMEngine | None = None  # set once loaded
        self.tokenizer: PreTrainedTokenizerBase | None = None  # set once loaded
        self.fatal_error: BaseException | None = None  # why the engine stopped (at start-up or later), if it did
        self.on_fatal: Callable[[], None] | None = None  # set by the server: ends the process, non-zero
        self._heartbeat = time.monotonic()  # the loop's last pass that was not stuck in a step
        self.is_draining = False  # the one draining flag: the HTTP layer's ServiceState reads it here
        self._is_stopping = False
        self._thread: threading.Thread | None = None
        self._store_poller: StorePoller | None = None  # other replicas' changes to a shared store, once loaded

    # ---- lifecycle ----

    def start(self) -> None:
        """Load the model and the prompt store in a background thread, then run the step loop there."""
        self._thread = threading.Thread(target=self._run, name="promptswap-engine", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._load()
            self._loop()
        except BaseException as exc:
            # Failures the engine can pin on requests stay inside step(); this one it cannot: a process that
            # only answers 503 would serve nobody, so it ends, non-zero, for its supervisor to restart it.
            log.critical("the engine cannot continue; the process exits", exc_info=exc)
            self.fatal_error = exc
            if self.on_fatal is not None:
                self.on_fatal()

    def _load(self) -> None:
        from server.engine.bootstrap import build_engine

        self.engine, self.registry, self.tokenizer = build_engine(self.config)
        if self.registry.is_shared:  # other replicas write the store too (S3): apply their changes as they come
            self._store_poller = StorePoller(self.registry, self.config.store.poll_interval_s)
            self._store_poller.start()

    def _loop(self) -> None:
        engine = self.engine
        assert engine is not None  # _load set it
        self._heartbeat = time.monotonic()  # loading the model, however long, is not a stuck step
        while not self._is_stopping:
            engine.wait_for_work(timeout=0.1)
            if engine.has_work():
                engine.step()
            self._heartbeat = time.monotonic()

    def is_ready(self) -> bool:
        return self.engine is not None and not self.is_draining and self.is_alive()

    def is_alive(self) -> bool:
        return self.fatal_error is None and self._thread is not None and self._thread.is_alive()

    def is_stalled(self) -> bool:
        """The loop has been inside one step for longer than `health_stall_timeout_s` (an idle loop passes every
        0.1 s; a request waiting for its prompt to load does not hold the loop)."""
        is_stepping_too_long = time.monotonic() - self._heartbeat > self.config.health_stall_timeout_s
        return self.engine is not None and is_stepping_too_long and self.engine.has_work()

    def begin_drain(self) -> None:
        self.is_draining = True

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.engine is not None and self.engine.has_work():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def shutdown(self) -> None:
        if self.engine is not None:
            for request_id in list(self.engine.live_request_ids()):
                self.engine.abort(request_id)
            self.wait_idle(5.0)
        self._is_stopping = True
        if self._store_poller is not None:
            self._store_poller.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    # ---- requests ----

    def stats(self) -> EngineStats:
        return self._require_loaded().stats()

    def max_model_len(self) -> int:
        """Prompt + virtual + generated tokens one sequence may hold (the model's and the KV pool's bounds included)."""
        return self._require_loaded().max_model_len

    def vocab_size(self) -> int:
        """Token ids run over [0, vocab_size): the model's embedding rows."""
        self._require_loaded()
        assert self.registry is not None  # set with the engine
        return self.registry.shape.vocab_size

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._loaded_tokenizer()(text, add_special_tokens=add_special_tokens).input_ids)

    def compile_response_format(self, response_format: ResponseFormat) -> None:
        """Compile its grammar now, off the event loop, so the request's admission takes it from the compiler's
        cache; raises RequestValidationError for a schema that cannot be used."""
        self._require_loaded().grammars.matcher(response_format)

    def tokenize_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """`tokenize(text)` and each token's [start, end) characters in `text` (the tokenizer's offset mapping;
        (0, 0) for a special token it adds)."""
        encoded = self._loaded_tokenizer()(text, return_offsets_mapping=True)
        return list(encoded.input_ids), [(int(start), int(end)) for start, end in encoded.offset_mapping]

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of ids in [0, vocab_size), special tokens included (as vLLM's /detokenize)."""
        return cast(str, self._loaded_tokenizer().decode(list(token_ids)))

    def token_strings(self, token_ids: list[int]) -> list[str]:
        """Each id's entry in the tokenizer's vocabulary ("Ġthe"), not its decoded text."""
        return list(self._loaded_tokenizer().convert_ids_to_tokens(token_ids))

    def token_texts(self, token_ids: Sequence[int]) -> list[TokenText]:
        """How each token reads on its own: logprobs' `tokens` / `bytes`, TGI's `text` / `special`. Cheap after a
        token's first time (kept per id), so the event loop may call it."""
        return self._token_text_table.of(token_ids)

    @cached_property
    def _token_text_table(self) -> TokenTexts:
        return TokenTexts(self._loaded_tokenizer())

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, continue_final_message: bool = False
    ) -> str:
        tokenizer = self._loaded_tokenizer()
        if not getattr(tokenizer, "chat_template", None):
            raise RequestValidationError("this model has no chat template; use /v1/completions")
        try:
            text = tokenizer.apply_chat_template(
                messages,
                tokenize=False,  # the template's text
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
            )
        except Exception as exc:  # the template rejects the messages (roles out of order, ...)
            raise RequestValidationError(f"messages do not fit the chat template: {exc}") from None
        return cast(str, text)

    def submit(self, request: SubmitRequest, loop: asyncio.AbstractEventLoop) -> RequestStream:
        """Admit a request or raise: UnknownTaskError (404), RequestValidationError (400/422),
        QueueFullError (429), EngineNotReadyError (503). Fast: no model work happens here."""
        if not self.is_ready():
            raise EngineNotReadyError("the server is draining" if self.is_draining else "the model is loading")
        engine = self._require_loaded()  # is_ready() saw it loaded
        if engine.num_waiting() >= self.config.max_waiting:
            raise QueueFullError(f"{self.config.max_waiting} requests are already waiting; retry shortly")
        token_ids = self.tokenize(request.prompt) if isinstance(request.prompt, str) else list(request.prompt)
        task = None if request.task in (None, "", self.base_model_id) else request.task
        request_id = request.request_id or uuid.uuid4().hex
        stream = RequestStream(request_id, len(token_ids), self)
        generation = GenerationRequest(
            request_id=request_id,
            prompt_token_ids=tuple(token_ids),
            sampling=request.sampling,
            task=task,
            subtask=request.subtask,
            caller=request.caller,
            task_version=request.task_version,
            group=request.group,
            classify=request.classify,
        )

        def deliver(out: RequestOutput) -> None:
            loop.call_soon_threadsafe(stream._queue.put_nowait, out)

        handle = engine.add_request(generation, on_output=deliver)
        stream.task, stream.task_version = handle.task, handle.task_version
        stream.task_owner, stream.num_virtual_tokens = handle.task_owner, handle.num_virtual_tokens
        return stream

    def abort(self, request_id: str) -> None:
        if self.engine is not None:
            self.engine.abort(request_id)

    def _require_loaded(self) -> LLMEngine:
        if self.engine is None:
            raise EngineNotReadyError("the model is loading")
        return self.engine

    def _loaded_tokenizer(self) -> PreTrainedTokenizerBase:
        self._require_loaded()
        assert self.tokenizer is not None  # set with the engine
        return self.tokenizer
