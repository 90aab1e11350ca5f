"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from server.http.context import AppContext, get_context
from server.http.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/health")
async def health(ctx: AppContext = Depends(get_context)) -> JSONResponse:
    """200 while the engine loop is alive and stepping; 503 "dead" once it stopped, "stalled" while it has work
    and no step has ended for `health_stall_timeout_s`."""
    if not ctx.engine.is_alive():
        return JSONResponse({"status": "dead"}, status_code=503)
    if ctx.engine.is_stalled():
        return JSONResponse({"status": "stalled"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(ctx: AppContext = Depends(get_context)) -> JSONResponse:
    status = ctx.service.status()
    return JSONResponse({"status": status}, status_code=200 if status == "ready" else 503)


@router.get("/metrics")
async def metrics(ctx: AppContext = Depends(get_context)) -> Response:
    engine_stats, registry_stats = None, None
    if ctx.service.is_loaded():
        engine_stats = ctx.engine.stats()
        registry_stats = await run_in_threadpool(ctx.registry.stats)
    return Response(ctx.metrics.render(engine_stats, registry_stats), media_type=CONTENT_TYPE)
