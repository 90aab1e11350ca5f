"""The first thing an inference route does: who is asking, and whether its tenant's quotas let it in now.

Runs as a dependency, so a caller over its quota is refused before the body is validated or tokenized. The lease
it takes is handed to the request's Generation, which gives it back when the request ends; if the route fails
before that, it is given back here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Depends

from prompt_store.access import Caller
from server.http.auth import Principal, inference_principal
from server.http.context import AppContext, get_context
from server.http.tenant_limits import Lease


@dataclass(frozen=True)
class Admission:
    principal: Principal
    lease: Lease

    @property
    def caller(self) -> Caller:
        return self.principal.caller


async def admit_inference(
    principal: Principal = Depends(inference_principal), ctx: AppContext = Depends(get_context)
) -> AsyncIterator[Admission]:
    tenant = principal.caller.tenant
    lease = ctx.limits.acquire(tenant, ctx.metrics.label_of_tenant(tenant), principal.quota)
    try:
        yield Admission(principal, lease)
    finally:
        if not lease.handed_over:
            lease.release()
