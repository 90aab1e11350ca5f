"""Next-token choice for a batch: greedy rows in one argmax, sampled rows with their own generators."""

from __future__ import annotations

from typing import Sequence as Seq

import torch

from server.engine.request import SamplingParams


def apply_repetition_penalty(row: torch.Tensor, seen_ids: list[int], penalty: float) -> None:
    """transformers' rule: a seen token's positive logit is divided by the penalty, a negative one multiplied."""
    ids = torch.tensor(sorted(set(seen_ids)), dtype=torch.int64, device=row.device)
    scores = row[ids]
    row[ids] = torch.where(scores < 0, scores * penalty, scores / penalty)


def filter_top_k(row: torch.Tensor, top_k: int) -> torch.Tensor:
    if 0 < top_k < row.numel():
        threshold = torch.topk(row, top_k).values[-1]
        row = row.masked_fill(row < threshold, float("-inf"))
    return row


def filter_top_p(row: torch.Tensor, top_p: float) -> torch.Tensor:
    if top_p >= 1.0:
        return row
    sorted_logits, order = torch.sort(row, descending=True)
    probs = sorted_logits.softmax(-1)
    # keep the smallest head whose mass reaches top_p; the first token always survives
    drop = (probs.cumsum(-1) - probs) >= top_p
    return row.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))


def sample_row(row: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    row = row / params.temperature
    row = filter_top_p(filter_top_k(row, params.top_k), params.top_p)
    probs = row.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def sample(logits: torch.Tensor, params: Seq[SamplingParams], seen_ids: Seq[list[int]],
           generators: Seq[torch.Generator | None]) -> list[int]:
    """logits [num_seqs, vocab] -> one token id per row."""
    logits = logits.float().clone()  # penalties edit rows in place; the caller's logits stay as they were
    for i, p in enumerate(params):
        if p.repetition_penalty != 1.0:
            apply_repetition_penalty(logits[i], seen_ids[i], p.repetition_penalty)
    chosen = logits.argmax(-1).tolist()
    for i, p in enumerate(params):
        if p.do_sample:
            chosen[i] = sample_row(logits[i].cpu(), p, generators[i])
    return chosen
