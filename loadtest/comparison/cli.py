"""`python -m loadtest.comparison`: run the arms, print tokens/s, ratios, roofline fractions; write JSON."""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch

from loadtest.comparison.results import ArmResult
from loadtest.comparison.roofline import Roofline, machine_speed_probe, measure_roofline

EPILOG = """\
What each arm does (same prompts, same model, fp32, greedy, exactly --new-tokens per request):
  a  per request: PeftModel.from_pretrained(base, its adapter), generate alone. Slow, so it is timed on the
     first --arm-a-requests requests only and reported as a per-token rate (tokens / time).
  b  PEFT at its best: group requests by task, one PeftModel per group, batched generate (left padding) of at
     most --concurrency rows. PEFT can not batch different tasks together.
  c  transformers' continuous batching, model.generate_batch, base model, no prompts, at most --concurrency
     requests per batch (--cb-page-size, --cb-max-batch-tokens).
  d  promptswap's LLMEngine in-process, no prompts, at most --concurrency requests admitted at once.
  e  promptswap with the task mix: every request uses one of --tasks random adapters (half prompt tuning, half
     prefix tuning, --virtual-tokens each, uploaded as PEFT-saved files), Zipf-distributed (--zipf).
     A fresh engine per run: the tasks' prompts are cold when it starts.
  f  a control for (e): promptswap with no prompts, each prompt lengthened by --virtual-tokens real tokens, so
     every query attends over as many keys as in (e). (e)/(f) near 1 means a soft prompt costs what its
     length costs and nothing more.
  g  the chat workload on promptswap, prefix caching on (as served): --chat-requests requests, each the chat
     template over one shared system prompt of --chat-system-tokens tokens and a question of its own;
     --chat-base-fraction use the base model, the rest a task (Zipf over --tasks); --chat-concurrency in flight.
  h  the same with prefix caching off (--no-prefix-caching).

decode tok/s: the rate while the first wave of requests (min(--requests, --concurrency)) is all decoding,
read off per-token timestamps (arms c, d, e). roofline: measured fp32 matmul rate / (2 x parameters).
Targets checked: (e)/(a) >= 10, (e)/(c) >= 1.2, (e)/(d) >= 0.97, (e) decode >= 60% of the roofline;
chat: TTFT p50 (h)/(g) >= 2, and (g) reuses >= 75% of the shared prefix of requests whose task came before.
"""

