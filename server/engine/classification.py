"""Classification heads over a step's hidden rows: one matmul per distinct head in the step, never one per request.

A classification request is a prefill-only sequence in the same packed batch as generation. The runner returns
the final hidden states of the rows its chunks ask for (the last prompt token's for a sequence task, as
`...ForSequenceClassification` picks it when the text holds no padding; every token's for a token task), and
here each task version's head turns them into logits: hidden @ weight.T + bias, in float32.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from prompt_store.spec import ClassifierHead
from server.engine.batch import SequenceChunk


@dataclass(frozen=True)
class HeadRows:
    """One chunk's head logits: rows for its own tokens `first_token`, `first_token + 1`, ..."""

    chunk: SequenceChunk
    first_token: int
    logits: list[tuple[float, ...]]
    labels: tuple[str, ...]


def apply_heads(hidden: torch.Tensor, chunks: Seq[SequenceChunk]) -> list[HeadRows]:
    """hidden [sum of chunks' num_hidden_rows, hidden] in packing order (chunks without hidden rows skipped) ->
    each classifying chunk's head logits."""
    classifying = [c for c in chunks if c.num_hidden_rows]
    parts = hidden.split([c.num_hidden_rows for c in classifying])  # each chunk's rows
    groups: dict[int, list[int]] = {}  # id(head) -> indexes into `classifying`: one matmul per head
    for i, chunk in enumerate(classifying):
        groups.setdefault(id(_head_of(chunk)), []).append(i)
    logits: list[list[tuple[float, ...]]] = [[] for _ in classifying]
    for members in groups.values():
        head = _head_of(classifying[members[0]])
        group = torch.cat([parts[i] for i in members]).float() @ head.weight.T  # [rows, num_labels]
        if head.bias is not None:
            group = group + head.bias
        values = iter(group.cpu().tolist())  # one host copy per head
        for i in members:
            logits[i] = [tuple(next(values)) for _ in range(classifying[i].num_hidden_rows)]
    return [
        HeadRows(chunk, chunk.own_len - chunk.num_hidden_rows, logits[i], _head_of(chunk).labels)
        for i, chunk in enumerate(classifying)
    ]


def _head_of(chunk: SequenceChunk) -> ClassifierHead:
    entry = chunk.seq.prompt_entry
    assert entry is not None and entry.head is not None  # admission checked the task's kind; its entry is held
    return entry.head
