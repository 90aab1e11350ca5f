"""Cold prompt loads next to decoding streams, against a real `promptswap serve` on loopback (not a timed test).

    python -m loadtest.cold_load_bench [--model smollm2-135m-instruct] [--streams 16] [--cold-tasks 20]
        [--virtual-tokens 100] [--new-tokens 96] [--rounds 2] [--json FILE]

`--streams` base-model completions decode (streamed, greedy, exactly `--new-tokens` tokens each) while, once all
of them are decoding, `--cold-tasks` requests for tasks never used since the server started arrive one every
`--interval-s` (prefix tuning, `--virtual-tokens` each, 1 new token): each is read from the store, checksummed,
parsed and validated, then its K/V copied onto the device. The same streams run again without the cold requests
(nothing else sent), alternating over `--rounds`. Reported: the streams' inter-token latency, p50/p99, over the
window in which every stream decodes (from the last one's first token to the first one's last), and the ratio;
choose `--new-tokens` so the cold requests (`--cold-tasks` x `--interval-s`) fall well inside it. Every cold task
is a distinct random PEFT file (`loadtest.adapters`), uploaded before the server that is measured starts, so it
starts with all of them on disk and none in memory (the files may still sit in the OS page cache: what is measured
is the server's own work, not the disk's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from loadtest.loadgen.client import ClientOptions, LoadClient
from loadtest.loadgen.metrics import RequestRecord, percentile
from loadtest.loadgen.workload import RequestSpec
from loadtest.store_bench import Server, adapter_files, load_base_model

STREAM_PROMPT = "Write a long story about a lighthouse keeper and the sea."
COLD_PROMPT = "Hello"


@dataclass(frozen=True)
class RoundResult:
    with_cold_loads: bool
    itl_p50_ms: float  # the streams' inter-token gaps inside the window
    itl_p99_ms: float
    itl_max_ms: float
    num_gaps: int
    window_s: float  # every stream decoding: from the last one's first token to the first one's last
    cold_first_token_p50_ms: float | None  # the cold requests' own latency, None without them
    num_failed: int  # requests that did not succeed (streams and cold ones)


def build_cold_store(store: Path, model, work: Path, num_tasks: int, num_virtual_tokens: int) -> list[str]:
    """`num_tasks` distinct random prefix-tuning tasks, stored durably as an upload would; returns their names."""
    from loadtest.adapters import write_random_adapters
    from prompt_store.registry import PromptRegistry
    from prompt_store.storage import PromptStorage
    from server.config import StoreConfig
    from server.model.shape import model_shape

    adapters = write_random_adapters(model, work / "adapters", num_tasks, num_virtual_tokens, ("PREFIX_TUNING",))
    registry = PromptRegistry(model_shape(model), StoreConfig(directory=store), "base", PromptStorage(store))
    for adapter in adapters:
        registry.upload(adapter.task, *adapter_files(adapter.path))
    registry.close()
    return [adapter.task for adapter in adapters]


async def run_round(url: str, base_model: str, args: argparse.Namespace, cold_tasks: list[str]) -> RoundResult:
    """One round: the streams, and the cold requests if `cold_tasks` is not empty."""
    started = time.perf_counter()
    clock = lambda: time.perf_counter() - started  # noqa: E731
    client = LoadClient(ClientOptions(url=url, base_model=base_model, ignore_eos=True), clock)
    streams = [RequestRecord(index, None) for index in range(args.streams)]
    stream_jobs = [
        asyncio.create_task(client.send(RequestSpec(record.index, None, STREAM_PROMPT, 0, args.new_tokens), record))
        for record in streams
    ]
    while not all(record.chunk_times_s for record in streams) and not all(job.done() for job in stream_jobs):
        await asyncio.sleep(0.01)  # every stream is decoding: the window opens
    window_start = clock()
    colds = [RequestRecord(args.streams + index, task) for index, task in enumerate(cold_tasks)]
    cold_jobs = []
    for record in colds:
        spec = RequestSpec(record.index, record.task, COLD_PROMPT, 0, 1)
        cold_jobs.append(asyncio.create_task(client.send(spec, record)))
        await asyncio.sleep(args.interval_s)
    await asyncio.gather(*cold_jobs, *stream_jobs)
    await client.close()
    window_end = min((record.chunk_times_s[-1] for record in streams if record.chunk_times_s), default=window_start)
    gaps = [
        later - earlier
        for record in streams
        for earlier, later in zip(record.chunk_times_s, record.chunk_times_s[1:])
        if window_start <= earlier and later <= window_end
    ]
    cold_latencies = [record.e2e_s for record in colds if record.is_success]
    num_failed = sum(not record.is_success for record in streams + colds)
    return RoundResult(
        with_cold_loads=bool(cold_tasks),
        itl_p50_ms=_ms(percentile(gaps, 50)),
        itl_p99_ms=_ms(percentile(gaps, 99)),
        itl_max_ms=_ms(max(gaps, default=float("nan"))),
        num_gaps=len(gaps),
        window_s=window_end - window_start,
        cold_first_token_p50_ms=_ms(percentile(cold_latencies, 50)) if cold_latencies else None,
        num_failed=num_failed,
    )


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def summarize(rounds: list[RoundResult]) -> dict:
    def pooled(with_cold: bool, field: str) -> float:
        values = [getattr(r, field) for r in rounds if r.with_cold_loads is with_cold]
        return sorted(values)[len(values) // 2]  # median over rounds

    summary = {
        f"{label}_{field}": pooled(with_cold, field)
        for with_cold, label in ((False, "without"), (True, "with"))
        for field in ("itl_p50_ms", "itl_p99_ms")
    }
    summary["p50_ratio"] = round(summary["with_itl_p50_ms"] / summary["without_itl_p50_ms"], 2)
    summary["p99_ratio"] = round(summary["with_itl_p99_ms"] / summary["without_itl_p99_ms"], 2)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a served model (folder or default name)")
    parser.add_argument("--streams", type=int, default=16, help="decoding streams (default: %(default)s)")
    parser.add_argument("--cold-tasks", type=int, default=20, help="cold tasks per round (default: %(default)s)")
    parser.add_argument("--virtual-tokens", type=int, default=100, help="per cold task (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=96, help="tokens per stream (default: %(default)s)")
    parser.add_argument("--interval-s", type=float, default=0.2, help="between cold requests (default: 0.2)")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of rounds, without/with (default: 2)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    model = load_base_model(args.model)
    with tempfile.TemporaryDirectory(prefix="cold-load-bench-") as tmp:
        work = Path(tmp)
        tasks = build_cold_store(work / "store", model, work, args.rounds * args.cold_tasks, args.virtual_tokens)
        del model
        server = Server(args.model, work / "store", work / "server.log")
        try:
            base_model = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"][0]["id"]
            rounds = asyncio.run(_all_rounds(server.url, base_model, args, tasks))
        finally:
            server.stop()
    for result in rounds:
        label = "with cold loads   " if result.with_cold_loads else "without cold loads"
        cold = (
            "" if result.cold_first_token_p50_ms is None else f"  cold request p50 {result.cold_first_token_p50_ms} ms"
        )
        print(
            f"{label}  ITL p50 {result.itl_p50_ms:7.1f}  p99 {result.itl_p99_ms:7.1f}  max {result.itl_max_ms:7.1f} ms"
            f"  ({result.num_gaps} gaps in {result.window_s:.1f} s, {result.num_failed} failed){cold}"
        )
    summary = summarize(rounds)
    print(f"ITL with / without cold loads: p50 x{summary['p50_ratio']}, p99 x{summary['p99_ratio']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "rounds": [asdict(r) for r in rounds],
                    "summary": summary,
                },
                indent=1,
            )
        )
    return 0 if all(result.num_failed == 0 for result in rounds) else 1


async def _all_rounds(url: str, base_model: str, args: argparse.Namespace, tasks: list[str]) -> list[RoundResult]:
    await run_round(url, base_model, argparse.Namespace(**vars(args) | {"new_tokens": 4}), [])  # warm-up
    rounds = []
    for index in range(args.rounds):
        rounds.append(await run_round(url, base_model, args, []))
        rounds.append(
            await run_round(url, base_model, args, tasks[index * args.cold_tasks : (index + 1) * args.cold_tasks])
        )
    return rounds


if __name__ == "__main__":
    raise SystemExit(main())
