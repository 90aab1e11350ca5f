"""The engine's per-request state, and the transitions a request makes by itself: taking a sampled token,
finishing, and turning what is new into the RequestOutput its caller receives.

What the scheduler assigns (status between waiting and running, blocks, the prompt entry, `num_computed`,
`num_preemptions`, `num_blocked_steps`, `first_scheduled_time`) is changed only in scheduler.py; `block_keys` only
in prefix_cache.py, which extends it as the sequence's full blocks are keyed.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from prompt_store.spec import TaskKind
from server.engine.detokenizer import IncrementalDetokenizer
from server.engine.request import (
    Classification,
    FinishReason,
    GenerationRequest,
    RequestOutput,
    RequestTimings,
    TokenLogprob,
)
from server.engine.stop_strings import StopStringMatcher

if TYPE_CHECKING:
    from prompt_store.registry import TaskVersionRef
    from server.engine.prompt_cache import PromptCacheEntry
    from server.engine.structured_output import GrammarMatcher


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
    eos_token_ids: frozenset[int] = frozenset()  # generation ends on one of these, unless sampling.ignore_eos
    max_model_len: int | None = None  # virtual + own tokens at which generation ends; None: no cap
    num_computed: int = 0  # own tokens whose K/V are in the cache
    own_blocks: list[int] = field(default_factory=list)  # cache blocks after the shared prefix blocks
    block_keys: list[bytes] = field(default_factory=list)  # its full blocks' prefix-cache keys (prefix_cache.py)
    prompt_entry: PromptCacheEntry | None = None  # PromptCacheEntry while the prefix is held on the device
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    num_blocked_steps: int = 0  # steps its admission found no room (the fair policy's starvation guard)
    pending_token_ids: list[int] = field(default_factory=list)  # generated, not yet reported
    arrival_time: float = field(default_factory=time.monotonic)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    error: str | None = None  # why it failed, with FinishReason.ERROR
    group_leader: Sequence | None = None  # the first of its sample group: its prompt blocks are this one's cache
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)  # of pending_token_ids, when asked
    # With sampling.prompt_logprobs: filled as its prompt's chunks run, led by None (the first token's).
    prompt_logprobs: list[TokenLogprob | None] | None = None
    is_prompt_logprobs_reported: bool = False
    grammar: GrammarMatcher | None = None  # with a response_format: advanced by every generated token
    # A classification request's head logits: its last token's row (sequence task) or one row per prompt token
    # (token task), filled as its prompt's chunks run.
    classification_rows: list[tuple[float, ...]] = field(default_factory=list)
    classification_labels: tuple[str, ...] = ()  # its head's, set with the rows

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def scheduling_class(self) -> str:
        return self.request.caller.scheduling_class

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def prefix_len(self) -> int:
        return self.prompt_entry.prefix_len if self.prompt_entry is not None else 0

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def needs_prompt_logits(self) -> bool:
        """Its prompt's chunks must return every row's logits (and may not start from cached blocks)."""
        collected = self.prompt_logprobs
        return collected is not None and len(collected) < self.num_prompt_tokens

    @property
    def is_classification(self) -> bool:
        return self.request.classify

    @property
    def classifies_tokens(self) -> bool:
        """A token task: every prompt token's hidden state goes to the head (so it may not start from cached
        blocks, which come without hidden states)."""
        ref = self.task_ref
        return self.is_classification and ref is not None and ref.task_kind is TaskKind.CLASSIFY_TOKENS

    @property
    def needs_every_row(self) -> bool:
        """Its prompt's chunks return a row for every token (logits or hidden states)."""
        return self.needs_prompt_logits or self.classifies_tokens

    def num_hidden_rows(self, start: int, num_tokens: int) -> int:
        """Of a chunk of its own tokens [start, start + num_tokens): how many last rows go to its head."""
        if not self.is_classification:
            return 0
        if self.classifies_tokens:
            return num_tokens
        return 1 if start + num_tokens == len(self.token_ids) else 0

    def add_classification(self, first_token: int, rows: list[tuple[float, ...]], labels: tuple[str, ...]) -> None:
        """Head logits for own tokens `first_token`, ...; those already held are kept (a preempted sequence
        recomputes its prompt). A sequence task's one row replaces any earlier one."""
        self.classification_labels = labels
        if not self.classifies_tokens:
            self.classification_rows = rows
            return
        skip = len(self.classification_rows) - first_token
        if skip >= 0:
            self.classification_rows += rows[skip:]

    @property
    def banned_ids(self) -> tuple[int, ...]:
        """Tokens it may not take next: before `min_tokens`, those that would end it."""
        sampling = self.request.sampling
        if self.num_generated >= sampling.min_tokens:
            return ()
        return (*self.eos_token_ids, *sampling.stop_token_ids)

    def add_prompt_logprobs(self, first_token: int, logprobs: list[TokenLogprob]) -> None:
        """Logprobs of prompt tokens `first_token`, `first_token + 1`, ...; those already held are kept (a
        preempted sequence recomputes its prompt)."""
        collected = self.prompt_logprobs
        assert collected is not None  # only sequences that asked get prompt logits
        skip = len(collected) - first_token
        if skip >= 0:
            collected += logprobs[skip:]

    def append_token(self, token_id: int, now: float, logprob: TokenLogprob | None = None) -> None:
        """Take the token sampled for this sequence; finish if it ends the generation."""
        if self.grammar is not None and not self.grammar.accept(token_id):
            # Only a row its mask left without any allowed token gets here (the sampler then takes the argmax).
            self.fail("no token could continue the response_format's document")
            return
        self.token_ids.append(token_id)
        self.pending_token_ids.append(token_id)
        if logprob is not None:
            self.pending_logprobs.append(logprob)
        if self.first_token_time is None:
            self.first_token_time = now
        reason = self._stop_reason(token_id)
        if reason is not None:
            self.finish(reason)

    def _stop_reason(self, token_id: int) -> FinishReason | None:
        sampling = self.request.sampling
        if token_id in self.eos_token_ids and not sampling.ignore_eos or token_id in sampling.stop_token_ids:
            return FinishReason.EOS  # its text is never produced
        self.stop_matcher.add(self.detokenizer.add(token_id))
        if self.stop_matcher.is_stopped:
            return FinishReason.STOP
        is_at_max_len = self.max_model_len is not None and self.prefix_len + len(self.token_ids) >= self.max_model_len
        if self.num_generated >= self.request.sampling.max_new_tokens or is_at_max_len:
            return FinishReason.LENGTH
        return None

    def finish(self, reason: FinishReason) -> None:
        """Generation is over (the scheduler then frees what the sequence holds)."""
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason

    def fail(self, error: str) -> None:
        """The engine cannot serve it; `error` reaches the client."""
        self.finish(FinishReason.ERROR)
        self.error = error

    def take_output(self, now: float) -> RequestOutput:
        """Everything new since the last output; on the last one, the held-back text too."""
        finished = self.is_finished
        if finished and self.finish_reason is not FinishReason.STOP:
            self.stop_matcher.add(self.detokenizer.flush())
        new_ids, new_logprobs = tuple(self.pending_token_ids), tuple(self.pending_logprobs)
        self.pending_token_ids.clear()
        self.pending_logprobs.clear()
        classification = None
        if self.finish_reason is FinishReason.CLASSIFIED:
            rows = tuple(self.classification_rows)
            classification = Classification(self.classification_labels, rows, per_token=self.classifies_tokens)
        prompt_logprobs = None
        if self.prompt_logprobs is not None and new_ids and not self.is_prompt_logprobs_reported:
            prompt_logprobs, self.is_prompt_logprobs_reported = tuple(self.prompt_logprobs), True
        timings = None
        if finished:
            timings = RequestTimings(
                arrival_time=self.arrival_time,
                first_scheduled_time=self.first_scheduled_time,
                first_token_time=self.first_token_time,
                finished_time=now,
            )
        return RequestOutput(
            request_id=self.request_id,
            new_token_ids=new_ids,
            new_text=self.stop_matcher.take(final=finished),
            finished=finished,
            finish_reason=self.finish_reason,
            num_prompt_tokens=self.num_prompt_tokens,
            num_generated_tokens=self.num_generated,
            task=self.task_ref.task if self.task_ref else None,
            task_version=self.task_ref.version if self.task_ref else None,
            timings=timings,
            error=self.error if finished else None,
            new_logprobs=new_logprobs,
            prompt_logprobs=prompt_logprobs,
            classification=classification,
        )
