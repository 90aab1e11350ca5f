"""What a request's parameters do to its row of logits before a token is chosen, for a whole batch at once.

The order, the one the logprobs are reported after (docs/api.md): repetition penalty (transformers' rule, over the
prompt and the generated tokens) -> presence and frequency penalties (OpenAI's rule, over the generated tokens)
-> logit_bias -> bans (EOS and stop token ids before `min_tokens`) -> the response_format grammar's mask
(structured_output.py). Temperature, top-k and top-p come after, in the sampler. Each stage is one gather or
scatter over the rows that use it, never a loop over the vocabulary; nothing vocabulary-sized goes to the host
(the grammar's masks come from it, as bits).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from server.engine.request import SamplingParams
from server.engine.structured_output import GrammarMatcher, mask_logits


@dataclass(frozen=True)
class SampleRow:
    """One row of a step's logits: the sequence it belongs to, as the sampler sees it."""

    params: SamplingParams
    token_ids: Seq[int]  # prompt then generated (the repetition penalty's "seen" tokens)
    num_prompt_tokens: int  # the generated tokens (penalties' counts) follow these
    generator: torch.Generator | None = None  # its RNG when sampling
    banned_ids: tuple[int, ...] = ()  # ids it may not take at this step (EOS before min_tokens)
    grammar: GrammarMatcher | None = None  # with a response_format: which tokens may come next

    @property
    def generated_ids(self) -> Seq[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_processed(self) -> bool:
        """Whether any stage below changes its row."""
        p = self.params
        has_penalty = p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
        return has_penalty or bool(p.logit_bias) or bool(self.banned_ids) or self.grammar is not None


def process_logits(logits: torch.Tensor, rows: Seq[SampleRow]) -> None:
    """In place: logits [num_rows, vocab] float, NaN already -inf."""
    _apply_repetition_penalties(logits, rows)
    _apply_openai_penalties(logits, rows)
    _apply_logit_bias(logits, rows)
    _apply_bans(logits, rows)
    _apply_grammars(logits, rows)


def apply_repetition_penalty(row: torch.Tensor, seen_ids: list[int], penalty: float) -> None:
    """transformers' rule: a seen token's positive logit is divided by the penalty, a negative one multiplied."""
    params = SamplingParams(repetition_penalty=penalty)
    _apply_repetition_penalties(row.unsqueeze(0), [SampleRow(params, seen_ids, len(seen_ids))])


def _apply_repetition_penalties(logits: torch.Tensor, rows: Seq[SampleRow]) -> None:
    """Every penalized row in one gather and one scatter (a repeated id writes the same value twice)."""
    index = _Index()
    for i, row in enumerate(rows):
        if row.params.repetition_penalty != 1.0:
            index.add(i, row.token_ids, [row.params.repetition_penalty] * len(row.token_ids))
    if index.is_empty:
        return
    row_index, col_index, penalty = index.tensors(logits)
    scores = logits[row_index, col_index]
    logits[row_index, col_index] = torch.where(scores < 0, scores * penalty, scores / penalty)


def _apply_openai_penalties(logits: torch.Tensor, rows: Seq[SampleRow]) -> None:
    """OpenAI's definition: logit -= count * frequency_penalty + (count > 0) * presence_penalty, where count is
    how often the token was generated so far (the prompt does not count)."""
    index = _Index()
    for i, row in enumerate(rows):
        p = row.params
        if p.presence_penalty == 0.0 and p.frequency_penalty == 0.0:
            continue
        counts = Counter(row.generated_ids)
        index.add(i, counts, [n * p.frequency_penalty + p.presence_penalty for n in counts.values()])
    if not index.is_empty:
        row_index, col_index, amount = index.tensors(logits)
        logits.index_put_((row_index, col_index), -amount, accumulate=True)


def _apply_logit_bias(logits: torch.Tensor, rows: Seq[SampleRow]) -> None:
    index = _Index()
    for i, row in enumerate(rows):
        bias = row.params.logit_bias
        index.add(i, [token_id for token_id, _ in bias], [value for _, value in bias])
    if not index.is_empty:
        row_index, col_index, value = index.tensors(logits)
        logits.index_put_((row_index, col_index), value, accumulate=True)


def _apply_bans(logits: torch.Tensor, rows: Seq[SampleRow]) -> None:
    index = _Index()
    for i, row in enumerate(rows):
        index.add(i, row.banned_ids, [0.0] * len(row.banned_ids))
    if not index.is_empty:
        row_index, col_index, _ = index.tensors(logits)
        logits[row_index, col_index] = float("-inf")


def _apply_grammars(logits: torch.Tensor, rows: Seq[SampleRow]) -> None:
    constrained = [(i, row.grammar) for i, row in enumerate(rows) if row.grammar is not None]
    mask_logits(logits, [i for i, _ in constrained], [grammar for _, grammar in constrained])


class _Index:
    """(row, token id, value) triples collected on the host, sent to the device as three tensors."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.values: list[float] = []

    def add(self, row: int, token_ids, values: list[float]) -> None:
        token_ids = list(token_ids)
        self.rows += [row] * len(token_ids)
        self.cols += token_ids
        self.values += values

    @property
    def is_empty(self) -> bool:
        return not self.cols

    def tensors(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = logits.device
        return (
            torch.tensor(self.rows, dtype=torch.int64).to(device),
            torch.tensor(self.cols, dtype=torch.int64).to(device),
            torch.tensor(self.values, dtype=logits.dtype).to(device),
        )
