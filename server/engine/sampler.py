"""Next-token choice for a batch: greedy rows in one argmax, sampled rows filtered together and then drawn, each
with its own generator.

Every row gets a valid token id whatever its logits or parameters: NaN logits count as -inf, a temperature below
SAMPLING_EPS is greedy, and a sampled row whose probabilities are no distribution (an infinite logit, every logit
-inf) takes its greedy token instead of reaching `torch.multinomial`, which would raise on the engine thread.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from server.engine.logits_processing import SampleRow, apply_repetition_penalty, process_logits
from server.engine.logprobs import token_logprobs
from server.engine.request import SamplingParams, TokenLogprob

__all__ = [
    "SampleResult",
    "SampleRow",
    "apply_repetition_penalty",
    "filter_top_k",
    "filter_top_p",
    "sample",
    "sample_row",
    "sample_rows",
]


@dataclass(frozen=True)
class SampleResult:
    token_ids: list[int]  # one per row
    logprobs: list[TokenLogprob | None]  # one per row: set where its params ask for logprobs


def filter_top_k(row: torch.Tensor, top_k: int) -> torch.Tensor:
    return _filter(row.unsqueeze(0), [top_k], [1.0])[0]


def filter_top_p(row: torch.Tensor, top_p: float) -> torch.Tensor:
    return _filter(row.unsqueeze(0), [0], [top_p])[0]


def sample_row(row: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    return _draw(row.unsqueeze(0), [params], [generator], row.argmax(-1, keepdim=True))[0]


def sample(
    logits: torch.Tensor, params: Seq[SamplingParams], seen_ids: Seq[list[int]], generators: Seq[torch.Generator | None]
) -> list[int]:
    """logits [num_seqs, vocab] -> one token id per row (`seen_ids`: the repetition penalty's tokens)."""
    rows = [SampleRow(p, seen, len(seen), g) for p, seen, g in zip(params, seen_ids, generators, strict=True)]
    return sample_rows(logits, rows).token_ids


def sample_rows(logits: torch.Tensor, rows: Seq[SampleRow]) -> SampleResult:
    """logits [num_rows, vocab] -> each row's token, and its logprobs where asked."""
    if all(row.params.is_greedy and not row.is_processed and row.params.logprobs is None for row in rows):
        chosen = _plain_greedy(logits)
        if chosen is not None:
            return SampleResult(chosen, [None] * len(rows))
    logits = torch.where(torch.isnan(logits), float("-inf"), logits.float())  # new: the caller's stays as it was
    process_logits(logits, rows)
    chosen = _choose(logits, rows)
    return SampleResult(chosen, _logprobs(logits, rows, chosen))


def _plain_greedy(logits: torch.Tensor) -> list[int] | None:
    """The argmax of every row, read straight off the caller's logits (a decode step's [64, 49152] float tensor
    is not copied), or None when some row's maximum is NaN: `argmax` takes NaN for the largest value, where the
    sampler counts it as -inf."""
    greedy = logits.argmax(-1)  # [num_seqs]
    is_nan = logits.gather(1, greedy.unsqueeze(1)).squeeze(1).isnan()
    chosen = greedy.masked_fill(is_nan, -1).tolist()  # one copy to the host, flags included
    return None if -1 in chosen else chosen


def _choose(logits: torch.Tensor, rows: Seq[SampleRow]) -> list[int]:
    """logits [num_rows, vocab] processed -> greedy rows' argmax, sampled rows' draws."""
    greedy = logits.argmax(-1)  # [num_rows]
    sampled = [i for i, row in enumerate(rows) if not row.params.is_greedy]
    chosen = greedy.tolist()
    if sampled:
        index = torch.tensor(sampled, device=logits.device)
        params, generators = [rows[i].params for i in sampled], [rows[i].generator for i in sampled]
        for i, token_id in zip(sampled, _draw(logits[index], params, generators, greedy[index])):
            chosen[i] = token_id
    return chosen


def _logprobs(logits: torch.Tensor, rows: Seq[SampleRow], chosen: list[int]) -> list[TokenLogprob | None]:
    """Of the distribution each row chose from: its processed logits, over its temperature when sampling (top-k
    and top-p not applied: they cut the distribution, they do not reshape it)."""
    asked = [i for i, row in enumerate(rows) if row.params.logprobs is not None]
    out: list[TokenLogprob | None] = [None] * len(rows)
    if not asked:
        return out
    index = torch.tensor(asked, device=logits.device)
    scores = logits[index] / _temperatures([rows[i].params for i in asked], logits).unsqueeze(1)
    num_top = [rows[i].params.logprobs or 0 for i in asked]
    for i, logprob in zip(asked, token_logprobs(scores, [chosen[i] for i in asked], num_top)):
        out[i] = logprob
    return out


def _temperatures(params: Seq[SamplingParams], like: torch.Tensor) -> torch.Tensor:
    """Each row's temperature (1 for greedy rows), clamped: one past the dtype's range would be inf, and
    -inf / inf is NaN. # [num_rows]"""
    values = [1.0 if p.is_greedy else p.temperature for p in params]
    return torch.tensor(values, dtype=like.dtype, device=like.device).clamp(max=torch.finfo(like.dtype).max)


def _draw(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None], fallback: torch.Tensor
) -> list[int]:
    """logits [num_rows, vocab] of sampled rows -> one drawn token id per row; a row whose probabilities are not
    a distribution gets its `fallback` [num_rows] id."""
    dtype = logits.dtype
    temperature = _temperatures(params, logits)
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
