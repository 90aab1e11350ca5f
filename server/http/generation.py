"""One HTTP request's generation from admission to its last output; what /v1/generate and the OpenAI routes share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from fastapi import Request
from starlette.requests import ClientDisconnect

from server.engine.client import RequestStream, SubmitRequest
from server.engine.errors import RequestFailedError
from server.engine.request import FinishReason, RequestOutput, TokenLogprob
from server.http.context import AppContext
from server.http.errors import ServiceUnavailableError
from server.http.samples import Interleaved, SampleOutput, submit_all
from server.http.tenant_limits import Lease


@dataclass(frozen=True)
class Completion:
    """A whole sample, for non-streaming responses."""

    text: str
    final: RequestOutput  # the finished output: finish reason, token counts, task version
    token_ids: tuple[int, ...]  # every generated token, the ones a stop string cut included
    logprobs: tuple[TokenLogprob, ...]  # with sampling.logprobs: one per token id
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None  # with sampling.prompt_logprobs: one per prompt token

    @classmethod
    def of(cls, outputs: Sequence[RequestOutput]) -> Completion:
        return cls(
            text="".join(output.new_text for output in outputs),
            final=outputs[-1],
            token_ids=tuple(token_id for output in outputs for token_id in output.new_token_ids),
            logprobs=tuple(entry for output in outputs for entry in output.new_logprobs),
            prompt_logprobs=next((o.prompt_logprobs for o in outputs if o.prompt_logprobs is not None), None),
        )


class Generation:
    """The engine requests one HTTP request owns: one, or the n samples of its prompt (samples.py).

    All are cancelled when the client disconnects, the request deadline passes, one of them fails, or the handler
    stops reading before the end; `close()` gives the request's place in flight and its tenant lease back exactly
    once. The tenant is charged its prompt tokens (virtual included) once, at admission, as the samples share the
    prompt's computation, and every sample's generated tokens as they arrive.
    """

    def __init__(
        self, ctx: AppContext, request: Request, streams: Sequence[RequestStream], lease: Lease, shared_prompt: bool
    ):
        self.streams = list(streams)
        self._ctx = ctx
        self._lease = lease
        lease.handed_over = True
        charged = self.streams[:1] if shared_prompt else self.streams
        lease.charge(sum(stream.num_prompt_tokens + stream.num_virtual_tokens for stream in charged), "prompt")
        self._started_at = time.monotonic()
        self._deadline = asyncio.get_running_loop().time() + ctx.config.request_timeout_s  # loop clock
        self._first_token_at: list[float | None] = [None] * len(self.streams)
        self._is_finished = [False] * len(self.streams)
        self._interleaved = Interleaved(self.streams)
        self._is_client_gone = False
        self._is_closed = False
        self._watcher = asyncio.create_task(_wait_for_disconnect(request))
        self._watcher.add_done_callback(self._on_watcher_done)

    @classmethod
    async def start(
        cls,
        ctx: AppContext,
        request: Request,
        submits: Sequence[SubmitRequest],
        lease: Lease,
        shared_prompt: bool = True,
    ) -> Generation:
        """Admit and submit, or raise the reason it cannot be served (404, 422, 429, 503). `shared_prompt`: the
        submits are samples of one prompt (charged once), else each its own input (each charged)."""
        for response_format in {s.sampling.response_format for s in submits} - {None}:
            # Compiled on the offload pool (ms; the first one also reads the vocabulary): admission, on the event
            # loop, then finds it in the compiler's cache. A schema that cannot be used is a 400 here.
            await ctx.offload.run(ctx.engine.compile_response_format, response_format)
        ctx.service.admit()
        try:
            streams = submit_all(ctx.engine, submits, asyncio.get_running_loop())
        except BaseException:
            ctx.service.release()
            raise
        return cls(ctx, request, streams, lease, shared_prompt)

    async def outputs(self) -> AsyncIterator[SampleOutput]:
        """Every sample's outputs, interleaved as they come, up to each one's finished output; raises instead of
        yielding an aborted or failed end."""
        try:
            while not all(self._is_finished):
                yield await self._next_output()
        finally:
            self.close()

    async def collect(self) -> list[Completion]:
        """Each sample's whole completion, by index."""
        outputs: list[list[RequestOutput]] = [[] for _ in self.streams]
        async for index, output in self.outputs():
            outputs[index].append(output)
        return [Completion.of(sample_outputs) for sample_outputs in outputs]

    def close(self) -> None:
        if self._is_closed:
            return
        self._is_closed = True
        self._watcher.cancel()
        self._interleaved.close()
        self._cancel_unfinished()
        self._ctx.service.release()
        self._lease.release()

    async def _next_output(self) -> SampleOutput:
        unfinished = [index for index, is_finished in enumerate(self._is_finished) if not is_finished]
        try:
            async with asyncio.timeout_at(self._deadline):
                index, output = await self._interleaved.next(unfinished)
        except TimeoutError:
            timeout_s = self._ctx.config.request_timeout_s
            raise ServiceUnavailableError(f"the request ran past the {timeout_s:g} s request timeout") from None
        if output is None:  # ended without a finished output: the engine dropped it
            self._is_finished[index] = True
            raise self._aborted()
        if self._first_token_at[index] is None and output.new_token_ids:
            self._first_token_at[index] = time.monotonic()
        self._lease.charge(len(output.new_token_ids), "generated")
        if output.finished:
            self._is_finished[index] = True  # nothing is left to cancel
            self._observe_finished(index, output)
            if output.finish_reason is FinishReason.ABORTED:
                raise self._aborted()
            if output.finish_reason is FinishReason.ERROR:
                raise RequestFailedError(output.error or "the engine could not serve this request")
        return SampleOutput(index, output)

    def _observe_finished(self, index: int, output: RequestOutput) -> None:
        is_shared = self.streams[index].task_owner is None
        first_token_at = self._first_token_at[index]
        self._ctx.metrics.observe_finished(output, self._started_at, first_token_at, self._lease.label, is_shared)

    def _cancel_unfinished(self) -> None:
        for stream, is_finished in zip(self.streams, self._is_finished, strict=True):
            if not is_finished:
                stream.cancel()

    def _aborted(self) -> Exception:
        return ClientDisconnect() if self._is_client_gone else ServiceUnavailableError("the request was aborted")

    def _on_watcher_done(self, watcher: asyncio.Task) -> None:
        if not watcher.cancelled():
            self._is_client_gone = True
            self._cancel_unfinished()


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read by now, so the next message the server sends is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
