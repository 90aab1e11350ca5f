"""`NAME@N` as inference routes take a task (`?task=`, `model`): the task name and the version it pins.

Task names cannot hold "@" (prompt_store/task_names.py), so the first "@" ends the name. The base model has no
versions: `BASE@N` is refused like any other malformed reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.engine.errors import RequestValidationError

_VERSION = re.compile(r"[1-9][0-9]{0,17}")  # a positive decimal integer, no sign, no leading zeros; fits an int64


@dataclass(frozen=True)
class TaskReference:
    name: str | None  # None: the base model, no soft prompt
    version: int | None = None  # NAME@N: this kept version; None: the active one


BASE_MODEL = TaskReference(None)


def parse_task_reference(value: str | None, base_model_id: str, field: str) -> TaskReference:
    """`NAME`, `NAME@N`, the base model's id, or None / "" (the base model); a 4xx naming `field` otherwise."""
    if not value or value == base_model_id:
        return BASE_MODEL
    name, has_version, version = value.partition("@")
    if not has_version:
        return TaskReference(name)
    if not name:
        raise RequestValidationError(f"{field} {value!r} names no task before '@'", param=field)
    if name == base_model_id:
        raise RequestValidationError(f"{field}: the base model {name!r} has no versions to pin", param=field)
    if not _VERSION.fullmatch(version):
        raise RequestValidationError(
            f"{field} {value!r}: the version after '@' must be a positive integer, as in {name}@1", param=field
        )
    return TaskReference(name, int(version))
