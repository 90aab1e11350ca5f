"""Admin routes: upload, list, inspect, activate and delete task prompts. Registry calls do file I/O, so they run
in the thread pool, never on the event loop.

The operator manages every task; a tenant key with `prompts:write` manages its tenant's own (the registry decides
what each caller may see and change, for every route alike)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import FormData, UploadFile

from prompt_store.errors import InvalidPromptError
from prompt_store.labels import LABELS_FIELD, with_labels
from server.http.auth import Principal, prompts_principal
from server.http.context import AppContext, get_context, require_loaded
from server.http.protocol_admin import ActivateRequest, TaskList, TaskOut, UploadResponse

CONFIG_PART, MODEL_PART = "adapter_config", "adapter_model"


class AnyTaskName(Convertor):
    """The whole rest of the path, "/" and newlines included, so every name (hostile ones too: "a/b", "..",
    "x%0A") reaches the registry's naming rule and gets its 422 instead of a bare routing 404. (Starlette's `path`
    convertor, `.*`, would stop before a trailing newline and route "x\n" as "x".)"""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("any_task_name", AnyTaskName())


# Checked in this order: the token first, so an unauthenticated caller learns nothing about the server's state.
router = APIRouter(prefix="/v1/admin/prompts", dependencies=[Depends(prompts_principal), Depends(require_loaded)])


@router.put("/{task:any_task_name}", response_model=UploadResponse, status_code=201)
async def upload_prompt(
    task: str,
    request: Request,
    ctx: AppContext = Depends(get_context),
    principal: Principal = Depends(prompts_principal),
) -> JSONResponse:
    started_at = time.monotonic()
    try:
        # three file parts at most: the two adapter files and, optionally, `labels` sent as a file
        async with request.form(max_files=3, max_fields=8, max_part_size=ctx.config.max_body_bytes) as form:
            config_bytes = await _read_part(form, CONFIG_PART)
            model_bytes = await _read_part(form, MODEL_PART)
            if form.get(LABELS_FIELD) is not None:  # a classification task's label names, merged into the config
                config_bytes = with_labels(config_bytes, await _read_part(form, LABELS_FIELD))
        result = await run_in_threadpool(ctx.registry.upload, task, config_bytes, model_bytes, principal.caller)
    except Exception:
        ctx.metrics.uploads.labels("rejected").inc()
        raise
    ctx.metrics.uploads.labels("created" if result.created else "updated").inc()
    ctx.metrics.upload_seconds.observe(time.monotonic() - started_at)
    return JSONResponse(UploadResponse.of(result).model_dump(), status_code=201 if result.created else 200)


@router.get("", response_model=TaskList)
async def list_prompts(
    ctx: AppContext = Depends(get_context), principal: Principal = Depends(prompts_principal)
) -> TaskList:
    tasks = await run_in_threadpool(ctx.registry.list_tasks, principal.caller)
    return TaskList(tasks=[TaskOut.of(info) for info in tasks])


@router.get("/{task:any_task_name}", response_model=TaskOut)
async def get_prompt(
    task: str, ctx: AppContext = Depends(get_context), principal: Principal = Depends(prompts_principal)
) -> TaskOut:
    return TaskOut.of(await run_in_threadpool(ctx.registry.get_task, task, principal.caller))


@router.delete("/{task:any_task_name}", status_code=204)
async def delete_prompt(
    task: str, ctx: AppContext = Depends(get_context), principal: Principal = Depends(prompts_principal)
) -> Response:
    await run_in_threadpool(ctx.registry.delete, task, principal.caller)
    return Response(status_code=204)


@router.post("/{task}/activate", response_model=TaskOut)
async def activate_prompt(
    task: str,
    body: ActivateRequest,
    ctx: AppContext = Depends(get_context),
    principal: Principal = Depends(prompts_principal),
) -> TaskOut:
    return TaskOut.of(await run_in_threadpool(ctx.registry.activate, task, body.version, principal.caller))


async def _read_part(form: FormData, name: str) -> bytes:
    part = form.get(name)
    if part is None:
        raise InvalidPromptError(f"multipart part {name!r} is missing (send {CONFIG_PART!r} and {MODEL_PART!r})")
    if isinstance(part, UploadFile):
        return await part.read()
    return part.encode()
