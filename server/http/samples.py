"""OpenAI's `n`: the samples of one prompt are n engine requests of one HTTP request, submitted together and read
as their outputs come."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import NamedTuple

from server.engine.client import EngineClient, RequestStream, SubmitRequest
from server.engine.request import RequestOutput, SamplingParams
from server.http.protocol_fields import MAX_SEED


class SampleOutput(NamedTuple):
    choice: int  # which sample: its choice's `index`
    output: RequestOutput


def sample_requests(submit: SubmitRequest, num_samples: int) -> list[SubmitRequest]:
    """`submit` once, or as n requests `{id}-{i}` in one group `{id}` (the engine computes their prompt once) whose
    seeds are seed + i (vLLM's rule: each sample is reproducible alone; with temperature 0 all are equal).

    With prompt logprobs asked (echo), each sample computes its own prompt: the group is left out."""
    if num_samples == 1:
        return [submit]
    assert submit.request_id is not None  # the routes name every request: it is the response id
    group = submit.request_id if submit.sampling.prompt_logprobs is None else None
    return [
        replace(submit, request_id=f"{submit.request_id}-{i}", group=group, sampling=_seeded(submit.sampling, i))
        for i in range(num_samples)
    ]


def _seeded(sampling: SamplingParams, index: int) -> SamplingParams:
    if sampling.seed is None:
        return sampling
    return replace(sampling, seed=(sampling.seed + index) % (MAX_SEED + 1))


def submit_all(
    engine: EngineClient, submits: Sequence[SubmitRequest], loop: asyncio.AbstractEventLoop
) -> list[RequestStream]:
    """All or none: a sample the engine refuses (a full queue) cancels the ones already submitted."""
    streams: list[RequestStream] = []
    try:
        for submit in submits:
            streams.append(engine.submit(submit, loop))
    except BaseException:
        for stream in streams:
            stream.cancel()
        raise
    return streams


async def _read(stream: RequestStream) -> RequestOutput | None:
    """The next output; None: the stream ended without a finished one."""
    try:
        return await anext(stream)
    except StopAsyncIteration:
        return None


class Interleaved:
    """The outputs of several streams in the order they come; one stream is read directly."""

    def __init__(self, streams: Sequence[RequestStream]):
        self._streams = streams
        self._reads: dict[int, asyncio.Task[RequestOutput | None]] = {}  # stream index -> its pending read

    async def next(self, indices: Iterable[int]) -> tuple[int, RequestOutput | None]:
        """The next output of any stream at `indices` (the lowest index first when several are ready)."""
        if len(self._streams) == 1:
            return 0, await _read(self._streams[0])
        for index in indices:
            if index not in self._reads:
                self._reads[index] = asyncio.ensure_future(_read(self._streams[index]))
        await asyncio.wait(self._reads.values(), return_when=asyncio.FIRST_COMPLETED)
        index = min(index for index, read in self._reads.items() if read.done())
        return index, self._reads.pop(index).result()

    def close(self) -> None:
        for read in self._reads.values():
            read.cancel()
        self._reads.clear()
