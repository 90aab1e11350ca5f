"""`POST /v1/generate?task=NAME[@N]`: TGI-shaped generation, JSON or server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Query, Request

from server.engine.client import SubmitRequest
from server.engine.request import RequestOutput, SamplingParams
from server.http.admission import Admission, admit_inference
from server.http.context import AppContext, get_context
from server.http.generation import Generation
from server.http.limits import check_stop
from server.http.prepare import prompt_token_ids, token_budget
from server.http.protocol_tgi import GenerateDetails, GenerateRequest, GenerateResponse, StreamEvent, StreamToken
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
    check_stop(ctx.config, tuple(parameters.stop or ()), "parameters.stop")
    task_ref = parse_task_reference(task, ctx.config.base_model_id, "task")
    token_ids = await prompt_token_ids(ctx, body.inputs, "inputs")
    max_new_tokens = token_budget(ctx, token_ids, task_ref, admission.caller).max_new_tokens(
        parameters.max_new_tokens, SamplingParams.max_new_tokens, "parameters.max_new_tokens", "inputs"
    )
    sampling = parameters.to_sampling(max_new_tokens)
    submit = SubmitRequest(
        prompt=token_ids,
        sampling=sampling,
        task=task_ref.name,
        subtask=subtask,
        caller=admission.caller,
        task_version=task_ref.version,
    )
    generation = Generation.start(ctx, request, submit, admission.lease)
    prefix = body.inputs if body.parameters.return_full_text else ""
    if body.stream:
        return EventStreamResponse(_stream(generation, prefix), on_close=generation.close, is_openai=False)
    completion = await generation.collect()
    return GenerateResponse(generated_text=prefix + completion.text, details=GenerateDetails.of(completion.final))


async def _stream(generation: Generation, prefix: str) -> AsyncIterator[bytes]:
    texts = [prefix]
    async for output in generation.outputs():
        texts.append(output.new_text)
        for event in _token_events(output, texts):
            yield sse_event(event)


def _token_events(output: RequestOutput, texts: list[str]) -> list[StreamEvent]:
    """One event per token; the last one of a finished request also carries the whole text and the details.

    An output's text goes on its last token (earlier ones get ""): the engine releases text only once it can no
    longer turn into a stop string, so it need not line up with single tokens.
    """
    token_ids = output.new_token_ids
    tokens = [StreamToken(id=token_id, text="") for token_id in token_ids[:-1]]
    if token_ids:
        tokens.append(StreamToken(id=token_ids[-1], text=output.new_text))
    events = [StreamEvent(token=token) for token in tokens]
    if output.finished:
        closing = StreamEvent(
            token=tokens[-1] if tokens else None, generated_text="".join(texts), details=GenerateDetails.of(output)
        )
        events[-1:] = [closing]
    return events
