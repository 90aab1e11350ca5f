"""Readiness and draining: which generation requests the HTTP layer admits, and how many are in flight."""

from __future__ import annotations

import asyncio
import logging

from server.engine.client import EngineClient
from server.http.errors import ServiceUnavailableError

logger = logging.getLogger(__name__)

_NOT_READY_MESSAGES = {
    "loading": "the model is loading",
    "draining": "the server is shutting down",
    "failed": "the engine has stopped: see the server log",
}


class ServiceState:
    """Admission gate of the HTTP layer. Used from the event loop thread only.

    Invariant: `num_in_flight` counts generation requests admitted and not yet released; a request is admitted
    only while the engine is ready and the service is not draining, so once `drain()` starts the count only falls.
    """

    def __init__(self, engine: EngineClient):
        self._engine = engine
        self._was_ready_at_drain = False
        self.num_in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def is_draining(self) -> bool:
        return self._engine.is_draining  # the engine client owns the flag; `drain()` sets it there

    def status(self) -> str:
        """ready | loading | draining | failed (the engine thread died, at start-up or later)."""
        if self.is_draining:
            return "draining"
        if self._engine.is_ready():
            return "ready"
        return "loading" if self._engine.is_alive() else "failed"

    def is_ready(self) -> bool:
        return self.status() == "ready"

    def is_loaded(self) -> bool:
        """The model and registry are usable (the engine reports not-ready while draining, yet both still are)."""
        return self._was_ready_at_drain if self.is_draining else self._engine.is_ready()

    def require_loaded(self) -> None:
        """For routes that need the model or the registry but admit no generation (models, admin)."""
        if not self.is_loaded():
            raise ServiceUnavailableError(_NOT_READY_MESSAGES[self.status()])

    def admit(self) -> None:
        """Count one generation request in flight, or refuse it (503) unless ready."""
        status = self.status()
        if status != "ready":
            raise ServiceUnavailableError(_NOT_READY_MESSAGES[status])
        self.num_in_flight += 1
        self._idle.clear()

    def release(self) -> None:
        self.num_in_flight -= 1
        if self.num_in_flight == 0:
            self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Stop admitting and wait for requests in flight; False if some were still running at the timeout."""
        self._was_ready_at_drain = self._engine.is_ready()
        self._engine.begin_drain()
        logger.info("draining: %d request(s) in flight, waiting up to %.0f s", self.num_in_flight, timeout_s)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            logger.warning("drain timeout: %d request(s) still in flight are aborted", self.num_in_flight)
            return False
        return True