TARGETS = (("e/a", 10.0), ("e/c", 1.2), ("e/d", 0.97))
CHAT_TTFT_TARGET = 2.0  # TTFT p50 without prefix caching / with it
CHAT_HIT_TARGET = 0.75  # shared-prefix tokens reused by requests whose context was seen before
ARMS = "abcdefgh"
REPEATED_ARMS = "cdefgh"  # interleaved by --repeats; (a) and (b) are too slow to repeat
DECODE_ROOFLINE_TARGET = 0.60


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.comparison",
        description="One process, one run, the same requests: PEFT, transformers' "
        "continuous batching and promptswap, in tokens/s.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="the embedded default's name or a local transformers folder (default: %(default)s)",
    )
    parser.add_argument("--requests", type=int, default=64, help="requests per arm (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per request (default: 32)")
    parser.add_argument("--arms", default=ARMS, help=f"which arms, e.g. 'cde' or 'a,e' (default: {ARMS})")
    parser.add_argument("--tasks", type=int, default=100, help="random adapters (default: %(default)s)")
    parser.add_argument("--virtual-tokens", type=int, default=20, help="per adapter (default: %(default)s)")
    parser.add_argument("--zipf", type=float, default=1.0, help="task popularity exponent (default: 1)")
    parser.add_argument("--arm-a-requests", type=int, default=8, help="requests arm (a) is timed on (default: 8)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of arms c, d, e, f, interleaved (a shared machine is noisy); the best run of "
        "each is reported, all are in the JSON. Arms a and b run once.",
    )
    parser.add_argument("--chat-requests", type=int, default=64, help="arms (g), (h) (default: %(default)s)")
    parser.add_argument(
        "--chat-system-tokens", type=int, default=200, help="shared system prompt length (default: %(default)s)"
    )
    parser.add_argument(
        "--chat-base-fraction", type=float, default=0.2, help="chat requests without a task (default: %(default)s)"
    )
    parser.add_argument(
        "--chat-concurrency", type=int, default=16, help="chat requests in flight (default: %(default)s)"
    )
    parser.add_argument("--cb-page-size", type=int, default=16, help="arm (c) page size (default: 16)")
    parser.add_argument("--cb-max-batch-tokens", type=int, default=256, help="arm (c) step budget (default: 256)")
    parser.add_argument(
        "--no-cb-prefix-sharing",
        dest="cb_prefix_sharing",
        action="store_false",
        help="arm (c) without transformers' block sharing of common prompt prefixes",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("loadtest-results/comparison.json"),
        help="results file (default: %(default)s)",
    )
    parser.add_argument("--plot", type=Path, help="write a PNG bar chart of the arms to this file (matplotlib)")
    parser.add_argument("--profile", type=Path, help="write a torch profiler table of arm (e) to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    arms = [arm for arm in args.arms.replace(",", "") if arm in ARMS]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(args.seed)
    bench = Bench(args)
    started_load = _load_average()
    results: dict[str, list[ArmResult]] = {arm: [] for arm in arms}
    for arm in "ab":
        if arm in arms:
            results[arm].append(bench.run(arm))
    for _ in range(args.repeats):
        for arm in arms:
            if arm in REPEATED_ARMS:
                results[arm].append(bench.run(arm))
    bench.measure_roofline_again()
    best = {arm: max(runs, key=lambda r: r.tokens_per_s) for arm, runs in results.items()}
    print(format_report(args, bench, best))
    document = results_document(args, bench, results, best, [started_load, _load_average()])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=1) + "\n")
    print(f"results: {args.json}")
    if args.plot:
        from loadtest.comparison.plot import write_comparison_plot

        title = (
            f"{args.model}: {args.requests} requests, {args.concurrency} concurrent, {args.new_tokens} new tokens each"
        )
        print(f"plot:    {write_comparison_plot(best, bench.roofline, args.plot, title)}")
    return 0


