"""`python -m loadtest.peft_check`: does `PeftModel.generate` decode what the adapter means, with the installed
torch / transformers / peft?

For each prompt-learning type, a random adapter on a tiny random Llama with grouped-query attention is saved and
loaded back as users load it (`PeftModel.from_pretrained`), and the greedy tokens of `generate(do_sample=False)`
are compared with the definition: the greedy tokens of `PeftModel`'s forward over the whole sequence at each step
(`loadtest.peft_reference`). Where they differ, compare promptswap with the forward, not with `generate`.
Exit status 0 when every type agrees, 1 when some do not. Needs peft (the `test` / `loadtest` extras).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from loadtest.peft_reference import eos_token_ids, greedy_uncached

NUM_SUBTASKS = 3
VOCAB_SIZE = 256

# (label, peft type, config options): every prompt-learning type promptswap serves, in its variants.
CASES = (
    ("prompt tuning", "PROMPT_TUNING", {}),
    ("p-tuning (MLP)", "P_TUNING", {"encoder_hidden_size": 32}),
    ("p-tuning (LSTM)", "P_TUNING", {"encoder_hidden_size": 32, "encoder_reparameterization_type": "LSTM"}),
    ("prefix tuning", "PREFIX_TUNING", {}),
    ("prefix tuning + projection", "PREFIX_TUNING", {"prefix_projection": True, "encoder_hidden_size": 32}),
    ("multitask prompt tuning", "MULTITASK_PROMPT_TUNING", {"num_tasks": NUM_SUBTASKS, "num_ranks": 2}),
)

# greedy decoder under test: (peft model, prompt ids, max new tokens, forward kwargs) -> new token ids
Decoder = Callable[..., list[int]]


@dataclass(frozen=True)
class TypeResult:
    label: str  # a CASES label
    num_prompts: int
    num_agreeing: int  # prompts whose greedy tokens are identical
    first_divergence: int | None  # smallest index of a differing new token over all prompts, None if all agree


def generate_greedy(model, input_ids: list[int], max_new_tokens: int, **forward_kwargs) -> list[int]:
    """What users call: `PeftModel.generate(do_sample=False)`, new tokens up to and including EOS."""
    prompt = torch.tensor([input_ids])  # [1, num_prompt_tokens]
    with torch.no_grad():
        output = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            **forward_kwargs,
        )
    new_tokens = output[0, prompt.shape[1] :].tolist()
    eos = eos_token_ids(model)
    stop = next((index + 1 for index, token in enumerate(new_tokens) if token in eos), len(new_tokens))
    return new_tokens[:stop]


def check_types(
    decoder: Decoder = generate_greedy,
    num_prompts: int = 14,
    max_new_tokens: int = 8,
    num_virtual_tokens: int = 6,
    seed: int = 0,
) -> list[TypeResult]:
    """Compare `decoder` with the uncached forward for each of CASES, on the same random prompts."""
    generator = torch.Generator().manual_seed(seed)
    prompts = [
        torch.randint(3, VOCAB_SIZE, (int(length),), generator=generator).tolist()
        for length in torch.randint(2, 12, (num_prompts,), generator=generator)
    ]
    with tempfile.TemporaryDirectory(prefix="peft-check-") as tmp:
        base_dir = _save_tiny_llama(Path(tmp) / "base", seed)
        results = []
        for index, (label, peft_type, options) in enumerate(CASES):
            model = _saved_and_reloaded(
                base_dir, Path(tmp) / f"adapter-{index}", peft_type, options, num_virtual_tokens, seed + index
            )
            results.append(
                _compare(
                    label, model, decoder, prompts, max_new_tokens, multitask=peft_type == "MULTITASK_PROMPT_TUNING"
                )
            )
    return results


def _compare(
    label: str, model, decoder: Decoder, prompts: list[list[int]], max_new_tokens: int, multitask: bool
) -> TypeResult:
    num_agreeing, first_divergence = 0, None
    eos = eos_token_ids(model)
    for index, prompt in enumerate(prompts):
        extra = {"task_ids": torch.tensor([index % NUM_SUBTASKS])} if multitask else {}
        expected = greedy_uncached(model, prompt, max_new_tokens, eos, **extra).token_ids
        actual = decoder(model, prompt, max_new_tokens, **extra)
        if actual == expected:
            num_agreeing += 1
            continue
        differs_at = next(
            (i for i, (a, b) in enumerate(zip(actual, expected)) if a != b), min(len(actual), len(expected))
        )
        first_divergence = differs_at if first_divergence is None else min(first_divergence, differs_at)
    return TypeResult(label, len(prompts), num_agreeing, first_divergence)


def _save_tiny_llama(out_dir: Path, seed: int) -> Path:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(out_dir)
    return out_dir


def _saved_and_reloaded(
    base_dir: Path, adapter_dir: Path, peft_type: str, options: dict, num_virtual_tokens: int, seed: int
):
    """A random adapter written by `save_pretrained`, then loaded as a user loads it."""
    from peft import (
        MultitaskPromptTuningConfig,
        PeftModel,
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
        TaskType,
        get_peft_model,
    )
    from transformers import AutoModelForCausalLM

    config_class = {
        "PROMPT_TUNING": PromptTuningConfig,
        "P_TUNING": PromptEncoderConfig,
        "PREFIX_TUNING": PrefixTuningConfig,
        "MULTITASK_PROMPT_TUNING": MultitaskPromptTuningConfig,
    }[peft_type]
    torch.manual_seed(seed)
    config = config_class(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens, **options)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config).save_pretrained(adapter_dir)
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()


def format_report(results: list[TypeResult], num_new_tokens: int) -> str:
    import peft
    import transformers

    lines = [
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
        f"PeftModel.generate(do_sample=False) vs PEFT's uncached forward, greedy, {num_new_tokens} new tokens, "
        f"tiny random Llama (GQA)",
        f"{'type':<28} {'agree':>7}  first differing new token",
    ]
    for result in results:
        where = "-" if result.first_divergence is None else f"#{result.first_divergence + 1}"
        lines.append(f"{result.label:<28} {result.num_agreeing:>3}/{result.num_prompts:<3}  {where}")
    if all(result.num_agreeing == result.num_prompts for result in results):
        lines.append("verdict: generate agrees with the forward for every type; either is a reference here")
    else:
        lines.append(
            "verdict: generate does NOT decode what the adapter means here; compare with PEFT's uncached "
            "forward (loadtest.peft_reference), as promptswap's tests do"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.peft_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=14, help="random prompts per type (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=8, help="greedy tokens per prompt (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results = check_types(num_prompts=args.prompts, max_new_tokens=args.new_tokens, seed=args.seed)
    print(format_report(results, args.new_tokens))
    return 0 if all(result.num_agreeing == result.num_prompts for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
