"""What every route handler needs, built once by `create_app` and reached through the request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Depends, Request

from server.config import ServerConfig
from server.engine.client import EngineClient
from server.http.lifecycle import ServiceState
from server.http.metrics import Metrics
from server.http.offload import Offloader
from server.http.tenant_limits import TenantLimits

if TYPE_CHECKING:
    from prompt_store.registry import PromptRegistry


@dataclass(frozen=True)
class AppContext:
    config: ServerConfig
    engine: EngineClient
    service: ServiceState  # readiness, draining, requests in flight
    metrics: Metrics
    offload: Offloader  # tokenizing and chat templates, off the event loop
    limits: TenantLimits  # tenants' max_concurrent and tokens_per_minute

    @property
    def registry(self) -> PromptRegistry:
        """The engine's prompt registry, for handlers that run once the model is loaded (ServiceState)."""
        registry = self.engine.registry
        assert registry is not None  # the routes check readiness first
        return registry


async def get_context(request: Request) -> AppContext:
    # async: FastAPI runs plain-function dependencies in its thread pool, a hop no request needs.
    return request.app.state.context


async def require_loaded(ctx: AppContext = Depends(get_context)) -> None:
    """A route dependency: 503 until the model and the prompt store are loaded (admin and tenant routes)."""
    ctx.service.require_loaded()
