"""The one place where an exception becomes a status code and an error body.

Two body shapes: TGI's `{"error", "error_type"}` on /v1/generate, admin and service routes, and OpenAI's
`{"error": {"message", "type", "param", "code"}}` on the OpenAI-compatible routes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError as SchemaValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from prompt_store.errors import (
    ConflictError,
    InvalidPromptError,
    InvalidSubtaskError,
    InvalidTaskNameError,
    InvalidTenantError,
    PromptTooLargeError,
    QuotaExceededError,
    StorageError,
    UnknownTaskError,
    UnknownTenantError,
)
from server.engine.errors import EngineNotReadyError, QueueFullError, RequestFailedError, RequestValidationError

OPENAI_PATH_PREFIXES = ("/v1/completions", "/v1/chat/", "/v1/models", "/v1/classify", "/tokenize", "/detokenize")


class UnauthorizedError(Exception):
    """Missing or wrong admin bearer token (401)."""


class ForbiddenError(Exception):
    """The caller may not use this route at all, e.g. the admin API is disabled (403)."""


class RateLimitedError(Exception):
    """A tenant is over its `max_concurrent` or `tokens_per_minute` quota (429 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ServiceUnavailableError(Exception):
    """The HTTP layer refuses or gives up on a request: loading, draining, or past its deadline (503)."""


class BodyTooLargeError(HTTPException):
    """The body is over `max_body_bytes`. An HTTPException so FastAPI's body reader lets it through unchanged."""

    def __init__(self, limit: int):
        super().__init__(status_code=413, detail=f"request body exceeds the limit of {limit} bytes")


@dataclass(frozen=True)
class ErrorKind:
    status: int  # on TGI-shaped routes
    openai_status: int  # on OpenAI-compatible routes
    error_type: str  # TGI `error_type`
    openai_type: str  # OpenAI `error.type`


VALIDATION = ErrorKind(422, 400, "validation", "invalid_request_error")
NOT_FOUND = ErrorKind(404, 404, "not_found", "not_found_error")
TOO_LARGE = ErrorKind(413, 413, "too_large", "invalid_request_error")
OVERLOADED = ErrorKind(429, 429, "overloaded", "rate_limit_error")
RATE_LIMITED = ErrorKind(429, 429, "rate_limited", "rate_limit_error")
CONFLICT = ErrorKind(409, 409, "conflict", "conflict_error")
UNAVAILABLE = ErrorKind(503, 503, "unavailable", "service_unavailable_error")
UNAUTHORIZED = ErrorKind(401, 401, "unauthorized", "authentication_error")
FORBIDDEN = ErrorKind(403, 403, "forbidden", "permission_error")
CLIENT_CLOSED = ErrorKind(499, 499, "unavailable", "client_closed_request")  # nginx's code; nobody reads the body
STORAGE = ErrorKind(500, 500, "internal", "server_error")  # the store could not be written; the message says why
# TGI's type for a request that failed while generating; only that request failed, and the message says why
GENERATION = ErrorKind(500, 500, "generation", "server_error")
INTERNAL = ErrorKind(500, 500, "internal", "internal_server_error")  # a bug: the message stays in the server log

# Looked up along the exception's MRO, so a subclass listed here wins over its base (PromptTooLargeError).
_KINDS: dict[type[BaseException], ErrorKind] = {
    RequestValidationError: VALIDATION,
    SchemaValidationError: VALIDATION,
    InvalidPromptError: VALIDATION,
    InvalidTaskNameError: VALIDATION,
    PromptTooLargeError: TOO_LARGE,
    UnknownTaskError: NOT_FOUND,
    UnknownTenantError: NOT_FOUND,
    InvalidTenantError: VALIDATION,
    ConflictError: CONFLICT,
    QuotaExceededError: FORBIDDEN,
    RateLimitedError: RATE_LIMITED,
    QueueFullError: OVERLOADED,
    StorageError: STORAGE,
    RequestFailedError: GENERATION,
    EngineNotReadyError: UNAVAILABLE,
    ServiceUnavailableError: UNAVAILABLE,
    UnauthorizedError: UNAUTHORIZED,
    ForbiddenError: FORBIDDEN,
    ClientDisconnect: CLIENT_CLOSED,
}
_KINDS_BY_STATUS = {
    kind.status: kind for kind in (NOT_FOUND, TOO_LARGE, OVERLOADED, UNAVAILABLE, UNAUTHORIZED, FORBIDDEN, CONFLICT)
}


def kind_of(exc: BaseException) -> ErrorKind:
    if isinstance(exc, HTTPException):
        return _KINDS_BY_STATUS.get(exc.status_code, VALIDATION if exc.status_code < 500 else INTERNAL)
    for cls in type(exc).__mro__:
        if cls in _KINDS:
            return _KINDS[cls]
    return INTERNAL


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PATH_PREFIXES)


