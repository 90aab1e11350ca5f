"""A request the engine holds, from `add_request` until its last output is delivered, and its caller's handle."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

from server.engine.request import RequestOutput
from server.engine.sequence import Sequence

OutputCallback = Callable[[RequestOutput], None]


class RequestHandle:
    """A request's outputs, readable from any thread (or delivered to a callback instead)."""

    def __init__(self, request_id: str, task_ref, on_output: OutputCallback | None):
        self.request_id = request_id
        self.task: str | None = task_ref.task if task_ref else None  # the version pinned at admission
        self.task_version: int | None = task_ref.version if task_ref else None
        self.task_owner: str | None = task_ref.owner if task_ref else None  # None: shared, or the base model
        self.num_virtual_tokens: int = task_ref.num_virtual_tokens if task_ref else 0
        self._queue: queue.Queue[RequestOutput] = queue.Queue()
        self.deliver: OutputCallback = on_output or self._queue.put

    def outputs(self, timeout: float | None = None) -> Iterator[RequestOutput]:
        """Yield outputs until the finished one."""
        while True:
            out = self._queue.get(timeout=timeout)
            yield out
            if out.finished:
                return

    def result(self, timeout: float | None = None) -> tuple[list[int], str, RequestOutput]:
        """All generated token ids, the text, and the last output."""
        token_ids: list[int] = []
        text, last = "", None
        for last in self.outputs(timeout):
            token_ids += last.new_token_ids
            text += last.new_text
        assert last is not None  # outputs() yields until the finished output
        return token_ids, text, last


@dataclass(frozen=True)
class LiveRequest:
    """One row of the engine's request table: the engine-side state and where its outputs go."""

    seq: Sequence
    handle: RequestHandle
    prompt_load: Future[None] | None = None  # its prompt version's load from the store (prompt_loader.py), if cold

    @property
    def is_loading(self) -> bool:
        return self.prompt_load is not None and not self.prompt_load.done()
