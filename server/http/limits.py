"""The sizes one inference request may have, checked on the event loop before anything costly (tokenizing, chat
templates): each check is O(request body), which the body limit bounds. Each failure names its field."""

from __future__ import annotations

from server.config import ServerConfig
from server.engine.errors import RequestValidationError

MAX_STOP_STRINGS = 4  # the contract's


def check_prompt_text(config: ServerConfig, text: str, field: str) -> None:
    if not text:
        raise RequestValidationError("the prompt is empty", param=field)
    if len(text) > config.max_prompt_chars:
        raise RequestValidationError(
            f"{field} has {len(text)} characters; the limit is {config.max_prompt_chars}", param=field
        )


def check_stop(config: ServerConfig, stop: tuple[str, ...], field: str) -> None:
    """Matching costs the engine O(longest stop string) per token, so each one is bounded."""
    if len(stop) > MAX_STOP_STRINGS:
        raise RequestValidationError(f"{field} takes at most {MAX_STOP_STRINGS} strings, got {len(stop)}", param=field)
    for string in stop:
        if not string:
            raise RequestValidationError(f"{field} strings must not be empty", param=field)
        if len(string) > config.max_stop_chars:
            raise RequestValidationError(
                f"{field} has a string of {len(string)} characters; the limit is {config.max_stop_chars}", param=field
            )


def check_messages(config: ServerConfig, messages: list[dict], field: str = "messages") -> None:
    """`messages` as the chat template takes them ({"role", "content"} strings)."""
    if len(messages) > config.max_messages:
        raise RequestValidationError(
            f"{field} has {len(messages)} messages; the limit is {config.max_messages}", param=field
        )
    num_chars = sum(len(message["role"]) + len(message["content"]) for message in messages)
    if num_chars > config.max_prompt_chars:
        raise RequestValidationError(
            f"{field} have {num_chars} characters in all; the limit is {config.max_prompt_chars}", param=field
        )


def check_token_ids(config: ServerConfig, token_ids: list[int], vocab_size: int, field: str) -> None:
    """Ids the tokenizer can decode, no more of them than a prompt may have characters."""
    if len(token_ids) > config.max_prompt_chars:
        raise RequestValidationError(
            f"{field} has {len(token_ids)} ids; the limit is {config.max_prompt_chars}", param=field
        )
    if any(not 0 <= token_id < vocab_size for token_id in token_ids):
        raise RequestValidationError(f"{field} must be token ids in [0, {vocab_size})", param=field)
