"""The small whole-file documents a store keeps beside tasks/, each replaced atomically as one unit.

The names are a fixed set, so a document name is never a path a caller chose: no traversal, no collision with the
store's own layout, and an object store (S3) can map each to one key.
"""

from __future__ import annotations

TENANTS_DOCUMENT = "tenants.json"  # the tenant directory: tenants and the hashes of their API keys
DOCUMENT_NAMES = frozenset({TENANTS_DOCUMENT})


def check_document_name(name: str) -> None:
    """A name outside the fixed set is a bug in the caller, not a user error."""
    if name not in DOCUMENT_NAMES:
        raise ValueError(f"{name!r} is not a store document (known: {', '.join(sorted(DOCUMENT_NAMES))})")
