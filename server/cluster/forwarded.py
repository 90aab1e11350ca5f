"""What crosses from the ingress to a replica and back: one HTTP request, the response's head, a probe's answer."""

from __future__ import annotations

from dataclasses import dataclass

REPLICA_HEADER = "x-promptswap-replica"  # on every response: the replica that answered


@dataclass(frozen=True)
class ForwardedRequest:
    method: str  # "GET", "POST", ...
    path: str  # as received, e.g. "/v1/generate"
    query_string: bytes  # raw, without the "?"
    headers: list[tuple[bytes, bytes]]  # raw ASGI headers, lower-case names
    body: bytes  # the whole request body (the ingress has read it to find the task)
    client: tuple[str, int] | None  # the caller's address, as the ingress saw it


@dataclass(frozen=True)
class ResponseHead:
    status: int  # HTTP status the replica's app answered
    headers: list[tuple[bytes, bytes]]  # raw headers, the replica header included


@dataclass(frozen=True)
class ProbeAnswer:
    replica_id: str  # Ray Serve's replica tag
    status: int  # HTTP status of the probed route
    body: bytes  # the whole response body
