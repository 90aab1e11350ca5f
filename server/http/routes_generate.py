"""`POST /v1/generate?task=NAME[@N]`: TGI-shaped generation, JSON or server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Query, Request

from server.engine.client import SubmitRequest
from server.engine.request import RequestOutput, SamplingParams
from server.http.admission import Admission, admit_inference
from server.http.context import AppContext, get_context
from server.http.generation import Completion, Generation
from server.http.limits import check_stop
from server.http.logprobs import TokenRenderer, prompt_entries, tgi_prefill, tgi_tokens
from server.http.prepare import prompt_token_ids, token_budget
from server.http.protocol_tgi import (
    GenerateDetails,
    GenerateParameters,
    GenerateRequest,
    GenerateResponse,
    StreamEvent,
    StreamToken,
)
from server.http.sse import EventStreamResponse, sse_event
from server.http.task_reference import parse_task_reference

router = APIRouter()


@router.post("/v1/generate", response_model=GenerateResponse)
async def generate(
    body: GenerateRequest,
    request: Request,
    task: str | None = None,
    subtask: int = Query(default=0, ge=0, description="multitask prompt tuning: which sub-task's prompt"),
    ctx: AppContext = Depends(get_context),
    admission: Admission = Depends(admit_inference),
):
    parameters = body.parameters
    body.check_supported()
    check_stop(ctx.config, tuple(parameters.stop or ()), "parameters.stop")
    task_ref = parse_task_reference(task, ctx.config.base_model_id, "task")
    token_ids = await prompt_token_ids(ctx, body.inputs, "inputs")
    max_new_tokens = token_budget(ctx, token_ids, task_ref, admission.caller).max_new_tokens(
        parameters.max_new_tokens, SamplingParams.max_new_tokens, "parameters.max_new_tokens", "inputs"
    )
    sampling = parameters.to_sampling(max_new_tokens, body.stream)
    submit = SubmitRequest(
        prompt=token_ids,
        sampling=sampling,
        task=task_ref.name,
        subtask=subtask,
        caller=admission.caller,
        task_version=task_ref.version,
    )
    generation = await Generation.start(ctx, request, [submit], admission.lease)
    prefix = body.inputs if body.parameters.return_full_text else ""
    render = ctx.engine.token_texts
    if body.stream:
        events = _stream(generation, prefix, render, bool(parameters.top_n_tokens))
        return EventStreamResponse(events, on_close=generation.close, is_openai=False)
    [completion] = await generation.collect()
    details = _details(GenerateDetails.of(completion.final), parameters, token_ids, completion, render)
    return GenerateResponse(generated_text=prefix + completion.text, details=details)


def _details(
    details: GenerateDetails,
    parameters: GenerateParameters,
    prompt_ids: tuple[int, ...],
    completion: Completion,
    render: TokenRenderer,
) -> GenerateDetails:
    """`details` with what the parameters asked for: tokens, top_tokens, prefill."""
    if parameters.details or parameters.top_n_tokens:
        tokens, top_tokens = tgi_tokens(render, completion.logprobs)
        details.tokens = tokens if parameters.details else None
        details.top_tokens = top_tokens if parameters.top_n_tokens else None
    if parameters.decoder_input_details:
        entries = prompt_entries(prompt_ids, completion.prompt_logprobs)
        details.prefill = tgi_prefill(render, prompt_ids, entries)
    return details


async def _stream(
    generation: Generation, prefix: str, render: TokenRenderer, with_top_tokens: bool
) -> AsyncIterator[bytes]:
    texts = [prefix]
    async for _, output in generation.outputs():
        texts.append(output.new_text)
        for event in _token_events(output, texts, render, with_top_tokens):
            yield sse_event(event)


def _token_events(
    output: RequestOutput, texts: list[str], render: TokenRenderer, with_top_tokens: bool
) -> list[StreamEvent]:
    """One event per token; the last one of a finished request also carries the whole text and the details.

    An output's text goes on its last token (earlier ones get ""): the engine releases text only once it can no
    longer turn into a stop string, so it need not line up with single tokens.
    """
    rendered, top_tokens = tgi_tokens(render, output.new_logprobs)  # a stream always asks for logprobs
    released = [""] * (len(rendered) - 1) + [output.new_text]
    tokens = [
        StreamToken(id=token.id, text=text, logprob=token.logprob, special=token.special)
        for token, text in zip(rendered, released, strict=False)
    ]
    events = [
        StreamEvent(token=token, top_tokens=tops if with_top_tokens else None)
        for token, tops in zip(tokens, top_tokens, strict=True)
    ]
    if output.finished:
        closing = StreamEvent(
            token=tokens[-1] if tokens else None,
            top_tokens=events[-1].top_tokens if events else None,
            generated_text="".join(texts),
            details=GenerateDetails.of(output),
        )
        events[-1:] = [closing]
    return events
