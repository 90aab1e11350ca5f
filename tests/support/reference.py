"""The expected output of every equivalence test: PEFT's uncached forward, greedy (shared/API.md).

`PeftModel.from_pretrained(base, adapter_dir)` run over the whole sequence at each step
(`loadtest.peft_reference.greedy_uncached`), never `PeftModel.generate`, whose cached decode drops the virtual
tokens with transformers 5.24.0 and peft 0.21.2 (docs/peft_reference.md).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM

from loadtest.peft_reference import GreedyResult, eos_token_ids, greedy_uncached


def peft_greedy(
    base_dir: Path, adapter_dir: Path, input_ids: list[int], max_new_tokens: int, subtask: int | None = None
) -> list[int]:
    """Greedy new tokens of the adapter on `base_dir`, up to and including EOS.

    `subtask`: the sub-task id, which MULTITASK_PROMPT_TUNING requires.
    """
    return peft_reference(base_dir, adapter_dir, input_ids, max_new_tokens, subtask).token_ids


def peft_reference(
    base_dir: Path, adapter_dir: Path, input_ids: list[int], max_new_tokens: int, subtask: int | None = None
) -> GreedyResult:
    """`peft_greedy` with the logits of each step."""
    import torch

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    extra = {} if subtask is None else {"task_ids": torch.tensor([subtask])}
    return greedy_uncached(model, input_ids, max_new_tokens, eos_token_ids(base), **extra)


def base_greedy(base_dir: Path, input_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy new tokens of the base model alone, up to and including EOS."""
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    return greedy_uncached(base, input_ids, max_new_tokens, eos_token_ids(base)).token_ids


def load_reference(base_dir: Path, adapter_dir: Path | None):
    """The PEFT model of an adapter on `base_dir` (the base model alone with None), for `forward_logits`."""
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    return (PeftModel.from_pretrained(base, adapter_dir) if adapter_dir is not None else base).eval()


def forward_logits(model, token_ids: list[int], subtask: int | None = None):
    """One uncached forward over `token_ids`: the logits at each of them (virtual positions dropped),
    float32. # [len(token_ids), vocab]"""
    import torch

    extra = {} if subtask is None else {"task_ids": torch.tensor([subtask])}
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([token_ids]), **extra).logits[0].float()
    return logits[-len(token_ids) :]


def sampling_controls_reference(
    model, ids: list[int], params, eos_ids: set[int], chosen: list[int] | None = None
) -> tuple[list[int], list[float]]:
    """Greedy tokens (or, given `chosen`, the logprobs of those tokens) under the OpenAI definitions: logit -=
    count * frequency_penalty + (count > 0) * presence_penalty over the generated tokens; += logit_bias; EOS and
    stop ids impossible before min_tokens; logprobs = log_softmax(logits / temperature) when sampling. `params`:
    SamplingParams. Written from the definitions, independently of the engine's code."""
    sequence, tokens, logprobs = list(ids), [], []
    temperature = params.temperature if params.do_sample else 1.0
    for step in range(params.max_new_tokens):
        logits = forward_logits(model, sequence)[-1].clone()
        for token, count in Counter(tokens).items():
            logits[token] -= count * params.frequency_penalty + params.presence_penalty
        for token, bias in params.logit_bias:
            logits[token] += bias
        if step < params.min_tokens:
            logits[sorted(eos_ids | set(params.stop_token_ids))] = float("-inf")
        token = chosen[step] if chosen is not None else int(logits.argmax())
        logprobs.append(float((logits / temperature).log_softmax(-1)[token]))
        tokens.append(token)
        sequence.append(token)
        if token in eos_ids or token in params.stop_token_ids or (chosen is not None and step + 1 == len(chosen)):
            break
    return tokens, logprobs
