"""Who is calling: the bearer token resolved to a Principal, and the checks each kind of route makes.

Three kinds of caller: the operator (the admin token), a tenant (one of its `ps-…` API keys), and anonymous (no
token, or, while keys are not required, a token that is neither: the openai client always sends one). A `ps-` token
that is not a live key is 401 whatever the mode, so a revoked key never falls back to anonymous access.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Depends, Request

from prompt_store.access import ANONYMOUS, OPERATOR, Caller
from prompt_store.errors import UnknownTenantError
from prompt_store.tenants import KEY_PREFIX, SCOPE_GENERATE, SCOPE_PROMPTS_WRITE, SCOPES, TenantQuota
from server.http.context import AppContext, get_context
from server.http.errors import ForbiddenError, UnauthorizedError


@dataclass(frozen=True)
class Principal:
    caller: Caller  # what the registry and the engine are told
    scopes: frozenset[str]
    actor: str  # for the audit log: "operator", "key:<id>" or "anonymous"
    quota: TenantQuota | None = None  # the tenant's, as read when the key was checked; None: no limits

    @property
    def is_anonymous(self) -> bool:
        return not self.caller.is_operator and self.caller.tenant is None


ANONYMOUS_PRINCIPAL = Principal(ANONYMOUS, frozenset({SCOPE_GENERATE}), "anonymous")
OPERATOR_PRINCIPAL = Principal(OPERATOR, frozenset(SCOPES), "operator")


def identify(request: Request, ctx: AppContext) -> Principal:
    """The caller behind the request's bearer token; 401 for a `ps-` key that is not live."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return ANONYMOUS_PRINCIPAL
    admin_token = ctx.config.admin_token
    # compare_digest: the time taken must not tell how much of a guess was right.
    if admin_token is not None and hmac.compare_digest(token.encode(), admin_token.encode()):
        return OPERATOR_PRINCIPAL
    if not token.startswith(KEY_PREFIX):
        if ctx.config.require_api_key:
            raise UnauthorizedError("invalid API key")
        return ANONYMOUS_PRINCIPAL
    ctx.service.require_loaded()  # keys live in the prompt store, which is read with the model
    tenants = ctx.registry.tenants
    key = tenants.authenticate(token)
    try:
        tenant = tenants.get_tenant(key.tenant) if key is not None else None
    except UnknownTenantError:  # deleted since the key was looked up
        tenant = None
    if key is None or tenant is None:
        raise UnauthorizedError("invalid, expired or revoked API key")
    caller = Caller(tenant=tenant.name, weight=tenant.weight, key_id=key.id)
    return Principal(caller, frozenset(key.scopes), f"key:{key.id}", tenant.quota)


def _remember(request: Request, principal: Principal) -> None:
    """For the audit log, which writes its entry outside the route (audit.py)."""
    request.state.actor = principal.actor


async def inference_principal(request: Request, ctx: AppContext = Depends(get_context)) -> Principal:
    """Inference routes: open to anonymous callers unless `--require-api-key`; a key needs the `generate` scope."""
    principal = identify(request, ctx)
    # for tenant_requests_total, counted outside the route (middleware.py)
    request.state.tenant_label = ctx.metrics.label_of_tenant(principal.caller.tenant)
    if principal.is_anonymous and ctx.config.require_api_key:
        raise UnauthorizedError("this server requires an API key: send 'Authorization: Bearer ps-…'")
    if SCOPE_GENERATE not in principal.scopes:
        raise ForbiddenError(f"this API key lacks the {SCOPE_GENERATE!r} scope")
    return principal


async def prompts_principal(request: Request, ctx: AppContext = Depends(get_context)) -> Principal:
    """The admin prompt routes: the operator, or a tenant key with `prompts:write` (for its own tasks)."""
    principal = _admin_caller(request, ctx)
    if SCOPE_PROMPTS_WRITE not in principal.scopes:
        raise ForbiddenError(f"this API key lacks the {SCOPE_PROMPTS_WRITE!r} scope")
    return principal


async def require_operator(request: Request, ctx: AppContext = Depends(get_context)) -> Principal:
    """Operator-only routes (tenants and keys): a tenant key is 403."""
    principal = _admin_caller(request, ctx)
    if not principal.caller.is_operator:
        raise ForbiddenError("only the operator (the admin token) may use this route")
    return principal


def _admin_caller(request: Request, ctx: AppContext) -> Principal:
    """403 when no admin token is configured, 401 without a valid admin token or API key."""
    if ctx.config.admin_token is None:
        raise ForbiddenError("admin API disabled: start the server with --admin-token to enable it")
    principal = identify(request, ctx)
    if principal.is_anonymous:  # the audit log's actor stays "unauthenticated"
        raise UnauthorizedError("missing or invalid admin token or API key")
    _remember(request, principal)
    return principal
