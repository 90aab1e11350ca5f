"""One generation request from admission to its last output; what /v1/generate and the OpenAI routes share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from starlette.requests import ClientDisconnect

from server.engine.client import RequestStream, SubmitRequest
from server.engine.errors import RequestFailedError
from server.engine.request import FinishReason, RequestOutput
from server.http.context import AppContext
from server.http.errors import ServiceUnavailableError
from server.http.tenant_limits import Lease


@dataclass(frozen=True)
class Completion:
    """A whole generation, for non-streaming responses."""

    text: str
    final: RequestOutput  # the finished output: finish reason, token counts, task version


class Generation:
    """An engine request owned by one HTTP request.

    The engine request is cancelled when the client disconnects, the request deadline passes, or the handler stops
    reading before the end; `close()` gives its place in flight and its tenant lease back exactly once. The tenant
    is charged its prompt tokens (virtual included) at admission and its generated tokens as they arrive.
    """

    def __init__(self, ctx: AppContext, request: Request, stream: RequestStream, lease: Lease):
        self.stream = stream
        self._ctx = ctx
        self._lease = lease
        lease.handed_over = True
        lease.charge(stream.num_prompt_tokens + stream.num_virtual_tokens, "prompt")
        self._started_at = time.monotonic()
        self._deadline = asyncio.get_running_loop().time() + ctx.config.request_timeout_s  # loop clock
        self._first_token_at: float | None = None
        self._is_finished = False
        self._is_client_gone = False
        self._is_closed = False
        self._watcher = asyncio.create_task(_wait_for_disconnect(request))
        self._watcher.add_done_callback(self._on_watcher_done)

    @classmethod
    def start(cls, ctx: AppContext, request: Request, submit: SubmitRequest, lease: Lease) -> Generation:
        """Admit and submit, or raise the reason it cannot be served (404, 422, 429, 503)."""
        ctx.service.admit()
        try:
            stream = ctx.engine.submit(submit, asyncio.get_running_loop())
        except BaseException:
            ctx.service.release()
            raise
        return cls(ctx, request, stream, lease)

    async def outputs(self) -> AsyncIterator[RequestOutput]:
        """The engine's outputs up to the finished one; raises instead of yielding an aborted end."""
        try:
            while not self._is_finished:
                yield await self._next_output()
        finally:
            self.close()

    async def collect(self) -> Completion:
        texts = []
        async for output in self.outputs():
            texts.append(output.new_text)
        return Completion("".join(texts), output)

    def close(self) -> None:
        if self._is_closed:
            return
        self._is_closed = True
        self._watcher.cancel()
        if not self._is_finished:
            self.stream.cancel()
        self._ctx.service.release()
        self._lease.release()

    async def _next_output(self) -> RequestOutput:
        try:
            async with asyncio.timeout_at(self._deadline):
                output = await anext(self.stream)
        except TimeoutError:
            timeout_s = self._ctx.config.request_timeout_s
            raise ServiceUnavailableError(f"the request ran past the {timeout_s:g} s request timeout") from None
        except StopAsyncIteration:  # ended without a finished output: the engine dropped it
            self._is_finished = True
            raise self._aborted() from None
        if self._first_token_at is None and output.new_token_ids:
            self._first_token_at = time.monotonic()
        self._lease.charge(len(output.new_token_ids), "generated")
        if output.finished:
            self._is_finished = True  # nothing is left to cancel
            is_shared = self.stream.task_owner is None
            metrics = self._ctx.metrics
            metrics.observe_finished(output, self._started_at, self._first_token_at, self._lease.label, is_shared)
            if output.finish_reason is FinishReason.ABORTED:
                raise self._aborted()
            if output.finish_reason is FinishReason.ERROR:
                raise RequestFailedError(output.error or "the engine could not serve this request")
        return output

    def _aborted(self) -> Exception:
        return ClientDisconnect() if self._is_client_gone else ServiceUnavailableError("the request was aborted")

    def _on_watcher_done(self, watcher: asyncio.Task) -> None:
        if not watcher.cancelled():
            self._is_client_gone = True
            self.stream.cancel()


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read by now, so the next message the server sends is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