class Bench:
    """The shared pieces (model path, tokenizer, adapters, requests, roofline), and one runner per arm."""

    def __init__(self, args: argparse.Namespace):
        from transformers import AutoTokenizer

        from loadtest.adapters import write_random_adapters
        from loadtest.comparison.workload import build_bench_requests
        from server.config import load_config
        from server.model import resolve_model_path

        self.args = args
        self.cache_dir = load_config({}).cache_dir
        self.model_path = resolve_model_path(args.model, self.cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        self.pad_token_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        )
        self.base = self.load_hf_model()
        self._adapter_dir = tempfile.TemporaryDirectory(prefix="comparison-adapters-")
        self.adapters = write_random_adapters(
            self.base, Path(self._adapter_dir.name), args.tasks, args.virtual_tokens, seed=args.seed
        )
        self.requests = build_bench_requests(self.tokenizer, self.adapters, args.requests, args.zipf, args.seed)
        self.rooflines = [measure_roofline(self.base, min(args.concurrency, args.requests))]
        self.runners: dict[str, Callable[[], ArmResult]] = {
            "a": self._arm_a,
            "b": self._arm_b,
            "c": self._arm_c,
            "d": lambda: self._arm_engine("d"),
            "e": lambda: self._arm_engine("e"),
            "f": lambda: self._arm_engine("f"),
            "g": lambda: self._arm_chat("g"),
            "h": lambda: self._arm_chat("h"),
        }

    @property
    def roofline(self) -> Roofline:
        """The best measurement: the ceiling is what the machine does when other jobs let it."""
        return max(self.rooflines, key=lambda roofline: roofline.matmul_gflops)

    def measure_roofline_again(self) -> None:
        self.rooflines.append(measure_roofline(self.base, min(self.args.concurrency, self.args.requests)))

    def load_hf_model(self):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32, local_files_only=True)
        return model.eval().requires_grad_(False)

    def run(self, arm: str) -> ArmResult:
        print(f"arm ({arm}) ...", file=sys.stderr, flush=True)
        probe = machine_speed_probe()
        result = self.runners[arm]()
        # A low probe means other jobs were using the CPU when this arm started.
        result = replace(result, extra={**result.extra, "matmul_gflops_before": round(probe, 1)})
        gc.collect()
        print(
            f"arm ({arm}): {result.tokens_per_s:.1f} tok/s ({result.num_tokens} tokens in {result.wall_s:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
        return result

    def _arm_a(self) -> ArmResult:
        from loadtest.comparison import arm_peft

        subset = self.requests[: self.args.arm_a_requests]
        arm_peft.warm_up(self.base, subset[0], self.pad_token_id)
        result = arm_peft.run_one_at_a_time(self.base, subset, self.args.new_tokens, self.pad_token_id)
        note = (
            f"timed on the first {len(subset)} of {len(self.requests)} requests (a per-token rate); "
            f"adapter loading {result.extra['adapter_load_s']:.2f} s of it"
        )
        return replace(result, note=note)

    def _arm_b(self) -> ArmResult:
        from loadtest.comparison import arm_peft

        arm_peft.warm_up(self.base, self.requests[0], self.pad_token_id)
        return arm_peft.run_grouped_by_task(
            self.base, self.requests, self.args.new_tokens, self.args.concurrency, self.pad_token_id
        )

    def _arm_c(self) -> ArmResult:
        from loadtest.comparison import arm_hf_continuous

        model = self.load_hf_model()  # generate_batch switches the attention implementation; keep `base` clean
        config = arm_hf_continuous.continuous_batching_config(
            self.requests,
            self.args.new_tokens,
            self.args.concurrency,
            self.args.cb_page_size,
            self.args.cb_max_batch_tokens,
            self.args.cb_prefix_sharing,
        )
        arm_hf_continuous.warm_up(model, self.requests, config)
        return arm_hf_continuous.run_generate_batch(
            model, self.requests, self.args.new_tokens, self.args.concurrency, config
        )

    def _arm_engine(self, arm: str) -> ArmResult:
        from loadtest.comparison import arm_engine
        from server.config import EngineConfig

        engine = arm_engine.build_engine(str(self.model_path), self.cache_dir, self.adapters, EngineConfig())
        arm_engine.warm_up(engine, self.requests)
        with_tasks = arm == "e"
        extra_tokens = self.args.virtual_tokens if arm == "f" else 0
        description = {
            "d": "promptswap engine, no prompts",
            "e": "promptswap engine, task mix",
            "f": f"promptswap engine, no prompts, prompts {extra_tokens} tokens longer",
        }[arm]
        with _profiled(self.args.profile if with_tasks else None):
            return arm_engine.run_engine(
                engine,
                self.requests,
                self.args.new_tokens,
                self.args.concurrency,
                with_tasks,
                arm,
                description,
                extra_tokens,
            )

    def _arm_chat(self, arm: str) -> ArmResult:
        from loadtest.comparison import arm_chat, arm_engine
        from loadtest.comparison.chat_workload import build_chat_requests
        from server.config import EngineConfig

        args = self.args
        requests = build_chat_requests(
            self.tokenizer,
            self.adapters,
            args.chat_requests,
            args.chat_system_tokens,
            args.chat_base_fraction,
            args.zipf,
            args.seed,
        )
        caching = arm == "g"
        config = EngineConfig(enable_prefix_caching=caching)
        engine = arm_engine.build_engine(str(self.model_path), self.cache_dir, self.adapters, config)
        arm_engine.warm_up(engine, self.requests)  # other prompts: nothing of the chat workload is cached before
        description = f"promptswap engine, chat workload, prefix caching {'on' if caching else 'off'}"
        return arm_chat.run_chat(engine, requests, args.new_tokens, args.chat_concurrency, arm, description)


class _profiled:
    """torch.profiler around a block, its op table written to `path`; does nothing when path is None."""

    def __init__(self, path: Path | None):
        self.path = path

    def __enter__(self):
        if self.path:
            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()

    def __exit__(self, *exc):
        if self.path:
            self.profiler.__exit__(*exc)
            table = self.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(table + "\n")
        return False


def ratios(best: dict[str, ArmResult]) -> dict[str, float]:
    return {
        f"e/{arm}": best["e"].tokens_per_s / best[arm].tokens_per_s for arm in "abcdf" if "e" in best and arm in best
    }


def format_report(args, bench: Bench, best: dict[str, ArmResult]) -> str:
    roof = bench.roofline
    lines = [
        *_header(args, bench),
        "",
        f"{'arm':<4}{'tok/s':>9}{'of roof':>9}{'decode tok/s':>14}{'of roof':>9}{'wall s':>9}{'reqs':>6}  what",
    ]
    for arm, result in sorted(best.items()):
        decode = result.decode_tokens_per_s
        decode_text = f"{decode:9.1f} ({result.decode_batch:>2})" if decode else f"{'-':>14}"
        decode_roof = f"{decode / roof.tokens_per_s:8.1%}" if decode else f"{'-':>9}"
        lines.append(
            f"({arm}) {result.tokens_per_s:8.1f}{result.tokens_per_s / roof.tokens_per_s:9.1%}"
            f"{decode_text}{decode_roof}{result.wall_s:9.1f}{result.num_requests:6d}  {result.description}"
        )
        if result.note:
            lines.append(f"{'':<4}{'':>9}  {result.note}")
    lines.append("")
    lines += [_target_line(name, value, dict(TARGETS).get(name)) for name, value in ratios(best).items()]
    lines += _chat_lines(best)
    if "e" in best and best["e"].decode_tokens_per_s:
        fraction = best["e"].decode_tokens_per_s / roof.tokens_per_s
        verdict = "holds" if fraction >= DECODE_ROOFLINE_TARGET else "does not hold"
        lines.append(
            f"(e) decode at {best['e'].decode_batch} sequences: {fraction:.1%} of the roofline "
            f"(target >= {DECODE_ROOFLINE_TARGET:.0%}: {verdict})"
        )
    return "\n".join(lines)


def chat_ratios(best: dict[str, ArmResult]) -> dict[str, float]:
    """TTFT p50 without caching / with it, and (g)'s reuse of the shared prefix; from the best run of each."""
    if "g" not in best:
        return {}
    figures = {"g shared-prefix hit rate": best["g"].extra["shared_prefix_hit_rate_after_warm_up"]}
    if "h" in best:
        figures["h/g ttft p50"] = best["h"].extra["ttft_p50_s"] / best["g"].extra["ttft_p50_s"]
        figures["h/g ttft p50, repeated contexts"] = (
            best["h"].extra["ttft_p50_repeat_context_s"] / best["g"].extra["ttft_p50_repeat_context_s"]
        )
        figures["g/h tok/s"] = best["g"].tokens_per_s / best["h"].tokens_per_s
    return figures


def _chat_lines(best: dict[str, ArmResult]) -> list[str]:
    figures = chat_ratios(best)
    lines = []
    if figures:
        chat = best["g"].extra
        lines.append(
            f"chat workload: {best['g'].num_requests} requests, {chat['concurrency']} in flight, prompts of "
            f"{chat['prompt_tokens_per_request']:.0f} tokens on average ({chat['shared_prefix_tokens']} shared), "
            f"{chat['base_requests']} on the base model, {chat['contexts']} contexts (task versions or the base model)"
        )
    if "h/g ttft p50" in figures:
        value = figures["h/g ttft p50"]
        verdict = "holds" if value >= CHAT_TTFT_TARGET else "does not hold"
        lines.append(
            f"chat: TTFT p50 without / with prefix caching = {value:.2f} (target >= {CHAT_TTFT_TARGET:g}: {verdict});"
            f" tok/s with / without = {figures['g/h tok/s']:.2f}; TTFT p50 without / with of the requests whose "
            f"context came before = {figures['h/g ttft p50, repeated contexts']:.2f}"
        )
    if figures:
        value = figures["g shared-prefix hit rate"]
        verdict = "holds" if value >= CHAT_HIT_TARGET else "does not hold"
        lines.append(
            f"chat: shared prefix reused by requests of a context seen before = {value:.0%} "
            f"(target >= {CHAT_HIT_TARGET:.0%}: {verdict})"
        )
    return lines


def _header(args, bench: Bench) -> list[str]:
    roof = bench.roofline
    kinds = " + ".join(sorted({adapter.peft_type for adapter in bench.adapters}))
    measured = ", ".join(f"{r.matmul_gflops:.0f}" for r in bench.rooflines)
    return [
        "",
        (
            f"model {args.model}: {roof.num_params / 1e6:.1f}M parameters, float32, CPU, {torch.get_num_threads()} "
            f"torch threads; {args.requests} requests, {args.concurrency} concurrent, {args.new_tokens} new tokens "
            f"each (EOS ignored); prompts {_prompt_lengths(bench)} tokens"
        ),
        (
            f"tasks: {args.tasks} random adapters ({kinds}, {args.virtual_tokens} virtual tokens), Zipf {args.zipf:g}; "
            f"{len({r.adapter.task for r in bench.requests})} distinct tasks in the requests"
        ),
        (
            f"roofline: fp32 matmul {roof.matmul_gflops:.1f} GFLOP/s (decode shape {roof.decode_shape_gflops:.1f}) / "
            f"(2 x {roof.num_params / 1e6:.1f}M) = {roof.tokens_per_s:.0f} tokens/s (best of {measured} GFLOP/s, "
            f"measured before and after the arms)"
        ),
        (
            f"linear floor: the model's own Linear layers alone at batch {min(args.concurrency, args.requests)} "
            f"(weights streamed from memory as in a real step) run at {roof.linear_floor_tokens_per_s:.0f} tokens/s "
            f"= {roof.linear_floor_tokens_per_s / roof.tokens_per_s:.0%} of the roofline: no decode step can be "
            f"faster"
        ),
    ]


def _target_line(name: str, value: float, target: float | None) -> str:
    text = f"({name[0]})/({name[2]}) = {value:7.2f}"
    if target is None:
        return text
    return f"{text}   target >= {target:g}: {'holds' if value >= target else 'does not hold'}"


def _prompt_lengths(bench: Bench) -> str:
    lengths = [len(r.prompt_token_ids) for r in bench.requests]
    return f"{min(lengths)}-{max(lengths)}"


def results_document(args, bench: Bench, results, best, load_averages) -> dict:
    roof: Roofline = bench.roofline
    return {
        "tool": "promptswap-comparison",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_before_after": load_averages,
        },
        "source": _source_state(),
        "config": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "roofline": asdict(roof),
        "roofline_measurements": [asdict(measured) for measured in bench.rooflines],  # before and after the arms
        "best": {
            arm: asdict(result)
            | {"tokens_per_s": result.tokens_per_s, "fraction_of_roofline": result.tokens_per_s / roof.tokens_per_s}
            for arm, result in best.items()
        },
        "runs": {
            arm: [asdict(run) | {"tokens_per_s": run.tokens_per_s} for run in runs] for arm, runs in results.items()
        },
        "ratios": ratios(best),
        "chat": chat_ratios(best),
        "targets": {name: {"target": target, "value": ratios(best).get(name)} for name, target in TARGETS},
    }


def _source_state() -> dict:
    """The commit measured, and the files changed on top of it (the engine may be mid-edit)."""

    def git(*command: str) -> str:
        try:
            return subprocess.run(
                ["git", *command],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
                cwd=Path(__file__).resolve().parents[2],
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "changed": git("status", "--porcelain").splitlines()}


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None
