"""Arm (c): transformers' own continuous batching, `model.generate_batch`, on the base model (no prompts)."""

from __future__ import annotations

import math
import time

import torch
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from loadtest.comparison.results import ArmResult, all_first_tokens_s, decode_rate
from loadtest.comparison.workload import BenchRequest


def continuous_batching_config(
    requests: list[BenchRequest],
    new_tokens: int,
    concurrency: int,
    page_size: int = 16,
    max_batch_tokens: int = 256,
    prefix_sharing: bool = True,
) -> ContinuousBatchingConfig:
    """Sized for the run: pages for every running sequence's full length, `concurrency` requests per batch.

    The defaults target GPUs (8192 batch tokens, 256-token pages); on this CPU a 256-token step budget and
    16-token pages were the fastest settings tried (see docs/benchmarks.md), several times the defaults' speed.
    `prefix_sharing` (transformers' default) reuses the K/V of full pages that prompts share, such as a chat
    template's system prompt, so their prefill is computed once.
    """
    longest = max(len(request.prompt_token_ids) for request in requests) + new_tokens
    num_blocks = concurrency * math.ceil(longest / page_size) + 16
    return ContinuousBatchingConfig(
        page_size=page_size,
        num_blocks=num_blocks,
        max_batch_tokens=max_batch_tokens,
        max_requests_per_batch=concurrency,
        allow_block_sharing=prefix_sharing,
    )


def run_generate_batch(
    model, requests: list[BenchRequest], new_tokens: int, concurrency: int, cb_config: ContinuousBatchingConfig
) -> ArmResult:
    inputs = [list(request.prompt_token_ids) for request in requests]
    generation_config = _generation_config(model, new_tokens)
    started = time.perf_counter()
    with torch.inference_mode():
        outputs = model.generate_batch(
            inputs=inputs,
            generation_config=generation_config,
            continuous_batching_config=cb_config,
            record_timestamps=True,
            warmup=False,
        )
    wall_s = time.perf_counter() - started
    ordered = sorted(outputs.values(), key=lambda output: output.created_time)
    counts = [len(output.generated_tokens) for output in ordered]
    if any(count != new_tokens for count in counts) or len(ordered) != len(requests):
        raise AssertionError(f"generate_batch made {sorted(set(counts))} tokens per request, expected {new_tokens}")
    wave = min(concurrency, len(requests))
    token_times = [output.timestamps for output in ordered]
    rate, batch = decode_rate(token_times, wave)
    settings = {
        "page_size": cb_config.page_size,
        "num_blocks": cb_config.num_blocks,
        "max_batch_tokens": cb_config.max_batch_tokens,
        "max_requests_per_batch": concurrency,
        "prefix_sharing": cb_config.allow_block_sharing,
        "attn_implementation": model.config._attn_implementation,
    }
    prefill_s = all_first_tokens_s(token_times, wave, started)
    return ArmResult(
        "c",
        "transformers generate_batch (continuous batching), base model",
        len(requests),
        sum(counts),
        wall_s,
        rate,
        batch,
        note=", ".join(f"{k}={v}" for k, v in settings.items()) + f"; first tokens of all {wave} "
        f"after {prefill_s:.1f} s",
        extra=settings | {"all_first_tokens_s": prefill_s},
    )


def warm_up(model, requests: list[BenchRequest], cb_config: ContinuousBatchingConfig) -> None:
    with torch.inference_mode():
        model.generate_batch(
            inputs=[list(r.prompt_token_ids) for r in requests[:4]],
            generation_config=_generation_config(model, 2),
            continuous_batching_config=cb_config,
            warmup=False,
        )


def _generation_config(model, new_tokens: int) -> GenerationConfig:
    # eos_token_id -1: no token ends a sequence (generate_batch's own "EOS disabled"), so exactly new_tokens each.
    pad = model.generation_config.pad_token_id
    return GenerationConfig(
        max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=pad if pad is not None else 0
    )