def message_of(exc: BaseException) -> str:
    if isinstance(exc, SchemaValidationError):
        return "; ".join(dict.fromkeys(_describe_schema_error(error) for error in exc.errors()))
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    if kind_of(exc) is INTERNAL:
        return "internal server error"
    return str(exc.args[0]) if exc.args else type(exc).__name__


def _describe_schema_error(error: dict) -> str:
    location = _field_path(error.get("loc", ()))
    return f"{location}: {error['msg']}" if location else error["msg"]


def _field_path(loc: tuple) -> str:
    """ "messages.0.content" from pydantic's location: without "body", and without the tags it gives each member of
    a union ("str", "list[int]", "function-after[...]", a model's class name), which name no field."""
    return ".".join(str(part) for part in loc if part != "body" and not _is_union_tag(part))


def _is_union_tag(part: str | int) -> bool:
    return isinstance(part, str) and (not part.isidentifier() or part[:1].isupper() or part in _TYPE_NAMES)


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none"}


def _openai_param(exc: BaseException) -> str | None:
    if isinstance(exc, UnknownTaskError):
        return "model"
    if isinstance(exc, RequestValidationError):
        return exc.param
    if isinstance(exc, InvalidSubtaskError):
        return "subtask"
    if isinstance(exc, SchemaValidationError) and exc.errors():
        return _field_path(exc.errors()[0].get("loc", ())) or None
    return None


def _openai_code(exc: BaseException, kind: ErrorKind) -> str | None:
    if isinstance(exc, UnknownTaskError):
        return "model_not_found"
    codes = {OVERLOADED: "rate_limit_exceeded", RATE_LIMITED: "rate_limit_exceeded", TOO_LARGE: "request_too_large"}
    return codes.get(kind)


def error_body(exc: BaseException, is_openai: bool) -> dict:
    kind = kind_of(exc)
    if is_openai:
        message, param, code = message_of(exc), _openai_param(exc), _openai_code(exc, kind)
        return {"error": {"message": message, "type": kind.openai_type, "param": param, "code": code}}
    return {"error": message_of(exc), "error_type": kind.error_type}


def error_headers(exc: BaseException) -> dict[str, str]:
    kind = kind_of(exc)
    if isinstance(exc, (QueueFullError, RateLimitedError)):
        # whole seconds, rounded up: a client that waits that long is not refused for the same reason
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    if kind is OVERLOADED:
        return {"Retry-After": "1"}
    if kind is UNAUTHORIZED:
        return {"WWW-Authenticate": "Bearer"}
    return {}


def error_response(path: str, exc: BaseException) -> JSONResponse:
    kind = kind_of(exc)
    is_openai = is_openai_path(path)
    status = kind.openai_status if is_openai else kind.status
    if isinstance(exc, HTTPException) and exc.status_code not in (400, 422):
        status = exc.status_code  # routing errors keep their own code (404 no route, 405 method)
    return JSONResponse(error_body(exc, is_openai), status_code=status, headers=error_headers(exc))


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises unhandled exceptions after this response, so the server log still gets the traceback.
    return error_response(request.url.path, exc)


def install_error_handlers(app: FastAPI) -> None:
    for exc_class in (*_KINDS, HTTPException):
        app.add_exception_handler(exc_class, _handle)
    app.add_exception_handler(Exception, _handle)
