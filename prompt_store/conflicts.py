"""A change that lost a conditional write to another process sharing the store: read the store again, redo it.

The change is redone from scratch against what was re-read (its checks included), so it keeps its meaning: an
upload is numbered above everything the store has used, an activation of a version since pruned is refused.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from prompt_store.errors import StorageConflictError

CONFLICT_ATTEMPTS = 8  # then the conflict is the caller's (HTTP 500): the store keeps changing under this process
BACKOFF_S = 0.005  # the first wait's upper bound; it doubles per attempt (jittered), up to MAX_BACKOFF_S
MAX_BACKOFF_S = 0.2
_T = TypeVar("_T")


def retry_on_conflict(change: Callable[[], _T], reread: Callable[[], object]) -> _T:
    """`change()`; after a StorageConflictError, a short jittered wait, `reread()`, and `change()` again."""
    attempt = 1
    while True:
        try:
            return change()
        except StorageConflictError:
            if attempt == CONFLICT_ATTEMPTS:
                raise
        time.sleep(random.uniform(0, min(MAX_BACKOFF_S, BACKOFF_S * 2**attempt)))
        reread()
        attempt += 1
