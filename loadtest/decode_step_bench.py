"""The engine's decode step at N sequences against the linear-layer floor, measured side by side in one process.

    python -m loadtest.decode_step_bench [--seqs 64] [--prompt-len 64] [--tasks 8] [--steps 20] [--repeats 5]
        [--profile-steps 8] [--json FILE]

An `LLMEngine` on the model (as arm_engine.py builds it) gets --seqs requests of --prompt-len random tokens, a
fraction of them (--task-fraction) on random soft prompts (half prompt tuning, half prefix tuning), and steps
until every one is decoding. Then, --repeats times, interleaved: the linear floor (the model's own Linear layers
alone over --seqs rows, roofline.py) and --steps timed `engine.step()` calls, every one a pure decode step of all
--seqs sequences. The ratio step / floor of each repeat is reported, best and median, against the target; then a
torch.profiler breakdown of --profile-steps more steps (loadtest/step_profile.py). The token ids the sequences
generated are hashed into `output_digest`: two versions of the engine that decode the same tokens print the same.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from loadtest.comparison.roofline import _linear_layers_s, machine_speed_probe
from loadtest.step_profile import StepProfile, format_profile, profile_steps

TARGET_RATIO = 1.3  # decode step at 64 sequences <= 1.3x the Linear layers alone at batch 64


FLOOR_PASSES = 6  # what `_linear_layers_s(model, batch, repeats=10)` runs: one warm pass, then the best of 5


@dataclass(frozen=True)
class Repeat:
    matmul_gflops: float  # the machine's 1024^3 matmul rate just before: how much CPU other jobs left
    linear_floor_ms: float  # one pass of every Linear layer over `seqs` rows (best of 5)
    step_ms: list[float]  # each timed decode step
    step_ms_median: float
    # Process CPU time, means: steadier than wall time when other jobs share the cores (with --threads 1 it is
    # the work done; with more threads it includes their spin-waits).
    linear_floor_cpu_ms: float
    step_cpu_ms: float

    @property
    def ratio(self) -> float:
        return self.step_ms_median / self.linear_floor_ms

    @property
    def ratio_cpu(self) -> float:
        return self.step_cpu_ms / self.linear_floor_cpu_ms


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.decode_step_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="default: %(default)s")
    parser.add_argument("--seqs", type=int, default=64, help="sequences decoding together (default: %(default)s)")
    parser.add_argument("--prompt-len", type=int, default=64, help="tokens per prompt (default: %(default)s)")
    parser.add_argument("--tasks", type=int, default=8, help="random soft prompts; 0: base model only (default: 8)")
    parser.add_argument("--virtual-tokens", type=int, default=20, help="per soft prompt (default: %(default)s)")
    parser.add_argument(
        "--task-fraction", type=float, default=0.5, help="of the sequences on a soft prompt (default: %(default)s)"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed decode steps per repeat (default: 20)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved floor + steps rounds (default: 5)")
    parser.add_argument("--profile-steps", type=int, default=8, help="profiled steps, 0: none (default: 8)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("loadtest-results/decode_step_bench.json"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    engine, tasks = _engine(args)
    token_ids = _start_decoding(engine, tasks, args)
    model = engine.runner.model
    repeats = []
    for index in range(args.repeats):
        probe = machine_speed_probe()
        cpu_started = time.process_time()
        floor_ms = _linear_layers_s(model, args.seqs, repeats=10) * 1e3
        floor_cpu_ms = (time.process_time() - cpu_started) * 1e3 / FLOOR_PASSES
        cpu_started = time.process_time()
        steps = [_timed_decode_step(engine, args.seqs) for _ in range(args.steps)]
        step_cpu_ms = (time.process_time() - cpu_started) * 1e3 / args.steps
        repeats.append(Repeat(round(probe, 1), floor_ms, steps, statistics.median(steps), floor_cpu_ms, step_cpu_ms))
        print(f"repeat {index}: step {repeats[-1].step_ms_median:.1f} ms, floor {floor_ms:.1f} ms", flush=True)
    profile = profile_steps(lambda: _decode_step(engine, args.seqs), args.profile_steps) if args.profile_steps else None
    digest = hashlib.sha256(json.dumps(token_ids).encode()).hexdigest()[:16]
    print("\n".join(_report(args, repeats, profile, digest)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_document(args, repeats, profile, digest), indent=1) + "\n")
    print(f"results: {args.json}")
    return 0


def _engine(args):
    """The engine as served (EngineConfig defaults), and the --tasks random PEFT soft prompts its registry holds."""
    from loadtest.adapters import write_random_adapters
    from loadtest.comparison.arm_engine import build_engine
    from server.config import EngineConfig, load_config
    from server.model import resolve_model_path

    cache_dir = load_config({}).cache_dir
    engine = build_engine(str(resolve_model_path(args.model, cache_dir)), cache_dir, [], EngineConfig())
    if not args.tasks:
        return engine, []
    with tempfile.TemporaryDirectory(prefix="decode-bench-adapters-") as folder:
        adapters = write_random_adapters(
            engine.runner.model, Path(folder), args.tasks, args.virtual_tokens, seed=args.seed
        )
        for adapter in adapters:
            engine.registry.upload(adapter.task, *adapter.files())
    return engine, [adapter.task for adapter in adapters]


def _start_decoding(engine, tasks: list[str], args) -> list[list[int]]:
    """Admit every request, step through their prefills; returns the token ids each one generates (filled as
    the steps run)."""
    from server.engine.request import GenerationRequest, SamplingParams

    rng = random.Random(args.seed)
    vocab = engine.runner.embedding.shape[0]
    total_steps = args.repeats * args.steps + args.profile_steps + 8
    sampling = SamplingParams(max_new_tokens=total_steps + 64, ignore_eos=True)
    token_ids: list[list[int]] = [[] for _ in range(args.seqs)]
    for index in range(args.seqs):
        prompt = tuple(rng.randrange(vocab) for _ in range(args.prompt_len))
        task = tasks[index % len(tasks)] if tasks and index < args.task_fraction * args.seqs else None
        engine.add_request(
            GenerationRequest(f"r{index}", prompt, sampling, task=task),
            on_output=lambda output, index=index: token_ids[index].extend(output.new_token_ids),
        )
    deadline = time.monotonic() + 600
    while not all(token_ids):  # then no prefill is left: every later step decodes all of them
        engine.step()
        if time.monotonic() > deadline:
            raise RuntimeError("the requests did not all start decoding within 10 minutes")
    for _ in range(2):  # warm: the first all-decode steps allocate their scratch
        _decode_step(engine, args.seqs)
    return token_ids


def _decode_step(engine, num_seqs: int) -> None:
    num_tokens = sum(len(output.new_token_ids) for output in engine.step())
    if num_tokens != num_seqs:
        raise RuntimeError(f"a step made {num_tokens} tokens, not one for each of the {num_seqs} sequences")


def _timed_decode_step(engine, num_seqs: int) -> float:
    started = time.perf_counter()
    _decode_step(engine, num_seqs)
    return (time.perf_counter() - started) * 1e3


def _summary(repeats: list[Repeat]) -> dict:
    steps = [r.step_ms_median for r in repeats]
    ratios = [r.ratio for r in repeats]
    floors = [r.linear_floor_ms for r in repeats]
    cpu_ratios = [r.ratio_cpu for r in repeats]
    return {
        "step_ms": {"best": min(steps), "median": statistics.median(steps)},
        "linear_floor_ms": {"best": min(floors), "median": statistics.median(floors)},
        "ratio": {"best": min(ratios), "median": statistics.median(ratios)},
        "ratio_cpu_time": {"best": min(cpu_ratios), "median": statistics.median(cpu_ratios)},
    }


def _report(args, repeats: list[Repeat], profile: StepProfile | None, digest: str) -> list[str]:
    summary = _summary(repeats)
    ratio, cpu_ratio = summary["ratio"], summary["ratio_cpu_time"]
    verdict = "holds" if ratio["median"] <= TARGET_RATIO else "does not hold"
    lines = [
        "",
        f"decode step at {args.seqs} sequences ({args.prompt_len}-token prompts, {args.tasks} soft prompts on "
        f"{args.task_fraction:.0%} of them), {torch.get_num_threads()} torch threads",
        f"{'repeat':<8}{'GFLOP/s':>9}{'floor ms':>10}{'step ms':>10}{'tok/s':>9}{'floor tok/s':>13}{'ratio':>8}"
        f"{'cpu ms: floor':>15}{'step':>8}{'ratio':>7}",
    ]
    for index, r in enumerate(repeats):
        lines.append(
            f"{index:<8}{r.matmul_gflops:9.1f}{r.linear_floor_ms:10.1f}{r.step_ms_median:10.1f}"
            f"{args.seqs / r.step_ms_median * 1e3:9.1f}{args.seqs / r.linear_floor_ms * 1e3:13.1f}{r.ratio:8.2f}"
            f"{r.linear_floor_cpu_ms:15.1f}{r.step_cpu_ms:8.1f}{r.ratio_cpu:7.2f}"
        )
    lines += [
        f"step ms best {summary['step_ms']['best']:.1f}, median {summary['step_ms']['median']:.1f}; "
        f"ratio step / linear floor best {ratio['best']:.2f}, median {ratio['median']:.2f} "
        f"(in CPU time: best {cpu_ratio['best']:.2f}, median {cpu_ratio['median']:.2f})",
        f"target: step <= {TARGET_RATIO}x the linear floor (median of repeats): {verdict}",
        f"output digest {digest}",
    ]
    if profile is not None:
        lines += ["", *format_profile(profile)]
    return lines


def _document(args, repeats: list[Repeat], profile: StepProfile | None, digest: str) -> dict:
    from loadtest.comparison.cli import _source_state

    summary = _summary(repeats)
    return {
        "tool": "promptswap-decode-step-bench",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average": list(os.getloadavg()),
        },
        "source": _source_state(),
        "config": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "target_ratio": TARGET_RATIO,
        "target_holds": summary["ratio"]["median"] <= TARGET_RATIO,
        "summary": summary,
        "repeats": [asdict(r) | {"ratio": r.ratio, "ratio_cpu_time": r.ratio_cpu} for r in repeats],
        "profile": None if profile is None else asdict(profile) | {"host_python_ms": profile.host_python_ms},
        "output_digest": digest,
    }


if __name__ == "__main__":
    raise SystemExit(main())
