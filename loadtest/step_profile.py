"""Where an engine step's time goes: torch.profiler around a few steps, with each phase of the step (scheduling,
building step inputs, attention, norms, rotary, sampling, ...) wrapped in a named `record_function` range while
profiling only, so the engine's own code carries no profiling hooks."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

# (label, module path, attribute path): the callables wrapped, looked up by name so a missing one is skipped.
# Nested ranges overlap (the gather runs inside attention); each is reported against the whole step.
PHASES = (
    ("schedule", "server.engine.scheduler", "Scheduler.schedule"),
    ("step_inputs", "server.engine.model_runner", "build_step_inputs"),
    ("embedding", "server.engine.model_runner", "embedding_gather"),
    ("kv_write", "server.engine.attention", "kv_write"),
    ("attention", "server.engine.attention", "paged_attention"),
    ("norms", "transformers.models.llama.modeling_llama", "LlamaRMSNorm.forward"),
    ("rotary", "transformers.models.llama.modeling_llama", "apply_rotary_pos_emb"),
    ("rotary", "transformers.models.llama.modeling_llama", "LlamaRotaryEmbedding.forward"),
    ("mlp", "transformers.models.llama.modeling_llama", "LlamaMLP.forward"),
    ("sampling", "server.engine.llm_engine", "sample"),
    ("postprocess", "server.engine.scheduler", "Scheduler.postprocess"),
    ("deliver", "server.engine.llm_engine", "LLMEngine._deliver"),
)
# Operators summed into a category wherever they run (self time, so nothing is counted twice).
OP_CATEGORIES = {
    "linear (mm/addmm)": ("aten::mm", "aten::addmm"),
    "gather (index_select)": ("aten::index_select",),
    "sdpa": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"),
    "bmm": ("aten::bmm",),
}


@dataclass(frozen=True)
class StepProfile:
    num_steps: int
    step_ms: float  # mean wall time of a profiled step (the profiler adds its own overhead)
    phases_ms: dict[str, float]  # label -> ms per step inside that phase's range
    op_categories_ms: dict[str, float]  # category -> self ms per step of its operators
    ops_self_ms: float  # self ms per step of every operator: the rest of the step is Python outside any op
    top_ops: list[tuple[str, float, int]]  # (operator, self ms per step, calls per step), by self time

    @property
    def host_python_ms(self) -> float:
        return self.step_ms - self.ops_self_ms


def profile_steps(step: Callable[[], object], num_steps: int, num_top_ops: int = 15) -> StepProfile:
    with _labelled_phases(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        for _ in range(num_steps):
            step()
        wall_s = time.perf_counter() - started
    events = profiler.key_averages()
    per_step = 1e-3 / num_steps  # profiler microseconds, summed over the steps -> ms per step
    labels = {label for label, _, _ in PHASES}
    phases = {e.key: e.cpu_time_total * per_step for e in events if e.key in labels}
    ops = [e for e in events if e.key.startswith("aten::")]
    categories = {
        name: sum(e.self_cpu_time_total for e in ops if e.key in keys) * per_step
        for name, keys in OP_CATEGORIES.items()
    }
    top = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:num_top_ops]
    return StepProfile(
        num_steps,
        wall_s * 1e3 / num_steps,
        {label: round(phases.get(label, 0.0), 2) for label in dict.fromkeys(label for label, _, _ in PHASES)},
        {name: round(ms, 2) for name, ms in categories.items()},
        sum(e.self_cpu_time_total for e in ops) * per_step,
        [(e.key, round(e.self_cpu_time_total * per_step, 2), e.count // num_steps) for e in top],
    )


def format_profile(profile: StepProfile) -> list[str]:
    lines = [f"profile: {profile.num_steps} steps, {profile.step_ms:.1f} ms a step under the profiler"]
    for label, ms in profile.phases_ms.items():
        lines.append(f"  {label:<24}{ms:8.1f} ms {ms / profile.step_ms:6.1%}")
    for name, ms in profile.op_categories_ms.items():
        lines.append(f"  {name:<24}{ms:8.1f} ms {ms / profile.step_ms:6.1%}  (operator self time)")
    host = profile.host_python_ms
    lines.append(f"  {'host Python, no op':<24}{host:8.1f} ms {host / profile.step_ms:6.1%}  (step minus every op)")
    lines.append("  top operators (self ms per step, calls per step):")
    lines += [f"    {name:<52}{ms:8.2f} {calls:6d}" for name, ms, calls in profile.top_ops]
    return lines


@contextlib.contextmanager
def _labelled_phases() -> Iterator[None]:
    import importlib

    with contextlib.ExitStack() as stack:
        for label, module_name, path in dict.fromkeys(PHASES):
            owner = importlib.import_module(module_name)
            *outer, name = path.split(".")
            for part in outer:
                owner = getattr(owner, part)
            if hasattr(owner, name):
                stack.enter_context(_wrapped(owner, name, label))
        yield


@contextlib.contextmanager
def _wrapped(owner, name: str, label: str) -> Iterator[None]:
    original = owner.__dict__[name] if name in vars(owner) else getattr(owner, name)

    @functools.wraps(original)
    def labelled(*args, **kwargs):
        with torch.profiler.record_function(label):
            return original(*args, **kwargs)

    setattr(owner, name, labelled)
    try:
        yield
    finally:
        setattr(owner, name, original)
