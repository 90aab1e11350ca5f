"""The engine's per-request state."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

import torch

from server.engine.detokenizer import IncrementalDetokenizer
from server.engine.request import FinishReason, GenerationRequest
from server.engine.stop_strings import StopStringMatcher

if TYPE_CHECKING:
    from prompt_store.registry import TaskVersionRef
    from server.engine.prompt_cache import PromptCacheEntry


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request: GenerationRequest
    task_ref: TaskVersionRef | None  # pinned in the registry from admission to finish
    detokenizer: IncrementalDetokenizer
    stop_matcher: StopStringMatcher
    generator: torch.Generator | None  # per-request RNG, so a seed gives the same output in any batch
    token_ids: list[int] = field(default_factory=list)  # prompt then generated
    num_computed: int = 0  # own tokens whose K/V are in the cache
    own_blocks: list[int] = field(default_factory=list)  # cache blocks after the shared prefix blocks
    prompt_entry: PromptCacheEntry | None = None  # PromptCacheEntry while the prefix is held on the device
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    pending_token_ids: list[int] = field(default_factory=list)  # generated, not yet reported
    arrival_time: float = field(default_factory=time.monotonic)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def generated_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def prefix_len(self) -> int:
        return self.prompt_entry.prefix_len if self.prompt_entry is not None else 0

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
