"""The cluster's one HTTP endpoint: every promptswap route, forwarded to an engine replica chosen by task.

A request for a task goes with the task as Ray Serve's multiplexed model id, so a replica that already holds it is
preferred; a base-model request goes by Ray's default routing (queue length). The replica's status, headers and
body pass through as they come (SSE included), with its id in `X-Promptswap-Replica`. /health, /ready and
/metrics are asked of every replica.

No `from __future__ import annotations` here: Ray Serve rebuilds the routes' signatures for FastAPI, which then
needs the annotations as real types to tell the Request apart from a query parameter.
"""

import json
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from server.cluster.forwarded import ForwardedRequest, ProbeAnswer, ResponseHead
from server.cluster.metrics_merge import merge_expositions
from server.cluster.task_routing import routing_task
from server.http.metrics import CONTENT_TYPE

log = logging.getLogger("promptswap.cluster")

PROBE_TIMEOUT_S = 10.0  # a replica that does not answer /health, /ready or /metrics in time counts as down
FORWARDED_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

# Ray Serve pickles the routes when the class is decorated: the helpers they call are defined above it.
ingress_app = FastAPI(title="promptswap cluster", docs_url=None, redoc_url=None, openapi_url=None)


async def _forwarded(request: Request) -> ForwardedRequest:
    client = (request.client.host, request.client.port) if request.client else None
    return ForwardedRequest(
        method=request.method,
        path=request.url.path,
        query_string=request.scope.get("query_string", b""),
        headers=list(request.scope["headers"]),
        body=await request.body(),
        client=client,
    )


async def _body(parts: DeploymentResponseGenerator) -> AsyncIterator[bytes]:
    """The body chunks as the replica yields them; the replica's stream is cancelled if the caller goes away."""
    is_complete = False
    try:
        async for chunk in parts:
            yield chunk
        is_complete = True
    finally:
        if not is_complete:
            parts.cancel()


def _service_answer(status: str, answers: list[ProbeAnswer], status_code: int) -> JSONResponse:
    replicas = {answer.replica_id: _probe_status(answer) for answer in answers}
    return JSONResponse({"status": status, "replicas": replicas}, status_code=status_code)


def _probe_status(answer: ProbeAnswer) -> str:
    try:
        return str(json.loads(answer.body)["status"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {answer.status}"


@serve.ingress(ingress_app)
class Ingress:
    def __init__(self, replicas: DeploymentHandle, base_model_id: str):
        self._replicas = replicas
        self._base_model_id = base_model_id

    @ingress_app.get("/health")
    async def health(self, request: Request) -> JSONResponse:
        """200 when every running replica is healthy."""
        answers = await self._probe_all(request)
        is_healthy = bool(answers) and all(answer.status == 200 for answer in answers)
        return _service_answer("ok" if is_healthy else "unhealthy", answers, 200 if is_healthy else 503)

    @ingress_app.get("/ready")
    async def ready(self, request: Request) -> JSONResponse:
        """200 when at least one replica takes requests (Ray routes only to running replicas)."""
        answers = await self._probe_all(request)
        is_ready = any(answer.status == 200 for answer in answers)
        return _service_answer("ready" if is_ready else "not ready", answers, 200 if is_ready else 503)

    @ingress_app.get("/metrics")
    async def metrics(self, request: Request) -> Response:
        answers = await self._probe_all(request)
        expositions = {answer.replica_id: answer.body.decode() for answer in answers if answer.status == 200}
        return Response(merge_expositions(expositions), media_type=CONTENT_TYPE)

    @ingress_app.api_route("/{path:path}", methods=FORWARDED_METHODS)
    async def forward(self, request: Request, path: str) -> Response:
        forwarded = await _forwarded(request)
        task = routing_task(forwarded.path, forwarded.query_string, forwarded.body, self._base_model_id)
        handle = self._replicas.options(method_name="forward", stream=True)
        if task is not None:
            handle = handle.options(multiplexed_model_id=task)
        parts = handle.remote(forwarded)
        assert isinstance(parts, DeploymentResponseGenerator)  # stream=True
        try:
            head = await parts.__anext__()
        except Exception as exc:  # the replica died before answering (Ray restarts it)
            log.warning("replica failed before answering %s %s: %s", forwarded.method, forwarded.path, exc)
            return JSONResponse({"error": "no replica could answer", "error_type": "unavailable"}, status_code=503)
        assert isinstance(head, ResponseHead)
        response = StreamingResponse(_body(parts), status_code=head.status)
        response.raw_headers = head.headers
        return response

    async def _probe_all(self, request: Request) -> list[ProbeAnswer]:
        probe = await _forwarded(request)
        results = await self._replicas.broadcast("probe", probe).results_async(
            timeout_s=PROBE_TIMEOUT_S, return_exceptions=True
        )
        return [result for result in results if isinstance(result, ProbeAnswer)]
