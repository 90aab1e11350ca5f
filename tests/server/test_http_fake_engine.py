"""An in-process stand-in for EngineClient, for HTTP-shape tests only (the e2e tests use the real engine).

Each request generates `max_new_tokens` tokens, id 100+i and text " w{i}", stopping early on a stop string; a
seeded sampling request starts at id 100 + 1000 * (1 + seed % 5) instead, so samples with other seeds differ. With
logprobs asked, token number g (from 0) gets logprob -0.25 * (g + 1) and the alternatives ids id, id+1, ... with
logprobs one lower each; each prompt token but the first gets -1.5 and the same kind of alternatives. Token ids read
as: 1 "<s>" (special), 2..99 their character, 100 and up " w{id - 100}".
The tests below keep the fake honest: it must offer the real EngineClient's methods with the same parameters.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import httpx

from prompt_store.errors import InvalidPromptError, PromptTooLargeError, UnknownTaskError
from prompt_store.registry_types import RegistryStats, TaskInfo, UploadResult, VersionInfo
from prompt_store.spec import PromptKind
from server.config import ServerConfig
from server.engine.client import EngineClient, RequestStream, SubmitRequest
from server.engine.errors import EngineNotReadyError, QueueFullError, RequestValidationError
from server.engine.histogram import BATCH_SIZE_BUCKETS, Histogram
from server.engine.request import EngineStats, FinishReason, RequestOutput, RequestTimings, TokenLogprob
from server.engine.token_text import TokenText
from server.http.app import create_app

BASE_MODEL_ID = "fake-base"
ADMIN_TOKEN = "test-admin-token"
MAX_FAKE_VIRTUAL_TOKENS = 64
BOS_ID = 1  # what the fake tokenizer puts first, as add_special_tokens does
FAKE_VOCAB_SIZE = 0x110000  # every Unicode code point is a token id


class FakeRegistry:
    """Tasks in a dict; an upload is `adapter_config` JSON with `peft_type` and `num_virtual_tokens`. Every task is
    shared: ownership is the real registry's (tests/prompt_store/test_task_ownership.py, tests/e2e/*tenant*)."""

    def __init__(self):
        self.tasks: dict[str, list[VersionInfo]] = {}
        self.loads_by_tier = {"host": 0, "disk": 0}

    def upload(self, task: str, config_bytes: bytes, model_bytes: bytes, caller=None) -> UploadResult:
        try:
            config = json.loads(config_bytes)
            peft_type, num_virtual_tokens = config["peft_type"], int(config["num_virtual_tokens"])
        except (ValueError, KeyError) as exc:
            raise InvalidPromptError(f"adapter_config.json is not a PEFT config: {exc}") from None
        if num_virtual_tokens > MAX_FAKE_VIRTUAL_TOKENS:
            raise PromptTooLargeError(f"num_virtual_tokens {num_virtual_tokens} exceeds {MAX_FAKE_VIRTUAL_TOKENS}")
        versions = self.tasks.setdefault(task, [])
        kind = PromptKind.PREFIX_KV if peft_type == "PREFIX_TUNING" else PromptKind.EMBEDDING
        size = len(config_bytes) + len(model_bytes)
        info = VersionInfo(len(versions) + 1, peft_type, kind, num_virtual_tokens, 1, size, time.time(), True)
        versions[:] = [_with_active(v, False) for v in versions] + [info]
        return UploadResult(task, info.version, len(versions) == 1, peft_type, kind, num_virtual_tokens, size)

    def list_tasks(self, caller=None) -> list[TaskInfo]:
        return [self.get_task(task) for task in sorted(self.tasks)]

    def get_task(self, task: str, caller=None) -> TaskInfo:
        if task not in self.tasks:
            raise UnknownTaskError(f"unknown task {task!r}")
        versions = tuple(self.tasks[task])
        return TaskInfo(task, next(v.version for v in versions if v.is_active), versions)

    def version_of(self, task: str, version: int | None) -> VersionInfo:
        """What the real registry's `pin(task, version=...)` would pin: the active version, or a kept one."""
        info = self.get_task(task)
        if version is None:
            return info.active
        found = next((v for v in info.versions if v.version == version), None)
        if found is None:
            raise UnknownTaskError(f"task {task!r} has no version {version}")
        return found

    def activate(self, task: str, version: int, caller=None) -> TaskInfo:
        self.version_of(task, version)
        self.tasks[task] = [_with_active(v, v.version == version) for v in self.get_task(task).versions]
        return self.get_task(task)

    def delete(self, task: str, caller=None) -> None:
        self.get_task(task)
        del self.tasks[task]

    def stats(self) -> RegistryStats:
        return RegistryStats(len(self.tasks), 0, 0, dict(self.loads_by_tier), 0, 0, 0, 3)


