"""Errors the engine raises to its callers; server/http/errors.py maps each to a status code."""


class EngineError(Exception):
    """Base class; the message is safe to show to the client."""


class RequestValidationError(EngineError):
    """The request cannot be served as asked (too long for the model, bad parameters). HTTP 400/422."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param  # the request field at fault (OpenAI's `error.param`), when one is


class QueueFullError(EngineError):
    """The waiting queue is at its bound. HTTP 429 with Retry-After."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineNotReadyError(EngineError):
    """The engine is loading or draining and admits nothing. HTTP 503."""


class RequestFailedError(EngineError):
    """The engine admitted the request but could not serve it: its step failed, or its prompt file is damaged.
    HTTP 500; the message says which, and no other request was affected."""
