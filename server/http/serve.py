"""Running the app under uvicorn, with a SIGTERM that drains instead of dropping requests."""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType

import uvicorn

from server.config import ServerConfig
from server.engine.client import EngineClient
from server.http.app import create_app
from server.http.lifecycle import ServiceState

logger = logging.getLogger(__name__)

# After the drain, how long uvicorn waits for connections still open before cancelling their handlers.
GRACEFUL_SHUTDOWN_S = 5


class DrainingServer(uvicorn.Server):
    """uvicorn whose first SIGTERM/SIGINT drains: the listener stays open and answers 503 to new generation
    requests and /ready while requests in flight finish (up to `drain_timeout_s`); then uvicorn shuts down as
    usual. A second signal exits at once.

    uvicorn's own handler re-raises a captured signal after shutdown, which would make the exit status 143; this
    one does not, so a drained shutdown exits 0.
    """

    def __init__(self, config: uvicorn.Config, service: ServiceState, drain_timeout_s: float):
        super().__init__(config)
        self._service = service
        self._drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None
        self._is_drain_requested = False
        self.exit_code = 0

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._is_drain_requested or self._loop is None:
            self.should_exit = self.force_exit = True
            return
        self._is_drain_requested = True
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        await self._service.drain(self._drain_timeout_s)
        self.should_exit = True

    def exit_on_fatal(self) -> None:
        """From the engine thread, once it cannot continue: shut down now (nothing in flight can finish without
        it) and exit 1, so that a supervisor restarts the process."""
        self.exit_code = 1
        self.should_exit = True


def run_server(config: ServerConfig, engine: EngineClient) -> int:
    """Serve until a signal (exit status 0 once drained) or until the engine cannot continue (1)."""
    app = create_app(config, engine)
    uvicorn_config = uvicorn.Config(
        app, host=config.host, port=config.port, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, log_level="info"
    )
    server = DrainingServer(uvicorn_config, app.state.context.service, config.drain_timeout_s)
    engine.on_fatal = server.exit_on_fatal
    server.run()
    return server.exit_code
