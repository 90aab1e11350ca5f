"""Sending one request and timing it: the three request shapes (OpenAI completions, OpenAI chat, promptswap's
TGI-shaped /v1/generate), streamed or not, over one shared HTTP connection pool."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from loadtest.loadgen.metrics import RequestRecord
from loadtest.loadgen.workload import RequestSpec


@dataclass(frozen=True)
class StreamEvent:
    """What one response event (or a whole non-streamed response) told us."""

    text: str = ""  # new content; empty when the event carries none
    has_token: bool = False  # the event is a generated token even if its text is empty (TGI events)
    num_prompt_tokens: int | None = None  # from usage / details, when the event carries them
    num_output_tokens: int | None = None
    error: str | None = None  # an error event inside a stream


@dataclass(frozen=True)
class ClientOptions:
    url: str  # server root, e.g. http://127.0.0.1:8000
    base_model: str  # the `model` sent for requests without a task
    shape: str = "completions"  # a key of SHAPES
    stream: bool = True  # server-sent events; False measures only end-to-end latency
    temperature: float = 0.0  # 0: greedy
    ignore_eos: bool = True  # vLLM's extension (promptswap honours it): every request generates max_tokens
    api_key: str | None = None  # sent as a Bearer token
    timeout_s: float = 600.0  # per request
    extra_body: dict = field(default_factory=dict)  # merged into every request body


class CompletionsShape:
    """POST /v1/completions; the task goes in `model`."""

    name, path = "completions", "/v1/completions"

    def body(self, spec: RequestSpec, model: str, options: ClientOptions) -> dict:
        body = {
            "model": model,
            "prompt": spec.prompt,
            "max_tokens": spec.max_tokens,
            "stream": options.stream,
            "temperature": options.temperature,
            "ignore_eos": options.ignore_eos,
        }
        return body | ({"stream_options": {"include_usage": True}} if options.stream else {})

    def params(self, spec: RequestSpec) -> dict:
        return {}

    def read(self, event: dict) -> StreamEvent:
        choices = event.get("choices") or []
        text = (choices[0].get("text") or "") if choices else ""
        return StreamEvent(text=text, **_openai_usage(event))


class ChatShape(CompletionsShape):
    """POST /v1/chat/completions with the prompt as one user message."""

    name, path = "chat", "/v1/chat/completions"

    def body(self, spec: RequestSpec, model: str, options: ClientOptions) -> dict:
        body = super().body(spec, model, options)
        del body["prompt"]
        return body | {"messages": [{"role": "user", "content": spec.prompt}]}

    def read(self, event: dict) -> StreamEvent:
        choices = event.get("choices") or []
        if not choices:
            return StreamEvent(**_openai_usage(event))
        message = choices[0].get("delta") or choices[0].get("message") or {}
        return StreamEvent(text=message.get("content") or "", **_openai_usage(event))


class GenerateShape:
    """promptswap's POST /v1/generate?task=NAME (TGI-shaped). It has no ignore_eos: outputs may end early."""

    name, path = "generate", "/v1/generate"

    def body(self, spec: RequestSpec, model: str, options: ClientOptions) -> dict:
        sampling = (
            {"do_sample": True, "temperature": options.temperature} if options.temperature > 0 else {"do_sample": False}
        )
        return {
            "inputs": spec.prompt,
            "parameters": {"max_new_tokens": spec.max_tokens, **sampling},
            "stream": options.stream,
        }

    def params(self, spec: RequestSpec) -> dict:
        return {"task": spec.task} if spec.task is not None else {}

    def read(self, event: dict) -> StreamEvent:
        details = event.get("details") or {}
        token = event.get("token")
        return StreamEvent(
            text=(token or {}).get("text") or event.get("generated_text") or "",
            has_token=token is not None,
            num_prompt_tokens=details.get("prompt_tokens"),
            num_output_tokens=details.get("generated_tokens"),
        )


SHAPES = {shape.name: shape for shape in (CompletionsShape(), ChatShape(), GenerateShape())}


class LoadClient:
    """Sends RequestSpecs and fills their RequestRecords; never raises for a failed request."""

    def __init__(self, options: ClientOptions, clock: Callable[[], float]):
        self.options = options
        self.shape = SHAPES[options.shape]
        self.clock = clock  # seconds since the start of the run
        headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        self.http = httpx.AsyncClient(
            base_url=options.url,
            headers=headers,
            timeout=httpx.Timeout(options.timeout_s, connect=30),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=1024),
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def send(self, spec: RequestSpec, record: RequestRecord) -> None:
        record.sent_s = self.clock()
        try:
            if self.options.stream:
                await self._stream(spec, record)
            else:
                await self._post(spec, record)
        except httpx.TimeoutException:
            record.error = "timeout"
        except Exception as exc:  # noqa: BLE001 - a load test records every failure and carries on
            record.error = type(exc).__name__
        record.end_s = self.clock()

    def _request(self, spec: RequestSpec) -> dict:
        model = spec.task if spec.task is not None else self.options.base_model
        body = self.shape.body(spec, model, self.options)
        return {"url": self.shape.path, "params": self.shape.params(spec), "json": body | self.options.extra_body}

    async def _stream(self, spec: RequestSpec, record: RequestRecord) -> None:
        async with self.http.stream("POST", **self._request(spec)) as response:
            if response.status_code >= 400:
                await response.aread()
                record.error = f"http_{response.status_code}"
                return
            num_chunks = 0
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                event = _read_event(self.shape, payload)
                if event.error:
                    record.error = event.error
                    return
                if event.text or event.has_token:
                    record.chunk_times_s.append(self.clock())
                    num_chunks += 1
                _take_counts(record, event)
            if not record.num_output_tokens:
                record.num_output_tokens = num_chunks

    async def _post(self, spec: RequestSpec, record: RequestRecord) -> None:
        response = await self.http.post(**self._request(spec))
        if response.status_code >= 400:
            record.error = f"http_{response.status_code}"
            return
        _take_counts(record, _read_event(self.shape, response.text))


def _read_event(shape, payload: str) -> StreamEvent:
    try:
        event = json.loads(payload)
    except json.JSONDecodeError:
        return StreamEvent(error="bad_event")
    if isinstance(event, dict) and "error" in event:
        return StreamEvent(error="stream_error")
    return shape.read(event)


def _take_counts(record: RequestRecord, event: StreamEvent) -> None:
    if event.num_prompt_tokens is not None:
        record.num_prompt_tokens = event.num_prompt_tokens
    if event.num_output_tokens is not None:
        record.num_output_tokens = event.num_output_tokens


def _openai_usage(event: dict) -> dict:
    usage = event.get("usage") or {}
    return {"num_prompt_tokens": usage.get("prompt_tokens"), "num_output_tokens": usage.get("completion_tokens")}


async def list_models(url: str, api_key: str | None = None) -> list[str]:
    """The ids `GET /v1/models` lists, in its order (promptswap lists the base model first)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
        response = await http.get("/v1/models")
        response.raise_for_status()
        return [model["id"] for model in response.json()["data"]]
