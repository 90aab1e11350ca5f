"""`create_app`: the FastAPI application around one EngineClient."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from server.config import ServerConfig
from server.engine.client import EngineClient
from server.http import (
    routes_admin,
    routes_classify,
    routes_generate,
    routes_openai,
    routes_service,
    routes_tenants,
    routes_tokenize,
)
from server.http.audit import AuditLog, AuditTrail
from server.http.context import AppContext
from server.http.errors import install_error_handlers
from server.http.lifecycle import ServiceState
from server.http.metrics import Metrics
from server.http.middleware import BodySizeLimit, RequestCounter
from server.http.offload import Offloader
from server.http.tenant_limits import TenantLimits


def create_app(config: ServerConfig, engine: EngineClient) -> FastAPI:
    """The app answers at once; /ready turns 200 when the engine has loaded the model and the prompt store."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()  # loads in a background thread
        yield
        offload.shutdown()
        await run_in_threadpool(engine.shutdown)

    app = FastAPI(title="promptswap", lifespan=lifespan)
    metrics = Metrics(config.base_model_id)
    offload = Offloader(config.tokenizer_threads, max_pending=config.max_waiting)
    app.state.context = AppContext(
        config=config,
        engine=engine,
        service=ServiceState(engine),
        metrics=metrics,
        offload=offload,
        limits=TenantLimits(metrics),
    )
    install_error_handlers(app)
    for module in (
        routes_generate,
        routes_openai,
        routes_classify,
        routes_tokenize,
        routes_admin,
        routes_tenants,
        routes_service,
    ):
        app.include_router(module.router)
    app.add_middleware(
        BodySizeLimit, max_body_bytes=config.max_body_bytes, max_inference_body_bytes=config.max_inference_body_bytes
    )
    # With a shared (S3) store every admin request also goes into the store, beside every other replica's.
    shared_store = (lambda: engine.registry) if config.store.s3 is not None else None
    app.add_middleware(AuditTrail, audit_log=AuditLog(config.audit_log_path, shared_store))
    app.add_middleware(RequestCounter, metrics=metrics)  # added last: outermost, so it sees every response
    return app
