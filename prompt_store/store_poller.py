"""The thread that keeps a registry on a shared store (S3) up to date with what other replicas change."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prompt_store.registry import PromptRegistry

log = logging.getLogger("promptswap.prompt_store")


class StorePoller:
    """Calls `registry.refresh()` every `interval_s` until stopped. A refresh that fails (the store unreachable, a
    damaged object) is logged once per run of failures and tried again at the next tick; it never ends the thread.
    """

    def __init__(self, registry: PromptRegistry, interval_s: float):
        self._registry = registry
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="promptswap-store-poller", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        is_failing = False
        while not self._stopping.wait(self._interval_s):
            try:
                self._registry.refresh()
            except Exception as exc:
                if not is_failing:
                    log.warning("prompt store: refresh failed, retried every %.2f s: %s", self._interval_s, exc)
                is_failing = True
                continue
            if is_failing:
                log.info("prompt store: refresh works again")
            is_failing = False
