"""Greedy decoding by definition: the argmax of the model's forward over the whole sequence, once per new token.

No KV cache is carried from one step to the next, so nothing a library's cached decode path gets wrong can reach
the result: with transformers 5.24.0 and peft 0.21.2, `PeftModel.generate` drops the virtual tokens from its
cached decode for every prompt-learning type, while this loop over `PeftModel`'s own forward is what the
adapter means (see docs/peft_reference.md). Every equivalence test's expectation comes from here
(tests/support/reference.py), and `python -m loadtest.peft_check` compares `generate` with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GreedyResult:
    token_ids: list[int]  # the new tokens, up to and including the first end-of-sequence token
    logits: torch.Tensor  # [len(token_ids), vocab] float32: the last position's logits at each step


@torch.no_grad()
def greedy_uncached(
    model, input_ids: list[int], max_new_tokens: int, eos_token_ids: Iterable[int], **forward_kwargs
) -> GreedyResult:
    """`model` is a `PeftModel` (or a plain causal LM); `forward_kwargs` reach each forward (`task_ids=`).

    Stops after `max_new_tokens` tokens or on an end-of-sequence token, which is kept, as `generate` does.
    """
    eos = set(eos_token_ids)
    sequence = list(input_ids)
    token_ids: list[int] = []
    step_logits: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        # use_cache stays at the model's default: some models (GPT-2 under transformers 5.24) drop a passed-in
        # cache, PEFT's prefix K/V included, when it is False. The cache built here dies with the step.
        output = model(input_ids=torch.tensor([sequence]), **forward_kwargs)
        logits = output.logits[0, -1].float()  # [vocab]: the position after the last real token
        token = int(logits.argmax())
        token_ids.append(token)
        step_logits.append(logits)
        sequence.append(token)
        if token in eos:
            break
    vocab = model.get_output_embeddings().weight.shape[0]
    return GreedyResult(token_ids, torch.stack(step_logits) if step_logits else torch.empty(0, vocab))


def eos_token_ids(model) -> set[int]:
    """What `generate` stops on: the generation config's end-of-sequence ids, else the model config's."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return set()
    return {eos} if isinstance(eos, int) else set(eos)
