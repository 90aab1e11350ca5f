"""One forwarded request through an ASGI app in this process, its response streamed as it is produced.

httpx's ASGITransport would buffer the whole body (no SSE), so this drives the ASGI protocol directly. Closing the
iterator early (the caller went away) tells the app `http.disconnect`, exactly as a server would, so a generation
still running is cancelled by the app's own disconnect handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.types import ASGIApp, Message

from server.cluster.forwarded import REPLICA_HEADER, ForwardedRequest, ResponseHead

log = logging.getLogger("promptswap.cluster")

_APP_DONE: Message = {"type": "promptswap.app_done"}  # queued when the app returns, whatever it sent
DISCONNECT_GRACE_S = 5.0  # after a disconnect, how long the app may take to wind down before it is cancelled


async def call_asgi(app: ASGIApp, request: ForwardedRequest, replica_id: str) -> AsyncIterator[ResponseHead | bytes]:
    """Yields the response head once, then each non-empty body chunk."""
    messages: asyncio.Queue[Message] = asyncio.Queue()
    disconnected = asyncio.Event()
    is_body_sent = False

    async def receive() -> Message:
        nonlocal is_body_sent
        if not is_body_sent:
            is_body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def run() -> None:
        try:
            await app(_scope(request), receive, messages.put)
        finally:
            messages.put_nowait(_APP_DONE)

    app_task = asyncio.create_task(run())
    try:
        async for part in _response_parts(messages, replica_id):
            yield part
    finally:
        disconnected.set()
        await _wind_down(app_task)


async def _response_parts(messages: asyncio.Queue[Message], replica_id: str) -> AsyncIterator[ResponseHead | bytes]:
    while True:
        message = await messages.get()
        if message["type"] == "http.response.start":
            headers = [(k.lower(), v) for k, v in message.get("headers", [])]
            yield ResponseHead(message["status"], [*headers, (REPLICA_HEADER.encode(), replica_id.encode())])
        elif message["type"] == "http.response.body":
            if message.get("body"):
                yield message["body"]
            if not message.get("more_body", False):
                return
        elif message is _APP_DONE:
            raise RuntimeError("the app returned without completing its response")


async def _wind_down(app_task: asyncio.Task) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(app_task), DISCONNECT_GRACE_S)
    except TimeoutError:
        app_task.cancel()
    except Exception:  # the app failed after (or while) answering; its error handler has logged it
        log.debug("app raised after its response", exc_info=True)
    with contextlib.suppress(BaseException):
        await app_task


def _scope(request: ForwardedRequest) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "query_string": request.query_string,
        "root_path": "",
        "headers": request.headers,
        "client": request.client,
        "server": ("127.0.0.1", 80),
        "state": {},
    }
