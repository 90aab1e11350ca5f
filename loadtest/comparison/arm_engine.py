"""Arms (d), (e) and (f): promptswap's engine in-process (as `tests/support/engine.py` runs it), with no prompts,
with the task mix, and with no prompts but longer prompts. At most `concurrency` requests are admitted at once; a
finished one is replaced at once."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import torch

from loadtest.adapters import RandomAdapter
from loadtest.comparison.results import ArmResult, all_first_tokens_s, decode_rate
from loadtest.comparison.workload import BenchRequest
from prompt_store.registry import PromptRegistry
from server.config import EngineConfig, StoreConfig
from server.engine import attention
from server.engine.llm_engine import LLMEngine
from server.engine.request import GenerationRequest, RequestOutput, SamplingParams
from server.model import load_model


def build_engine(model: str, cache_dir: Path, adapters: list[RandomAdapter], config: EngineConfig) -> LLMEngine:
    """A fresh copy of the model with promptswap's attention, and a registry holding every adapter's upload."""
    loaded = load_model(model, cache_dir, torch.device("cpu"), torch.float32, attention.register())
    registry = PromptRegistry(loaded.shape, StoreConfig(max_virtual_tokens=4096), "base", None)
    for adapter in adapters:
        registry.upload(adapter.task, *adapter.files())
    return LLMEngine(config, loaded.model, loaded.tokenizer, registry)


def run_engine(
    engine: LLMEngine,
    requests: list[BenchRequest],
    new_tokens: int,
    concurrency: int,
    with_tasks: bool,
    arm: str,
    description: str,
    extra_prompt_tokens: int = 0,
) -> ArmResult:
    """`extra_prompt_tokens` > 0 puts that many more real tokens in front of every prompt (arm (f))."""
    sampling = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    token_times: list[list[float]] = [[] for _ in requests]
    num_live = 0

    def on_output(index: int, output: RequestOutput) -> None:
        nonlocal num_live
        now = time.perf_counter()
        token_times[index].extend([now] * len(output.new_token_ids))
        num_live -= output.finished

    waiting = deque(requests)
    started = time.perf_counter()
    while waiting or num_live:
        while waiting and num_live < concurrency:
            request = waiting.popleft()
            prompt = _lengthened(request.prompt_token_ids, extra_prompt_tokens)
            task = request.adapter.task if with_tasks else None
            engine.add_request(
                GenerationRequest(f"{arm}{request.index}", prompt, sampling, task=task),
                on_output=lambda output, index=request.index: on_output(index, output),
            )
            num_live += 1
        engine.step()
    wall_s = time.perf_counter() - started
    counts = [len(times) for times in token_times]
    if any(count != new_tokens for count in counts):
        raise AssertionError(f"engine made {sorted(set(counts))} tokens per request, expected {new_tokens}")
    wave = min(concurrency, len(requests))
    rate, batch = decode_rate(token_times, wave)
    prefill_s = all_first_tokens_s(token_times, wave, started)
    return ArmResult(
        arm,
        description,
        len(requests),
        sum(counts),
        wall_s,
        rate,
        batch,
        note=f"EngineConfig defaults as served, {engine.num_steps} steps; first tokens of all "
        f"{wave} after {prefill_s:.1f} s",
        extra={
            "num_tasks_used": len({r.adapter.task for r in requests}) if with_tasks else 0,
            "all_first_tokens_s": prefill_s,
        },
    )


def _lengthened(prompt: tuple[int, ...], extra_tokens: int) -> tuple[int, ...]:
    """The prompt with `extra_tokens` of its own tokens (cycled) in front: same vocabulary, longer context."""
    return tuple(prompt[i % len(prompt)] for i in range(extra_tokens)) + prompt


def warm_up(engine: LLMEngine, requests: list[BenchRequest]) -> None:
    """A few base-model requests: kernels and allocator warm, but no task's prompt materialized in advance."""
    for request in requests[:4]:
        engine.add_request(
            GenerationRequest(
                f"warm{request.index}", request.prompt_token_ids, SamplingParams(max_new_tokens=4, ignore_eos=True)
            )
        )
    while engine.has_work():
        engine.step()
