"""OpenAI-compatible routes: `/v1/completions`, `/v1/chat/completions` and `/v1/models`."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from server.engine.client import SubmitRequest
from server.http.admission import Admission, admit_inference
from server.http.auth import Principal, inference_principal
from server.http.context import AppContext, get_context
from server.http.generation import Generation
from server.http.limits import check_stop
from server.http.prepare import chat_token_ids, prompt_token_ids, token_budget
from server.http.protocol_openai import (
    DEFAULT_COMPLETION_MAX_TOKENS,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageOut,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    Usage,
    finish_reason_of,
)
from server.http.sse import EventStreamResponse, sse_event
from server.http.task_reference import TaskReference, parse_task_reference

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
async def list_models(
    ctx: AppContext = Depends(get_context), principal: Principal = Depends(inference_principal)
) -> ModelList:
    ctx.service.require_loaded()
    base_id = ctx.config.base_model_id
    tasks = await run_in_threadpool(ctx.registry.list_tasks, principal.caller)
    cards = [ModelCard(id=base_id, root=base_id, parent=None)]
    cards += [
        ModelCard(id=task.task, root=task.task, parent=base_id, owned_by=task.owner or "promptswap") for task in tasks
    ]
    return ModelList(data=cards)


@router.post("/v1/completions", response_model=CompletionResponse)
async def completions(
    body: CompletionRequest,
    request: Request,
    ctx: AppContext = Depends(get_context),
    admission: Admission = Depends(admit_inference),
):
    prompt = body.prompt_value()
    check_stop(ctx.config, body.stop_strings, "stop")
    token_ids = await prompt_token_ids(ctx, prompt, "prompt")
    request_id, model = f"cmpl-{uuid.uuid4().hex}", body.model or ctx.config.base_model_id
    task = _task_of(ctx, model)
    max_tokens = token_budget(ctx, token_ids, task, admission.caller).max_new_tokens(
        body.max_tokens, DEFAULT_COMPLETION_MAX_TOKENS, "max_tokens", "prompt"
    )
    submit = SubmitRequest(
        token_ids, body.to_sampling(max_tokens), task.name, body.subtask, request_id, admission.caller, task.version
    )
    generation = Generation.start(ctx, request, submit, admission.lease)
    echo = prompt if body.echo and isinstance(prompt, str) else ""
    if body.stream:
        chunks = _completion_chunks(generation, request_id, model, echo, body.include_usage)
        return EventStreamResponse(chunks, on_close=generation.close, is_openai=True)
    completion = await generation.collect()
    choice = CompletionChoice(text=echo + completion.text, finish_reason=finish_reason_of(completion.final))
    return CompletionResponse(id=request_id, model=model, choices=[choice], usage=Usage.of(completion.final))


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    ctx: AppContext = Depends(get_context),
    admission: Admission = Depends(admit_inference),
):
    check_stop(ctx.config, body.stop_strings, "stop")
    token_ids = await chat_token_ids(ctx, [message.to_template() for message in body.messages])
    request_id, model = f"chatcmpl-{uuid.uuid4().hex}", body.model or ctx.config.base_model_id
    task = _task_of(ctx, model)
    # OpenAI's chat default is "until the context is full": as many tokens as fit, up to the server's limit.
    max_tokens = token_budget(ctx, token_ids, task, admission.caller).max_new_tokens(
        body.requested_max_tokens, ctx.config.max_new_tokens_limit, body.max_tokens_field, "messages"
    )
    submit = SubmitRequest(
        token_ids, body.to_sampling(max_tokens), task.name, body.subtask, request_id, admission.caller, task.version
    )
    generation = Generation.start(ctx, request, submit, admission.lease)
    if body.stream:
        chunks = _chat_chunks(generation, request_id, model, body.include_usage)
        return EventStreamResponse(chunks, on_close=generation.close, is_openai=True)
    completion = await generation.collect()
    choice = ChatChoice(
        message=ChatMessageOut(content=completion.text), finish_reason=finish_reason_of(completion.final)
    )
    return ChatCompletionResponse(id=request_id, model=model, choices=[choice], usage=Usage.of(completion.final))


def _task_of(ctx: AppContext, model: str) -> TaskReference:
    return parse_task_reference(model, ctx.config.base_model_id, "model")


async def _completion_chunks(
    generation: Generation, request_id: str, model: str, echo: str, include_usage: bool
) -> AsyncIterator[bytes]:
    created = int(time.time())

    def chunk(text: str, finish_reason: str | None) -> bytes:
        choice = CompletionChoice(text=text, finish_reason=finish_reason)
        return sse_event(CompletionResponse(id=request_id, created=created, model=model, choices=[choice]))

    if echo:
        yield chunk(echo, None)
    async for output in generation.outputs():
        if output.new_text or output.finished:
            yield chunk(output.new_text, finish_reason_of(output))
    if include_usage:
        usage = Usage.of(output)
        yield sse_event(CompletionResponse(id=request_id, created=created, model=model, choices=[], usage=usage))


async def _chat_chunks(
    generation: Generation, request_id: str, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    created = int(time.time())

    def chunk(delta: dict, finish_reason: str | None = None, usage: Usage | None = None) -> bytes:
        choices = [] if usage else [ChatChunkChoice(delta=delta, finish_reason=finish_reason)]
        return sse_event(ChatCompletionChunk(id=request_id, created=created, model=model, choices=choices, usage=usage))

    yield chunk({"role": "assistant", "content": ""})
    async for output in generation.outputs():
        if output.new_text:
            yield chunk({"content": output.new_text})
    yield chunk({}, finish_reason_of(output))
    if include_usage:
        yield chunk({}, usage=Usage.of(output))