def _with_active(info: VersionInfo, is_active: bool) -> VersionInfo:
    return VersionInfo(**{**info.__dict__, "is_active": is_active})


class FakeStream(RequestStream):
    def __init__(self, engine: FakeEngine, request: SubmitRequest, num_prompt_tokens: int, task_version: int | None):
        self.request_id = request.request_id or uuid.uuid4().hex
        self.num_prompt_tokens = num_prompt_tokens
        self.task = request.task
        self.task_version = task_version
        self.task_owner = None
        self.num_virtual_tokens = 0
        self.request = request
        self.is_cancelled = False
        self._engine = engine
        self._queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self._is_done = False
        self._num_generated = 0
        self._producer = asyncio.get_running_loop().create_task(self._produce())

    async def __anext__(self) -> RequestOutput:
        if self._is_done:
            raise StopAsyncIteration
        output = await self._queue.get()
        self._is_done = output.finished
        return output

    def cancel(self) -> None:
        if self._producer.done():
            return
        self.is_cancelled = True
        self._producer.cancel()
        self._queue.put_nowait(self._output((), "", FinishReason.ABORTED, self._num_generated))

    async def _produce(self) -> None:
        sampling = self.request.sampling
        self._num_generated, text = 0, ""
        first_id = 100 + (1000 * (1 + sampling.seed % 5) if sampling.do_sample and sampling.seed is not None else 0)
        if self.request_id in self._engine.failing_request_ids:  # even while paused
            self._queue.put_nowait(self._output((), "", FinishReason.ERROR, error="the fake step failed"))
            return
        while self._num_generated < sampling.max_new_tokens:
            while self._engine.is_paused:
                await asyncio.sleep(0.002)
            start = first_id + self._num_generated
            new_ids = tuple(range(start, start + self._engine.tokens_per_step))
            new_ids = new_ids[: sampling.max_new_tokens - self._num_generated]
            new_text = "".join(f" w{token_id - 100}" for token_id in new_ids)
            self._num_generated += len(new_ids)
            stop_at = min((i for s in sampling.stop if (i := (text + new_text).find(s)) >= 0), default=None)
            if stop_at is not None:
                self._queue.put_nowait(self._output(new_ids, (text + new_text)[len(text) : stop_at], FinishReason.STOP))
                return
            text += new_text
            is_last = self._num_generated == sampling.max_new_tokens
            self._queue.put_nowait(self._output(new_ids, new_text, FinishReason.LENGTH if is_last else None))
            await asyncio.sleep(0)

    def _logprobs(self, new_ids: tuple[int, ...]) -> tuple[TokenLogprob, ...]:
        k = self.request.sampling.logprobs
        if k is None:
            return ()
        first = self._num_generated - len(new_ids)
        return tuple(_fake_logprob(token_id, -0.25 * (first + i + 1), k) for i, token_id in enumerate(new_ids))

    def _prompt_logprobs(self, new_ids: tuple[int, ...]) -> tuple[TokenLogprob | None, ...] | None:
        k = self.request.sampling.prompt_logprobs
        if k is None or not new_ids or self._num_generated != len(new_ids):  # only with the first token
            return None
        prompt_ids = self._engine.prompt_ids_of(self.request)
        return (None, *(_fake_logprob(token_id, -1.5, k) for token_id in prompt_ids[1:]))

    def _output(self, new_ids, new_text, finish_reason, num_generated=None, error=None) -> RequestOutput:
        now = time.monotonic()
        finished = finish_reason is not None
        timings = RequestTimings(now - 0.01, now - 0.008, now - 0.005, now) if finished else None
        return RequestOutput(
            request_id=self.request_id,
            new_token_ids=new_ids,
            new_text=new_text,
            finished=finished,
            finish_reason=finish_reason,
            num_prompt_tokens=self.num_prompt_tokens,
            num_generated_tokens=self._num_generated if num_generated is None else num_generated,
            task=self.task,
            task_version=self.task_version,
            timings=timings,
            error=error,
            new_logprobs=self._logprobs(new_ids),
            prompt_logprobs=self._prompt_logprobs(new_ids),
        )


