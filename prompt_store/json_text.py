"""Strict JSON for the files users send, and how their values are quoted in error messages.

Torch-free: the HTTP layer reaches it through labels.py.
"""

from __future__ import annotations

import json


def loads_strict(data: bytes) -> object:
    """UTF-8 JSON with NaN and Infinity refused (Python's json takes them); raises UnicodeDecodeError, ValueError
    or RecursionError."""
    return json.loads(data.decode("utf-8"), parse_constant=refuse_constant)


def refuse_constant(name: str) -> None:
    """`parse_constant` for json.loads: NaN, Infinity and -Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


def show(value: object) -> str:
    """A value for an error message: scalars as JSON, anything else by its type; at most 64 characters."""
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 64 else text[:64] + "..."
