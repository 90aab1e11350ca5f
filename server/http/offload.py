"""CPU-bound request preparation (tokenizing, chat templates) on a few threads of its own, so no request body, however
large the limits let it be, stalls the event loop that every other connection is served from."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from server.engine.errors import QueueFullError

T = TypeVar("T")


class Offloader:
    """A bounded pool: at most `max_pending` calls queued or running; one more is refused (429), so a flood of
    large prompts cannot pile up work and memory behind the pool."""

    def __init__(self, num_threads: int, max_pending: int):
        self._executor = ThreadPoolExecutor(num_threads, thread_name_prefix="promptswap-prepare")
        self._max_pending = max_pending
        self._num_pending = 0  # counted until the call ends in its thread, even if the awaiting request is gone
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args) -> T:
        with self._lock:
            if self._num_pending >= self._max_pending:
                raise QueueFullError(f"{self._max_pending} prompts are already being prepared; retry shortly")
            self._num_pending += 1
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:  # shut down: nothing will run, so nothing will give the slot back
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    def _done(self, future: Future | None) -> None:
        with self._lock:
            self._num_pending -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
