"""`POST /v1/classify`: each input is a prefill-only engine request of a classification task, in the same batches
as generation; the engine returns its head's logits, this route their softmax and labels."""

from __future__ import annotations

import math
import time
import uuid

from fastapi import APIRouter, Depends, Request

from server.engine.client import SubmitRequest
from server.engine.errors import RequestValidationError
from server.engine.request import Classification, SamplingParams
from server.engine.token_text import TokenText
from server.http.admission import Admission, admit_inference
from server.http.context import AppContext, get_context
from server.http.generation import Generation
from server.http.limits import check_prompt_text
from server.http.protocol_classify import (
    MAX_CLASSIFY_INPUTS,
    ClassificationData,
    ClassifiedToken,
    ClassifyRequest,
    ClassifyResponse,
    ClassifyUsage,
)
from server.http.task_reference import parse_task_reference

router = APIRouter()
PREFILL_ONLY = SamplingParams(max_new_tokens=1)  # nothing is generated; the engine ends the request after its prompt


@router.post("/v1/classify", response_model=ClassifyResponse)
async def classify(
    body: ClassifyRequest,
    request: Request,
    ctx: AppContext = Depends(get_context),
    admission: Admission = Depends(admit_inference),
) -> ClassifyResponse:
    texts = body.texts()
    if not 1 <= len(texts) <= MAX_CLASSIFY_INPUTS:
        raise RequestValidationError(f"input takes 1 to {MAX_CLASSIFY_INPUTS} texts, got {len(texts)}", param="input")
    ctx.service.require_loaded()
    for text in texts:
        check_prompt_text(ctx.config, text, "input")
    task = parse_task_reference(body.model, ctx.config.base_model_id, "model")
    encoded = [await ctx.offload.run(ctx.engine.tokenize_with_offsets, text) for text in texts]
    request_id = f"classify-{uuid.uuid4().hex}"
    submits = [
        SubmitRequest(
            tuple(ids),
            PREFILL_ONLY,
            task.name,
            body.subtask,
            f"{request_id}-{i}",
            admission.caller,
            task.version,
            classify=True,
        )
        for i, (ids, _) in enumerate(encoded)
    ]
    generation = await Generation.start(ctx, request, submits, admission.lease, shared_prompt=False)
    completions = await generation.collect()
    data = []
    for index, ((ids, offsets), completion) in enumerate(zip(encoded, completions, strict=True)):
        result = completion.final.classification
        assert result is not None  # a classification request finishes classified, or raised above
        data.append(_data(index, result, ctx.engine.token_texts(ids), offsets))
    num_tokens = sum(len(ids) for ids, _ in encoded)
    return ClassifyResponse(
        id=request_id,
        created=int(time.time()),
        model=body.model,
        data=data,
        usage=ClassifyUsage(prompt_tokens=num_tokens, total_tokens=num_tokens),
    )


def _data(index: int, result: Classification, tokens: list[TokenText], offsets: list[tuple[int, int]]):
    labels = result.labels
    if not result.per_token:
        probs = _softmax(result.logits[0])
        return ClassificationData(index=index, label=labels[_argmax(probs)], probs=probs, num_classes=len(labels))
    rows = [_softmax(logits) for logits in result.logits]
    classified = [
        ClassifiedToken(token=token.text, start=start, end=end, label=labels[_argmax(probs)], probs=probs)
        for token, (start, end), probs in zip(tokens, offsets, rows, strict=True)
    ]
    return ClassificationData(index=index, label=None, probs=None, num_classes=len(labels), tokens=classified)


def _softmax(logits: tuple[float, ...]) -> list[float]:
    peak = max(logits)
    exps = [math.exp(value - peak) for value in logits]
    total = sum(exps)
    return [value / total for value in exps]


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)
