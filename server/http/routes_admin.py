"""Admin routes: upload, list, inspect, activate and delete task prompts. Registry calls do file I/O, so they run
in the thread pool, never on the event loop."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from prompt_store.errors import InvalidPromptError
from server.http.auth import require_admin
from server.http.context import AppContext, get_context
from server.http.protocol_admin import ActivateRequest, TaskList, TaskOut, UploadResponse

CONFIG_PART, MODEL_PART = "adapter_config", "adapter_model"


async def _require_loaded(ctx: AppContext = Depends(get_context)) -> None:
    ctx.service.require_loaded()


# Checked in this order: the token first, so an unauthenticated caller learns nothing about the server's state.
router = APIRouter(prefix="/v1/admin/prompts", dependencies=[Depends(require_admin), Depends(_require_loaded)])


# `{task:path}`: a name with "/" (or "%2F") still reaches the handler and gets the naming rule's 422, not a 404.
@router.put("/{task:path}", response_model=UploadResponse, status_code=201)
async def upload_prompt(task: str, request: Request, ctx: AppContext = Depends(get_context)) -> JSONResponse:
    started_at = time.monotonic()
    try:
        async with request.form(max_files=2, max_fields=8, max_part_size=ctx.config.max_body_bytes) as form:
            config_bytes = await _read_part(form, CONFIG_PART)
            model_bytes = await _read_part(form, MODEL_PART)
        result = await run_in_threadpool(ctx.engine.registry.upload, task, config_bytes, model_bytes)
    except Exception:
        ctx.metrics.uploads.labels("rejected").inc()
        raise
    ctx.metrics.uploads.labels("created" if result.created else "updated").inc()
    ctx.metrics.upload_seconds.observe(time.monotonic() - started_at)
    return JSONResponse(UploadResponse.of(result).model_dump(), status_code=201 if result.created else 200)


@router.get("", response_model=TaskList)
async def list_prompts(ctx: AppContext = Depends(get_context)) -> TaskList:
    tasks = await run_in_threadpool(ctx.engine.registry.list_tasks)
    return TaskList(tasks=[TaskOut.of(info) for info in tasks])


@router.get("/{task:path}", response_model=TaskOut)
async def get_prompt(task: str, ctx: AppContext = Depends(get_context)) -> TaskOut:
    return TaskOut.of(await run_in_threadpool(ctx.engine.registry.get_task, task))


@router.delete("/{task:path}", status_code=204)
async def delete_prompt(task: str, ctx: AppContext = Depends(get_context)) -> Response:
    await run_in_threadpool(ctx.engine.registry.delete, task)
    return Response(status_code=204)


@router.post("/{task}/activate", response_model=TaskOut)
async def activate_prompt(task: str, body: ActivateRequest, ctx: AppContext = Depends(get_context)) -> TaskOut:
    return TaskOut.of(await run_in_threadpool(ctx.engine.registry.activate, task, body.version))


async def _read_part(form: FormData, name: str) -> bytes:
    part = form.get(name)
    if part is None:
        raise InvalidPromptError(f"multipart part {name!r} is missing (send {CONFIG_PART!r} and {MODEL_PART!r})")
    if isinstance(part, UploadFile):
        return await part.read()
    return part.encode()
