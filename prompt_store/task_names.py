"""The task naming rule. A valid name is also a safe single path component: no separators, no leading dot."""

from __future__ import annotations

import re
from typing import TypeGuard

from prompt_store.errors import InvalidTaskNameError

# First character alphanumeric (so never "." or ".."), then at most 63 of [A-Za-z0-9._-]: never "/" or "\\".
TASK_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def is_valid_task_name(name: object) -> TypeGuard[str]:
    # fullmatch, not match with "$": "$" also matches before a trailing newline
    return isinstance(name, str) and TASK_NAME_PATTERN.fullmatch(name) is not None


def validate_task_name(name: object, base_model_id: str) -> str:
    """Return `name` if a task may take it, else raise InvalidTaskNameError saying why."""
    if not is_valid_task_name(name):
        shown = repr(name)[:80]
        raise InvalidTaskNameError(
            f"task name {shown} is invalid: use 1 to 64 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    if name == base_model_id:
        raise InvalidTaskNameError(f"task name {name!r} is the base model's id, which means 'no soft prompt'")
    return name
