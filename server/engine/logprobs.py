"""Log-probabilities of chosen tokens and their best alternatives, for many rows at once.

Computed on the device from the scores a row chose from; what reaches the host is one small [num_rows, 1 + 2k]
tensor, never a vocabulary-sized row.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch

from server.engine.request import TokenLogprob

LOGPROB_FLOOR = -9999.0  # what an impossible token (logit -inf) reports: JSON has no -Infinity (vLLM's choice too)


def token_logprobs(scores: torch.Tensor, chosen_ids: Seq[int], num_top: Seq[int]) -> list[TokenLogprob]:
    """scores [num_rows, vocab] (unnormalized) -> per row the logprob of `chosen_ids[i]` and the `num_top[i]` most
    likely tokens, most likely first."""
    device = scores.device
    logprobs = scores.float().log_softmax(-1)  # [num_rows, vocab]
    chosen = torch.tensor(list(chosen_ids), dtype=torch.int64, device=device).unsqueeze(1)
    parts = [logprobs.gather(1, chosen).double()]  # [num_rows, 1]
    k = max(num_top, default=0)
    if k > 0:
        top_logprobs, top_ids = logprobs.topk(k, dim=-1)  # [num_rows, k] each
        parts += [top_logprobs.double(), top_ids.double()]  # ids are exact in float64
    host = torch.cat(parts, dim=1).nan_to_num(nan=LOGPROB_FLOOR, neginf=LOGPROB_FLOOR).clamp(min=LOGPROB_FLOOR)
    values = host.tolist()  # the one copy to the host
    out = []
    for token_id, n, row in zip(chosen_ids, num_top, values, strict=True):
        top = tuple((int(row[1 + k + j]), row[1 + j]) for j in range(n))
        out.append(TokenLogprob(token_id=token_id, logprob=row[0], top=top))
    return out
