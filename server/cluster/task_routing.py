"""Which task a request is for, as the ingress routes it: `?task=`, the JSON body's `model`, or an admin prompt path.

The answer keys Ray Serve's model multiplexing, so it is the task's name only (`NAME@N` routes as NAME: every version
of a task shares its replica). Malformed references route as the base model; the replica answers their 4xx.
"""

from __future__ import annotations

import json
import urllib.parse

from server.engine.errors import RequestValidationError
from server.http.task_reference import parse_task_reference

ADMIN_PROMPTS_PREFIX = "/v1/admin/prompts/"  # uploads, activations and deletions go to the replica holding the task


def routing_task(path: str, query_string: bytes, body: bytes, base_model_id: str) -> str | None:
    """The task name to route by; None: the base model (Ray's default routing by queue length)."""
    if path.startswith(ADMIN_PROMPTS_PREFIX):
        return urllib.parse.unquote(path[len(ADMIN_PROMPTS_PREFIX) :].partition("/")[0]) or None
    query = urllib.parse.parse_qs(query_string.decode("latin-1"))
    value = query["task"][0] if query.get("task") else _body_model(body)
    try:
        return parse_task_reference(value, base_model_id, "task").name
    except RequestValidationError:
        return None


def _body_model(body: bytes) -> str | None:
    if not body.lstrip().startswith(b"{"):
        return None
    try:
        document = json.loads(body)
    except ValueError:
        return None
    model = document.get("model") if isinstance(document, dict) else None
    return model if isinstance(model, str) else None
