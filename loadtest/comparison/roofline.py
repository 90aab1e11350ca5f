"""The physical ceiling: decoding one token costs about 2·params FLOPs (one multiply-add per weight, the tied LM
head included), so tokens/s can not exceed the machine's fp32 matmul rate / (2·params)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Roofline:
    matmul_gflops: float  # best measured fp32 matmul rate over the shapes tried
    decode_shape_gflops: float  # rate at the decode shape: [batch, hidden] x [hidden, intermediate]
    num_params: int  # parameters, tied weights counted once
    tokens_per_s: float  # matmul_gflops / (2 * num_params)
    linear_floor_tokens_per_s: float  # decode_batch / (time of the model's own Linear layers at that batch)


def measure_roofline(model, decode_batch: int, repeats: int = 10) -> Roofline:
    num_params = sum(p.numel() for p in model.parameters())  # parameters() lists tied weights once
    config = model.config
    hidden = config.hidden_size
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    square = _matmul_gflops(1024, 1024, 1024, repeats)
    wide = _matmul_gflops(256, hidden, intermediate, repeats * 4)
    decode = _matmul_gflops(decode_batch, hidden, intermediate, repeats * 10)
    best = max(square, wide, decode)
    floor = decode_batch / _linear_layers_s(model, decode_batch, repeats)
    return Roofline(best, decode, num_params, best * 1e9 / (2 * num_params), floor)


def _linear_layers_s(model, batch: int, repeats: int) -> float:
    """Seconds for one pass of every `nn.Linear` of the model (LM head included) over `batch` rows: a decode
    step's matmuls with nothing else, each weight read from memory in turn as in a real step (the weights are far
    larger than the caches). No engine can decode `batch` sequences faster than `batch` tokens per this time."""
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    inputs = {features: torch.randn(batch, features) for features in {linear.in_features for linear in linears}}

    def one_pass() -> None:
        for linear in linears:
            torch.nn.functional.linear(inputs[linear.in_features], linear.weight, linear.bias)

    with torch.inference_mode():
        one_pass()
        samples = []
        for _ in range(max(3, repeats // 2)):
            started = time.perf_counter()
            one_pass()
            samples.append(time.perf_counter() - started)
    return min(samples)


def machine_speed_probe() -> float:
    """A 1024^3 fp32 matmul's GFLOP/s right now (~0.1 s): how much of the CPU other jobs leave us."""
    return _matmul_gflops(1024, 1024, 1024, repeats=3)


def _matmul_gflops(m: int, k: int, n: int, repeats: int) -> float:
    """The best of three medians: the machine is shared, and the ceiling is what it does when not interrupted."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    for _ in range(3):
        torch.mm(a, b, out=out)
    medians = []
    for _ in range(3):
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b, out=out)
            samples.append(time.perf_counter() - started)
        medians.append(statistics.median(samples))
    return 2 * m * k * n / min(medians) / 1e9
