"""The audit log: one JSON line per admin request (prompts, tenants, keys), refused ones included.

Written by a middleware when the response starts, so every outcome is recorded, 401s and 500s too, with the actor
the auth check resolved (auth.py puts it on the request's state). Lines are appended and fsync'd off the event
loop; an admin action is rare enough for that cost, and a log that loses its last lines in a crash is no audit.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prompt_store.errors import StorageError
from server.http.middleware import ADMIN_PATH_PREFIX

if TYPE_CHECKING:
    from prompt_store.registry import PromptRegistry

log = logging.getLogger("promptswap.audit")

# (method, route template) -> the action's name in the log; an unlisted route is logged by method and template
_ACTIONS = {
    ("PUT", "/v1/admin/prompts/{task:any_task_name}"): "prompt.upload",
    ("GET", "/v1/admin/prompts"): "prompt.list",
    ("GET", "/v1/admin/prompts/{task:any_task_name}"): "prompt.get",
    ("DELETE", "/v1/admin/prompts/{task:any_task_name}"): "prompt.delete",
    ("POST", "/v1/admin/prompts/{task}/activate"): "prompt.activate",
    ("POST", "/v1/admin/tenants"): "tenant.create",
    ("GET", "/v1/admin/tenants"): "tenant.list",
    ("GET", "/v1/admin/tenants/{name}"): "tenant.get",
    ("PATCH", "/v1/admin/tenants/{name}"): "tenant.update",
    ("DELETE", "/v1/admin/tenants/{name}"): "tenant.delete",
    ("POST", "/v1/admin/tenants/{name}/keys"): "key.create",
    ("GET", "/v1/admin/tenants/{name}/keys"): "key.list",
    ("DELETE", "/v1/admin/tenants/{name}/keys/{key_id}"): "key.revoke",
}


class AuditLog:
    """This process's audit file, and, when the prompt store is shared (S3), an entry in the store too: there every
    replica's admin requests are kept together, beside the tasks and tenants they changed."""

    def __init__(self, path: Path, shared_store: Callable[[], PromptRegistry | None] | None = None):
        self.path = path
        self._shared_store = shared_store  # the loaded registry, when its store is shared; else None
        self._lock = threading.Lock()  # one line at a time, whole

    def append(self, entry: dict) -> None:
        line = (json.dumps(entry, separators=(",", ":"), ensure_ascii=True) + "\n").encode()
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:  # the action itself is done (or refused): failing the response would lie
                log.error("could not append to the audit log %s: %s; entry: %s", self.path, exc, line.decode())
        registry = self._shared_store() if self._shared_store is not None else None
        if registry is not None:
            try:
                registry.append_audit(line)
            except StorageError as exc:
                log.error("could not store an audit entry in the prompt store: %s; entry: %s", exc, line.decode())


class AuditTrail:
    """Pure ASGI middleware: an entry for every response of an admin route."""

    def __init__(self, app: ASGIApp, audit_log: AuditLog):
        self.app = app
        self.audit_log = audit_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(ADMIN_PATH_PREFIX):
            await self.app(scope, receive, send)
            return

        async def auditing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                await anyio.to_thread.run_sync(self.audit_log.append, _entry(scope, message["status"]))
            await send(message)

        await self.app(scope, receive, auditing_send)


def _entry(scope: Scope, status: int) -> dict:
    template = getattr(scope.get("route"), "path", None)
    method = scope["method"]
    action = _ACTIONS.get((method, template)) if template else None
    return {
        "time": time.time(),
        "actor": scope.get("state", {}).get("actor", "unauthenticated"),
        "action": action or f"{method} {template or scope['path'][:200]}",
        "target": {name: str(value)[:200] for name, value in scope.get("path_params", {}).items()},
        "result": status,
    }
