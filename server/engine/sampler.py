"""Next-token choice for a batch: greedy rows in one argmax, sampled rows filtered together and then drawn, each
with its own generator.

Every row gets a valid token id whatever its logits or parameters: NaN logits count as -inf, a temperature below
SAMPLING_EPS is greedy, and a sampled row whose probabilities are no distribution (an infinite logit, every logit
-inf) takes its greedy token instead of reaching `torch.multinomial`, which would raise on the engine thread.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch

from server.engine.request import SamplingParams


def apply_repetition_penalty(row: torch.Tensor, seen_ids: list[int], penalty: float) -> None:
    """transformers' rule: a seen token's positive logit is divided by the penalty, a negative one multiplied."""
    _apply_repetition_penalties(row.unsqueeze(0), [0], [seen_ids], [penalty])


def filter_top_k(row: torch.Tensor, top_k: int) -> torch.Tensor:
    return _filter(row.unsqueeze(0), [top_k], [1.0])[0]


def filter_top_p(row: torch.Tensor, top_p: float) -> torch.Tensor:
    return _filter(row.unsqueeze(0), [0], [top_p])[0]


def sample_row(row: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    return _sample_rows(row.unsqueeze(0), [params], [generator], row.argmax(-1, keepdim=True))[0]


def sample(
    logits: torch.Tensor, params: Seq[SamplingParams], seen_ids: Seq[list[int]], generators: Seq[torch.Generator | None]
) -> list[int]:
    """logits [num_seqs, vocab] -> one token id per row."""
    if all(p.is_greedy and p.repetition_penalty == 1.0 for p in params):
        chosen = _plain_greedy(logits)
        if chosen is not None:
            return chosen
    return _sample(logits, params, seen_ids, generators)


def _plain_greedy(logits: torch.Tensor) -> list[int] | None:
    """The argmax of every row, read straight off the caller's logits (a decode step's [64, 49152] float tensor
    is not copied), or None when some row's maximum is NaN: `argmax` takes NaN for the largest value, where the
    sampler counts it as -inf."""
    greedy = logits.argmax(-1)  # [num_seqs]
    is_nan = logits.gather(1, greedy.unsqueeze(1)).squeeze(1).isnan()
    chosen = greedy.masked_fill(is_nan, -1).tolist()  # one copy to the host, flags included
    return None if -1 in chosen else chosen


def _sample(
    logits: torch.Tensor, params: Seq[SamplingParams], seen_ids: Seq[list[int]], generators: Seq[torch.Generator | None]
) -> list[int]:
    """Every case: repetition penalties, sampled rows, NaN logits."""
    logits = torch.where(torch.isnan(logits), float("-inf"), logits.float())  # new: the caller's stays as it was
    penalized = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0]
    if penalized:
        _apply_repetition_penalties(
            logits, penalized, [seen_ids[i] for i in penalized], [params[i].repetition_penalty for i in penalized]
        )
    greedy = logits.argmax(-1)  # [num_seqs]
    sampled = [i for i, p in enumerate(params) if not p.is_greedy]
    chosen = greedy.tolist()
    if sampled:
        rows = torch.tensor(sampled, device=logits.device)
        drawn = _sample_rows(logits[rows], [params[i] for i in sampled], [generators[i] for i in sampled], greedy[rows])
        for i, token_id in zip(sampled, drawn):
            chosen[i] = token_id
    return chosen


def _apply_repetition_penalties(
    logits: torch.Tensor, rows: list[int], seen_ids: list[list[int]], penalties: list[float]
) -> None:
    """In place, every listed row in one gather and one scatter (a repeated id writes the same value twice)."""
    counts = torch.tensor([len(seen) for seen in seen_ids])
    if int(counts.sum()) == 0:
        return
    device = logits.device
    row_index = torch.repeat_interleave(torch.tensor(rows), counts).to(device)
    col_index = torch.cat([torch.tensor(seen, dtype=torch.int64) for seen in seen_ids]).to(device)
    penalty = torch.repeat_interleave(torch.tensor(penalties, dtype=logits.dtype), counts).to(device)
    scores = logits[row_index, col_index]
    logits[row_index, col_index] = torch.where(scores < 0, scores * penalty, scores / penalty)


def _sample_rows(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None], fallback: torch.Tensor
) -> list[int]:
    """logits [num_rows, vocab] of sampled rows -> one drawn token id per row; a row whose probabilities are not
    a distribution gets its `fallback` [num_rows] id."""
    dtype, device = logits.dtype, logits.device
    # Clamped: a temperature past the dtype's range would be inf, and -inf / inf is NaN.
    temperature = torch.tensor([p.temperature for p in params], dtype=dtype, device=device).clamp(
        max=torch.finfo(dtype).max
    )
    scores = _filter(logits / temperature.unsqueeze(1), [p.top_k for p in params], [p.top_p for p in params])
    probs = scores.softmax(-1)  # [num_rows, vocab]
    is_valid = torch.isfinite(probs).all(-1, keepdim=True) & (probs.sum(-1, keepdim=True) > 0)
    probs = torch.where(is_valid, probs, torch.nn.functional.one_hot(fallback, probs.shape[-1]).to(dtype))
    # Per-request CPU generators make the draw one call per row; the probabilities reach the host in one copy.
    probs = probs.cpu()
    return [int(torch.multinomial(probs[i], 1, generator=generator).item()) for i, generator in enumerate(generators)]


def _filter(scores: torch.Tensor, top_ks: list[int], top_ps: list[float]) -> torch.Tensor:
    """Top-k then top-p per row, HF's order and rules; filtered-out scores become -inf."""
    vocab = scores.shape[-1]
    ks = [k if 0 < k < vocab else vocab for k in top_ks]  # clamped in Python: a huge k would overflow a tensor
    if all(k == vocab for k in ks) and all(p >= 1.0 for p in top_ps):
        return scores
    device = scores.device
    sorted_scores, order = torch.sort(scores, descending=True)  # [num_rows, vocab]
    kth = sorted_scores.gather(1, torch.tensor(ks, device=device).unsqueeze(1) - 1)  # [num_rows, 1]
    sorted_scores = sorted_scores.masked_fill(sorted_scores < kth, float("-inf"))  # ties with the k-th stay
    probs = sorted_scores.softmax(-1)
    top_p = torch.tensor(top_ps, dtype=probs.dtype, device=device).unsqueeze(1)
    # keep the smallest head whose mass reaches top_p; the first token always survives
    drop = ((probs.cumsum(-1) - probs) >= top_p) & (top_p < 1.0)
    sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
    return torch.empty_like(scores).scatter_(1, order, sorted_scores)