def _fake_logprob(token_id: int, logprob: float, k: int) -> TokenLogprob:
    return TokenLogprob(token_id, logprob, tuple((token_id + j, logprob - j) for j in range(k)))


def fake_token_text(token_id: int) -> TokenText:
    if token_id == 1:
        return TokenText("<s>", b"<s>", True)
    text = chr(token_id) if token_id < 100 else f" w{token_id - 100}"
    return TokenText(text, text.encode(), False)


class FakeEngine(EngineClient):
    def __init__(self, config: ServerConfig):
        self.config = config
        self.base_model_id = config.base_model_id
        self.registry = FakeRegistry()
        self.is_loaded = True
        self.is_running = True  # the engine thread is alive
        self.is_draining = False
        self.is_paused = False  # hold every request's next token until cleared
        self.tokens_per_step = 1
        self.queue_is_full = False
        self.streams: list[FakeStream] = []
        self.batch_sizes: list[int] = []
        self.num_starts = self.num_shutdowns = 0
        self.is_stuck = False  # a step that never ends: /health must say so
        self.failing_request_ids: set[str] = set()  # these requests end at once with FinishReason.ERROR
        self.compiled_formats: list = []  # response_formats compiled before their requests' admission

    def start(self) -> None:
        self.num_starts += 1

    def is_ready(self) -> bool:
        return self.is_loaded and self.is_running and not self.is_draining

    def is_alive(self) -> bool:
        return self.is_running

    def is_stalled(self) -> bool:
        return self.is_stuck

    def stats(self) -> EngineStats:
        running = sum(1 for stream in self.streams if not stream._producer.done())
        sizes = Histogram(BATCH_SIZE_BUCKETS)
        for size in self.batch_sizes:
            sizes = sizes.observed(size)
        return EngineStats(running, 0, 90, 100, 2, 1, 7, sizes)

    def max_model_len(self) -> int:
        return self.config.engine.max_model_len

    def vocab_size(self) -> int:
        return FAKE_VOCAB_SIZE

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [BOS_ID] * add_special_tokens + [ord(c) for c in text]

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return "".join("<s>" if token_id == BOS_ID else chr(token_id) for token_id in token_ids)

    def token_strings(self, token_ids: list[int]) -> list[str]:
        return [f"<{token_id}>" for token_id in token_ids]

    def token_texts(self, token_ids: Sequence[int]) -> list[TokenText]:
        return [fake_token_text(token_id) for token_id in token_ids]

    def compile_response_format(self, response_format) -> None:
        self.compiled_formats.append(response_format)

    def prompt_ids_of(self, request: SubmitRequest) -> tuple[int, ...]:
        return tuple(self.tokenize(request.prompt)) if isinstance(request.prompt, str) else request.prompt

    def apply_chat_template(
        self, messages: list[dict], add_generation_prompt: bool = True, continue_final_message: bool = False
    ) -> str:
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return text + "<assistant>" if add_generation_prompt else text

    def submit(self, request: SubmitRequest, loop: asyncio.AbstractEventLoop) -> RequestStream:
        if not self.is_ready():
            raise EngineNotReadyError("not ready")
        if self.queue_is_full:
            raise QueueFullError("queue full", retry_after_s=3)
        if not request.prompt:
            raise RequestValidationError("the prompt is empty")
        prompt_ids = self.prompt_ids_of(request)
        version = None
        if request.task not in (None, self.base_model_id):
            version = self.registry.version_of(request.task, request.task_version).version
        stream = FakeStream(self, request, len(prompt_ids), version)
        self.streams.append(stream)
        return stream

    def begin_drain(self) -> None:
        self.is_draining = True

    def wait_idle(self, timeout_s: float) -> bool:
        return True

    def shutdown(self) -> None:
        self.num_shutdowns += 1


