"""Bearer-token check for the admin routes."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request

from server.http.context import AppContext, get_context
from server.http.errors import ForbiddenError, UnauthorizedError


async def require_admin(request: Request, ctx: AppContext = Depends(get_context)) -> None:
    """403 when no admin token is configured, 401 when the request's bearer token is missing or wrong."""
    expected = ctx.config.admin_token
    if expected is None:
        raise ForbiddenError("admin API disabled: start the server with --admin-token to enable it")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken must not tell how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise UnauthorizedError("missing or invalid admin token")
