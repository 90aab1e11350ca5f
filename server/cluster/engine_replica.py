"""One engine replica: a whole promptswap server (engine, registry on the shared store, HTTP app) in a Ray actor."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ray import serve

from prompt_store.store_lock import StoreLock
from server.cluster.asgi_call import call_asgi
from server.cluster.forwarded import ForwardedRequest, ProbeAnswer, ResponseHead
from server.config import ServerConfig
from server.engine.client import EngineClient
from server.http.app import create_app

log = logging.getLogger("promptswap.cluster")

# Ray Serve's multiplexing remembers this many tasks per replica (LRU), the host cache's size: a task the replica
# has served recently has its prompt in memory, so routing its next request here skips the load.
TASKS_HELD_PER_REPLICA = 1024


@dataclass(frozen=True)
class HeldTask:
    """What multiplexing keeps per task: only the name. The prompt itself lives in the engine's registry."""

    name: str


class EngineReplica:
    """Deployed by `cluster_app.build_cluster_app`; the ingress calls `forward` (streaming) and `probe`."""

    # Ray Serve awaits an async constructor: the app's lifespan (which starts the engine) is entered here.
    async def __init__(self, config: ServerConfig):  # type: ignore[misc]
        self.replica_id = serve.get_replica_context().replica_tag
        config = _with_own_audit_log(config, self.replica_id)
        if config.store.s3 is None:  # a directory store is one process's (cluster_app allows one replica on it)
            self._store_lock = StoreLock(config.store.directory)
        self._engine = EngineClient(config)
        self._app = create_app(config, self._engine)
        self._lifespan = self._app.router.lifespan_context(self._app)
        await self._lifespan.__aenter__()  # starts the engine; /ready says when it has loaded
        log.info("replica %s started", self.replica_id)

    @serve.multiplexed(max_num_models_per_replica=TASKS_HELD_PER_REPLICA)
    async def hold_task(self, task: str) -> HeldTask:
        return HeldTask(task)

    async def forward(self, request: ForwardedRequest) -> AsyncIterator[ResponseHead | bytes]:
        """The response to `request`: its head, then body chunks as the app sends them (SSE streams through)."""
        task = serve.get_multiplexed_model_id()
        if task:
            await self.hold_task(task)  # registers the task as held here, for the routing of its next requests
        async for part in call_asgi(self._app, request, self.replica_id):
            yield part

    async def probe(self, request: ForwardedRequest) -> ProbeAnswer:
        """A service route (/health, /ready, /metrics) answered whole; the ingress broadcasts it to every replica."""
        head, chunks = None, []
        async for part in call_asgi(self._app, request, self.replica_id):
            if isinstance(part, ResponseHead):
                head = part
            else:
                chunks.append(part)
        return ProbeAnswer(self.replica_id, head.status if head else 500, b"".join(chunks))

    async def __del__(self) -> None:
        """Ray Serve's graceful shutdown: called (and awaited) once requests in flight have finished."""
        await self._lifespan.__aexit__(None, None, None)  # stops the engine thread and the tokenizer pool

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose engine thread died is restarted."""
        if self._engine.fatal_error is not None:
            raise RuntimeError(f"replica {self.replica_id}: the engine cannot continue")


def _with_own_audit_log(config: ServerConfig, replica_id: str) -> ServerConfig:
    """Replicas may share a machine: each appends to its own audit log, beside the configured one."""
    path = config.audit_log_path
    return dataclasses.replace(config, audit_log=path.with_name(f"{path.stem}-{replica_id}{path.suffix}"))
