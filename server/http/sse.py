"""Server-sent events: the `data:` framing and a streaming response that always releases its request."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import cast

from pydantic import BaseModel
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from server.http.errors import INTERNAL, error_body, kind_of

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(payload: BaseModel | str) -> bytes:
    data = payload if isinstance(payload, str) else payload.model_dump_json()
    return f"data: {data}\n\n".encode()


async def ending_with_done(events: AsyncIterator[bytes], is_openai: bool) -> AsyncIterator[bytes]:
    """`events`, then `data: [DONE]`. The status line is already sent when an error happens midway, so the
    error travels as the last data event, in the route's error shape."""
    try:
        async for event in events:
            yield event
    except ClientDisconnect:
        return
    except Exception as exc:
        if kind_of(exc) is INTERNAL:
            logger.exception("event stream failed")
        yield sse_event(json.dumps(error_body(exc, is_openai)))
    yield DONE


class EventStreamResponse(StreamingResponse):
    """`text/event-stream` whose `on_close` runs however the response ends.

    The body generator's own `finally` does not run when the client is gone before the first chunk (the
    generator is never started), so the request's release hangs on the response instead.
    """

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], None], is_openai: bool):
        super().__init__(ending_with_done(events, is_openai), media_type="text/event-stream", headers=_HEADERS)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # the body is ending_with_done's async generator (starlette types it as any async iterable)
            await cast(AsyncGenerator[bytes, None], self.body_iterator).aclose()
            self._on_close()
