"""Cold prompt versions are read, checksummed, parsed and validated here, in worker threads, before their requests
reach the scheduler: a step never waits on the store, and a damaged file fails only the requests that need it.

A load puts the version in the registry's host tier, where the request's pin keeps it; the step then finds it
there. A version already in the host tier is ready at once; concurrent requests for one cold version share a load.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prompt_store.host_cache import VersionKey
    from prompt_store.registry import PromptRegistry, TaskVersionRef

NUM_WORKERS = 2  # loads are mostly file reads and hashing, which release the GIL


class PromptLoader:
    def __init__(self, registry: PromptRegistry, on_loaded: Callable[[], None]):
        self._registry = registry
        self._on_loaded = on_loaded  # wakes the step loop: a request may be ready for the scheduler now
        self._pool = ThreadPoolExecutor(NUM_WORKERS, thread_name_prefix="promptswap-prompt-load")
        self._lock = threading.Lock()
        self._loading: dict[VersionKey, Future[None]] = {}  # loads under way, one per version

    def load(self, ref: TaskVersionRef) -> Future[None] | None:
        """None if the version is in the host tier already; else a future that is done once it is, or that
        holds the error (StorageError: damaged or unreadable) that its requests fail with."""
        if self._registry.is_in_host_tier(ref):
            return None
        with self._lock:
            future = self._loading.get(ref.key)
            if future is None:
                future = self._loading[ref.key] = self._pool.submit(self._read, ref)
        future.add_done_callback(lambda _: self._on_loaded())
        return future

    def _read(self, ref: TaskVersionRef) -> None:
        try:
            self._registry.spec(ref)
        finally:
            with self._lock:
                self._loading.pop(ref.key, None)