def fake_config(**overrides) -> ServerConfig:
    values = {"model_id": BASE_MODEL_ID, "admin_token": ADMIN_TOKEN} | overrides
    return ServerConfig(**values)


def run_with_client(test: Callable[[httpx.AsyncClient, FakeEngine], Awaitable[None]], **config_overrides) -> None:
    """Run `test(client, engine)` against a fresh app on a fresh event loop (no lifespan: the fake is ready)."""
    engine = FakeEngine(fake_config(**config_overrides))
    app = create_app(engine.config, engine)

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await test(client, engine)

    asyncio.run(main())


def run_with_server(test: Callable[[str, FakeEngine], Awaitable[None]], **config_overrides) -> None:
    """Run `test(base_url, engine)` against a fresh app served by uvicorn on a loopback port."""
    import uvicorn

    engine = FakeEngine(fake_config(**config_overrides))
    app = create_app(engine.config, engine)

    async def main() -> None:
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                serving.result()  # it failed to start: raise why
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            await test(f"http://127.0.0.1:{port}", engine)
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 10)

    asyncio.run(main())


def sse_payloads(body: str) -> list:
    """The `data:` payloads of an event stream, JSON-decoded except the final "[DONE]"."""
    payloads = [line[len("data: ") :] for line in body.split("\n\n") if line.startswith("data: ")]
    return [payload if payload == "[DONE]" else json.loads(payload) for payload in payloads]


def _public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in vars(cls).items() if callable(fn) and not name.startswith("_")}


def test_fake_engine_offers_every_engine_client_method_with_the_same_parameters():
    real, fake = _public_methods(EngineClient), _public_methods(FakeEngine)
    used_by_http = {
        "start",
        "is_ready",
        "is_alive",
        "is_stalled",
        "stats",
        "max_model_len",
        "vocab_size",
        "tokenize",
        "detokenize",
        "token_strings",
        "token_texts",
        "apply_chat_template",
        "submit",
        "begin_drain",
        "shutdown",
    }
    assert used_by_http <= real.keys()
    for name in used_by_http:
        assert list(fake[name].parameters) == list(real[name].parameters), name


def test_fake_stream_offers_the_request_stream_interface():
    for name in ("__anext__", "cancel"):
        assert list(inspect.signature(getattr(FakeStream, name)).parameters) == list(
            inspect.signature(getattr(RequestStream, name)).parameters
        )


async def call_asgi(app, method: str, path: str, body: bytes, headers: dict[str, str], client_gone: asyncio.Event):
    """Call the app as the server would; the client disconnects once `client_gone` is set.

    Returns (messages sent, number of receive() calls)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 5000),
        "server": ("test", 80),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []
    num_receives = 0

    async def receive() -> dict:
        nonlocal num_receives
        num_receives += 1
        if pending:
            return pending.pop()
        await client_gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return sent, num_receives


def free_port_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"
