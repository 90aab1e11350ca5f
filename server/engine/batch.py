"""What the scheduler hands the model runner for one step: chunks of tokens, each of one of two kinds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.engine.prompt_cache import PromptCacheEntry
    from server.engine.sequence import Sequence


@dataclass(frozen=True)
class Chunk:
    """A run of consecutive tokens whose K/V this step writes into `own_blocks`; all the model runner reads."""

    token_ids: tuple[int, ...]  # ids >= vocab_size are prompt-table rows (id - vocab_size)
    start_position: int  # position id of the first token
    prefix_len: int  # shared prefix tokens the chunk attends before its own tokens
    prefix_blocks: tuple[int, ...]  # shared, read-only blocks of that prefix
    own_blocks: tuple[int, ...]  # blocks of the chunk's own tokens
    own_start: int  # own tokens already in the cache before this chunk
    needs_logits: bool  # the chunk ends at its sequence's last token: sample the next one
    needs_every_logit: bool = field(default=False, kw_only=True)  # prompt logprobs: every token's logits
    # A classification request's rows whose final hidden states go to its task's head, the chunk's last ones:
    # 1 where a sequence task's prompt ends, every token for a token task. Such a chunk needs no logits.
    num_hidden_rows: int = field(default=0, kw_only=True)

    @property
    def num_logit_rows(self) -> int:
        """Rows of the runner's logits this chunk gets, in packing order (its last one is sampled from)."""
        if self.needs_every_logit:
            return self.num_tokens
        return 1 if self.needs_logits else 0

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


@dataclass(frozen=True)
class SequenceChunk(Chunk):
    """The next tokens of one request, after its prompt's prefix blocks (if it has a soft prompt)."""

    seq: Sequence


@dataclass(frozen=True)
class MaterializationChunk(Chunk):
    """The next virtual tokens of a prompt-tuning prompt, whose K/V fill the entry's own prefix blocks (computed
    once per task version, then read by every request of it). Holds the entry until the step's postprocess."""

    entry: PromptCacheEntry


@dataclass
class SchedulerOutput:
    """One step's batch: the chunks in packing order (a materialization before the chunks that read it)."""

    chunks: list[SequenceChunk | MaterializationChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)  # sent back to waiting this step

    @property
    def sequence_chunks(self) -> list[SequenceChunk]:
        return [c for c in self.chunks if isinstance(c, SequenceChunk)]

    @property
    def materializations(self) -> list[MaterializationChunk]:
        return [c for c in self.chunks if isinstance(c, MaterializationChunk)]

    @property
    def seqs(self) -> list[Sequence]:
        """The requests in this step: what a failed run or sample is attributable to."""
        return [c.seq for c in self.sequence_chunks]

    @property
    def sampled_seqs(self) -> list[Sequence]:
        """Sequences that get a token this step, in the order of the runner's logits rows."""
        return [c.seq for c in self.sequence_chunks if c.needs_logits]

    def materialization_of(self, entry: PromptCacheEntry) -> MaterializationChunk | None:
        return next((c for c in self.materializations if c.entry is entry), None)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def num_seqs(self) -> int:
        return len(self.sequence_chunks)
