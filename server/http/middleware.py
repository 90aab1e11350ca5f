"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streams and hide client disconnects)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.http.errors import BodyTooLargeError
from server.http.metrics import Metrics

ADMIN_PATH_PREFIX = "/v1/admin/"


class BodySizeLimit:
    """Refuses bodies over the limit (413) when the handler starts reading, so routing and auth come first.

    Uploads (the admin routes) may send up to `max_body_bytes`; every other route, inference above all, at most
    `max_inference_body_bytes` too, since its body is parsed and validated on the event loop. A declared
    Content-Length over the limit is refused before a byte of the body is read; a chunked body is refused as soon
    as the bytes received pass the limit.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_inference_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_inference_body_bytes = min(max_body_bytes, max_inference_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes if scope["path"].startswith(ADMIN_PATH_PREFIX) else self.max_inference_body_bytes
        declared = _content_length(scope)
        num_received = 0

        async def limited_receive() -> Message:
            nonlocal num_received
            if declared is not None and declared > limit:
                raise BodyTooLargeError(limit)
            message = await receive()
            num_received += len(message.get("body", b""))
            if num_received > limit:
                raise BodyTooLargeError(limit)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class RequestCounter:
    """Counts `requests_total{route,status}`; `route` is the matched route's template, so its values are bounded."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", "unmatched")
                self.metrics.requests.labels(route, str(message["status"])).inc()
                tenant_label = scope.get("state", {}).get("tenant_label")  # set on inference routes (auth.py)
                if tenant_label is not None:
                    self.metrics.tenant_requests.labels(tenant_label, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
