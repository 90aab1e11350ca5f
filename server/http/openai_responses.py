"""OpenAI response bodies from a Generation: whole or as stream chunks, one choice per sample, with logprobs when
asked. Stream chunks of the samples are interleaved as they come, each naming its choice's `index`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from server.engine.request import RequestOutput, TokenLogprob
from server.http.generation import Completion, Generation
from server.http.logprobs import CompletionLogprobsWriter, TokenRenderer, chat_logprobs, prompt_entries
from server.http.protocol_openai import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatMessageOut,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    Usage,
    finish_reason_of,
)
from server.http.sse import sse_event


@dataclass(frozen=True)
class ResponseHead:
    request_id: str  # the response's `id`
    model: str
    include_usage: bool  # streams: a last chunk with `usage`
    created: int  # the response's `created`, the same on every chunk


@dataclass(frozen=True)
class EchoedPrompt:
    """Completions' `echo`: the prompt's text before each choice's, and its tokens' logprobs before the choice's."""

    text: str
    token_ids: tuple[int, ...]  # the prompt's tokens, for their logprobs


def completion_response(
    head: ResponseHead, completions: Sequence[Completion], echo: EchoedPrompt | None, render: TokenRenderer | None
) -> CompletionResponse:
    """`echo`: None without echo; `render`: None without logprobs."""
    choices = []
    for index, completion in enumerate(completions):
        logprobs = None
        if render is not None:
            token_ids = list(completion.token_ids)
            entries: list[TokenLogprob | None] = list(completion.logprobs)
            if echo is not None:
                token_ids[:0] = echo.token_ids
                entries[:0] = prompt_entries(echo.token_ids, completion.prompt_logprobs)
            logprobs = CompletionLogprobsWriter(render).write(token_ids, entries)
        text, finish_reason = (echo.text if echo else "") + completion.text, finish_reason_of(completion.final)
        choices.append(CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish_reason))
    usage = Usage.of([completion.final for completion in completions])
    return CompletionResponse(id=head.request_id, created=head.created, model=head.model, choices=choices, usage=usage)


async def completion_chunks(
    head: ResponseHead, generation: Generation, echo: EchoedPrompt | None, render: TokenRenderer | None
) -> AsyncIterator[bytes]:
    def chunk(index: int, text: str, logprobs: CompletionLogprobs | None, finish_reason: str | None) -> bytes:
        choice = CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish_reason)
        return sse_event(
            CompletionResponse(id=head.request_id, created=head.created, model=head.model, choices=[choice])
        )

    num_samples = len(generation.streams)
    writers = [CompletionLogprobsWriter(render) for _ in range(num_samples)] if render is not None else None
    if echo is not None and writers is None:
        for index in range(num_samples):
            yield chunk(index, echo.text, None, None)
    finals: dict[int, RequestOutput] = {}
    async for index, output in generation.outputs():
        if echo is not None and writers is not None and output.prompt_logprobs is not None:
            entries = prompt_entries(echo.token_ids, output.prompt_logprobs)
            yield chunk(index, echo.text, writers[index].write(echo.token_ids, entries), None)
        if output.new_text or output.finished or (writers is not None and output.new_token_ids):
            logprobs = writers[index].write(output.new_token_ids, output.new_logprobs) if writers else None
            yield chunk(index, output.new_text, logprobs, finish_reason_of(output))
        if output.finished:
            finals[index] = output
    if head.include_usage:
        usage = Usage.of([finals[index] for index in sorted(finals)])
        yield sse_event(
            CompletionResponse(id=head.request_id, created=head.created, model=head.model, choices=[], usage=usage)
        )


def chat_response(
    head: ResponseHead, completions: Sequence[Completion], render: TokenRenderer | None
) -> ChatCompletionResponse:
    choices = [
        ChatChoice(
            index=index,
            message=ChatMessageOut(content=completion.text),
            logprobs=chat_logprobs(render, completion.logprobs) if render is not None else None,
            finish_reason=finish_reason_of(completion.final),
        )
        for index, completion in enumerate(completions)
    ]
    usage = Usage.of([completion.final for completion in completions])
    return ChatCompletionResponse(
        id=head.request_id, created=head.created, model=head.model, choices=choices, usage=usage
    )


async def chat_chunks(head: ResponseHead, generation: Generation, render: TokenRenderer | None) -> AsyncIterator[bytes]:
    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> bytes:
        body = ChatCompletionChunk(
            id=head.request_id, created=head.created, model=head.model, choices=choices, usage=usage
        )
        return sse_event(body)

    for index in range(len(generation.streams)):
        yield chunk([ChatChunkChoice(index=index, delta={"role": "assistant", "content": ""})])
    finals: dict[int, RequestOutput] = {}
    async for index, output in generation.outputs():
        if output.new_text or (render is not None and output.new_token_ids):
            logprobs = chat_logprobs(render, output.new_logprobs) if render is not None else None
            yield chunk([ChatChunkChoice(index=index, delta={"content": output.new_text}, logprobs=logprobs)])
        if output.finished:
            finals[index] = output
            yield chunk([ChatChunkChoice(index=index, delta={}, finish_reason=finish_reason_of(output))])
    if head.include_usage:
        yield chunk([], usage=Usage.of([finals[index] for index in sorted(finals)]))


def new_head(request_id: str, model: str, include_usage: bool) -> ResponseHead:
    return ResponseHead(request_id, model, include_usage, int(time.time()))
