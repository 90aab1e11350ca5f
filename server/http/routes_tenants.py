"""Operator routes: tenants (weight and quotas) and their API keys. The directory writes its file durably on each
change, so every call runs in the thread pool."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from prompt_store.tenants import TenantQuota
from server.http.auth import require_operator
from server.http.context import AppContext, get_context, require_loaded
from server.http.protocol_tenants import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    TenantCreate,
    TenantList,
    TenantOut,
    TenantPatch,
)

router = APIRouter(prefix="/v1/admin/tenants", dependencies=[Depends(require_operator), Depends(require_loaded)])


@router.post("", response_model=TenantOut, status_code=201)
async def create_tenant(body: TenantCreate, ctx: AppContext = Depends(get_context)) -> JSONResponse:
    quota = TenantQuota(**body.quota_fields())
    tenant = await run_in_threadpool(ctx.registry.tenants.create_tenant, body.name, body.weight, quota)
    return JSONResponse(_tenant_out(ctx, tenant).model_dump(), status_code=201)


@router.get("", response_model=TenantList)
async def list_tenants(ctx: AppContext = Depends(get_context)) -> TenantList:
    tenants = await run_in_threadpool(ctx.registry.tenants.list_tenants)
    return TenantList(tenants=[_tenant_out(ctx, tenant) for tenant in tenants])


@router.get("/{name}", response_model=TenantOut)
async def get_tenant(name: str, ctx: AppContext = Depends(get_context)) -> TenantOut:
    return _tenant_out(ctx, await run_in_threadpool(ctx.registry.tenants.get_tenant, name))


@router.patch("/{name}", response_model=TenantOut)
async def update_tenant(name: str, body: TenantPatch, ctx: AppContext = Depends(get_context)) -> TenantOut:
    tenant = await run_in_threadpool(ctx.registry.tenants.update_tenant, name, body.changes())
    return _tenant_out(ctx, tenant)


@router.delete("/{name}", status_code=204)
async def delete_tenant(name: str, ctx: AppContext = Depends(get_context)) -> Response:
    await run_in_threadpool(ctx.registry.delete_tenant, name)  # 409 while it owns tasks
    return Response(status_code=204)


@router.post("/{name}/keys", response_model=KeyCreated, status_code=201)
async def create_key(name: str, body: KeyCreate, ctx: AppContext = Depends(get_context)) -> JSONResponse:
    new_key = await run_in_threadpool(ctx.registry.tenants.create_key, name, body.scopes, body.expires_at)
    return JSONResponse(KeyCreated.of_new(new_key).model_dump(), status_code=201, headers={"Cache-Control": "no-store"})


@router.get("/{name}/keys", response_model=KeyList)
async def list_keys(name: str, ctx: AppContext = Depends(get_context)) -> KeyList:
    keys = await run_in_threadpool(ctx.registry.tenants.list_keys, name)
    return KeyList(keys=[KeyOut.of(info) for info in keys])


@router.delete("/{name}/keys/{key_id}", status_code=204)
async def revoke_key(name: str, key_id: str, ctx: AppContext = Depends(get_context)) -> Response:
    await run_in_threadpool(ctx.registry.tenants.revoke_key, name, key_id)
    return Response(status_code=204)


def _tenant_out(ctx: AppContext, tenant) -> TenantOut:
    return TenantOut.of(tenant, ctx.registry.usage_of(tenant.name))
