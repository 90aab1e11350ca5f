"""OpenAI-compatible routes: `/v1/completions`, `/v1/chat/completions` and `/v1/models`."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from server.engine.client import SubmitRequest
from server.http.admission import Admission, admit_inference
from server.http.auth import Principal, inference_principal
from server.http.context import AppContext, get_context
from server.http.generation import Generation
from server.http.limits import check_stop
from server.http.logprobs import TokenRenderer
from server.http.openai_responses import (
    EchoedPrompt,
    chat_chunks,
    chat_response,
    completion_chunks,
    completion_response,
    new_head,
)
from server.http.prepare import chat_token_ids, prompt_token_ids, token_budget
from server.http.protocol_openai import (
    DEFAULT_COMPLETION_MAX_TOKENS,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from server.http.samples import sample_requests
from server.http.sse import EventStreamResponse
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
    body.check_supported()
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
    echo = EchoedPrompt(await _echo_text(ctx, prompt), token_ids) if body.echo else None
    generation = await Generation.start(ctx, request, sample_requests(submit, body.num_samples), admission.lease)
    head, render = new_head(request_id, model, body.include_usage), _renderer(ctx, body.num_logprobs)
    if body.stream:
        chunks = completion_chunks(head, generation, echo, render)
        return EventStreamResponse(chunks, on_close=generation.close, is_openai=True)
    return completion_response(head, await generation.collect(), echo, render)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    ctx: AppContext = Depends(get_context),
    admission: Admission = Depends(admit_inference),
):
    body.check_supported()
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
    generation = await Generation.start(ctx, request, sample_requests(submit, body.num_samples), admission.lease)
    head, render = new_head(request_id, model, body.include_usage), _renderer(ctx, body.num_logprobs)
    if body.stream:
        chunks = chat_chunks(head, generation, render)
        return EventStreamResponse(chunks, on_close=generation.close, is_openai=True)
    return chat_response(head, await generation.collect(), render)


def _task_of(ctx: AppContext, model: str) -> TaskReference:
    return parse_task_reference(model, ctx.config.base_model_id, "model")


async def _echo_text(ctx: AppContext, prompt: str | tuple[int, ...]) -> str:
    """The prompt as given, or its token ids' text."""
    return prompt if isinstance(prompt, str) else await ctx.offload.run(ctx.engine.detokenize, prompt)


def _renderer(ctx: AppContext, num_logprobs: int | None) -> TokenRenderer | None:
    """How tokens read in logprobs; None: the request asked for none."""
    return None if num_logprobs is None else ctx.engine.token_texts
