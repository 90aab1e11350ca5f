"""What the scheduler hands the model runner for one step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.engine.prompt_cache import PromptCacheEntry
    from server.engine.sequence import Sequence


@dataclass(frozen=True)
class ScheduledChunk:
    """A run of consecutive tokens of one sequence (or of one soft prompt being materialized)."""

    seq: Sequence | None  # None: this chunk materializes `entry`'s virtual tokens into its prefix blocks
    entry: PromptCacheEntry | None  # the prompt whose prefix blocks this chunk attends (or fills)
    token_ids: tuple[int, ...]  # ids >= vocab_size are prompt-table rows (id - vocab_size)
    start_position: int  # position id of the first token
    prefix_len: int  # shared prefix tokens the chunk attends before its own tokens
    prefix_blocks: tuple[int, ...]  # shared, read-only blocks of the prefix (none for a materialization)
    own_blocks: tuple[int, ...]  # blocks of the chunk's own tokens (a materialization's are the prefix blocks)
    own_start: int  # own tokens already in the cache before this chunk
    needs_logits: bool  # the chunk ends at the sequence's last token: sample the next one

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def block_table(self) -> tuple[int, ...]:
        return self.prefix_blocks + self.own_blocks

    @property
    def own_len(self) -> int:
        """Own tokens in the cache once this chunk is written."""
        return self.own_start + self.num_tokens


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)  # sent back to waiting this step

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def num_seqs(self) -> int:
        return sum(1 for c in self.chunks if c.seq is not None)
