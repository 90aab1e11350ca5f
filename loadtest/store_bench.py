"""Prompt store benchmark against a real `promptswap serve` on loopback (not a timed test).

    python -m loadtest.store_bench [--model smollm2-135m-instruct] [--uploads 50] [--virtual-tokens 20,100]
        [--startup-tasks 10000] [--cold-tasks 10] [--s3 s3://BUCKET/PREFIX --s3-endpoint URL] [--json FILE]

1. Upload-to-servable latency, per PEFT type and prompt length: a task gets `--uploads` new versions, one after
   another (two different random adapters alternating; the store prunes as it goes). For each: PUT time (validate,
   write durably, activate), and PUT start -> the first successful generation (1 new token) that reports the new
   version. p50/p90/p99/max.
   With `--s3`, the same uploads again against a second server whose store is that bucket (an S3-compatible
   server you started, e.g. SeaweedFS's `weed mini`; credentials from the AWS variables), in the same run, and the
   ratio of their p50s to the local store's.
2. Start-up with `--startup-tasks` stored tasks (half prompt tuning, half prefix tuning), and the latency of a cold
   task's first request (never used: read from disk, parsed, placed on the device, and for prompt tuning its
   virtual tokens' K/V computed) against the same request again (warm) and the base model.

The adapters are real PEFT files for the served model (`loadtest.adapters`, random values, no training). Needs
torch and peft.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "store-bench-admin-token"
KINDS = ("PROMPT_TUNING", "PREFIX_TUNING")
PROMPT = "Hello"
READY_TIMEOUT_S = 600
CONFIG_FILE, MODEL_FILE = "adapter_config.json", "adapter_model.safetensors"


@dataclass(frozen=True)
class Percentiles:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> Percentiles:
        ordered = sorted(seconds)

        def at(q: float) -> float:  # nearest rank: with 50 samples p99 is the largest
            return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000

        return cls(at(0.50), at(0.90), at(0.99), ordered[-1] * 1000)

    def __str__(self) -> str:
        return f"p50 {self.p50_ms:7.1f}  p90 {self.p90_ms:7.1f}  p99 {self.p99_ms:7.1f}  max {self.max_ms:7.1f} ms"


@dataclass(frozen=True)
class UploadResult:
    peft_type: str
    num_virtual_tokens: int
    file_bytes: int  # adapter_model.safetensors
    num_uploads: int
    put: Percentiles  # PUT sent -> 200 received: validated, stored durably, active
    servable: Percentiles  # PUT sent -> a generation (1 token) served by the new version received
    warm_generation: Percentiles  # the same generation once more: what `servable` costs without the upload
    put_samples_ms: list[float]  # in upload order, to tell warm-up from steady-state outliers


class Server:
    """`python -m server serve` on a free loopback port, its log in `log_path`."""

    def __init__(self, model: str, store: Path | str, log_path: Path, env: dict[str, str] | None = None):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        command = [sys.executable, "-m", "server", "serve", "--model", model, "--port", str(port)]
        command += ["--store", str(store), "--admin-token", ADMIN_TOKEN]
        clean_env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTSWAP_") or k.endswith("CACHE_DIR")}
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=clean_env | {"HF_HUB_OFFLINE": "1"} | (env or {}),
            stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.ready_s = self._wait_ready()

    def _wait_ready(self) -> float:
        while time.perf_counter() - self.started_at < READY_TIMEOUT_S:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return time.perf_counter() - self.started_at
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {READY_TIMEOUT_S} s")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def adapter_files(path: Path) -> tuple[bytes, bytes]:
    return (path / CONFIG_FILE).read_bytes(), (path / MODEL_FILE).read_bytes()


def upload(client: httpx.Client, task: str, files: tuple[bytes, bytes]) -> httpx.Response:
    parts = {"adapter_config": (CONFIG_FILE, files[0]), "adapter_model": (MODEL_FILE, files[1])}
    return client.put(f"/v1/admin/prompts/{task}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, files=parts)


def generate(client: httpx.Client, task: str | None, max_new_tokens: int = 1) -> dict:
    params = {"task": task} if task else {}
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": max_new_tokens}}
    response = client.post("/v1/generate", params=params, json=body)
    response.raise_for_status()
    return response.json()


def clone_task(store: Path, template: str, task: str) -> None:
    """A copy of a stored task under another name (hard links + its manifest renamed): what an upload of the same
    files would have written, without the fsyncs. For building large stores quickly; the store must not be served."""
    source, target = store / "tasks" / template, store / "tasks" / task
    manifest = json.loads((source / "manifest.json").read_bytes())
    for version in (f"v{record['version']}" for record in manifest["versions"]):
        (target / version).mkdir(parents=True)
        for name in (CONFIG_FILE, MODEL_FILE):
            (target / version / name).hardlink_to(source / version / name)
    (target / "manifest.json").write_text(json.dumps(manifest | {"task": task}))


# ---- 1. upload to servable -------------------------------------------------------------------------------------
def bench_uploads(client: httpx.Client, adapters: dict, num_uploads: int) -> list[UploadResult]:
    results = []
    for (peft_type, num_virtual_tokens), pair in adapters.items():
        task = f"bench-{peft_type.lower().replace('_', '-')}-{num_virtual_tokens}"
        files = [adapter_files(adapter.path) for adapter in pair]
        assert upload(client, task, files[1]).status_code == 201
        generate(client, task)  # the task's first use is not what this measures
        put_s, servable_s, warm_s = [], [], []
        for index in range(num_uploads):
            started = time.perf_counter()
            response = upload(client, task, files[index % 2])
            put_s.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
            served = generate(client, task)
            servable_s.append(time.perf_counter() - started)
            if served["details"]["task_version"] != response.json()["version"]:
                raise RuntimeError(f"{task}: the request after the upload was served by an old version")
            started = time.perf_counter()
            generate(client, task)
            warm_s.append(time.perf_counter() - started)
        put, servable, warm = Percentiles.of(put_s), Percentiles.of(servable_s), Percentiles.of(warm_s)
        result = UploadResult(
            peft_type,
            num_virtual_tokens,
            len(files[0][1]),
            num_uploads,
            put,
            servable,
            warm,
            [round(seconds * 1000, 2) for seconds in put_s],
        )
        print(f"{peft_type:<14} p={num_virtual_tokens:<4} {result.file_bytes / 1e6:5.2f} MB  PUT      {put}")
        print(f"{'':<33}servable {servable}")
        print(f"{'':<33}warm gen {warm}", flush=True)
        results.append(result)
    return results


def bench_s3_uploads(args, adapters: dict, lengths: list[int], work: Path) -> list[UploadResult]:
    env = {"PROMPTSWAP_STORE": args.s3}
    if args.s3_endpoint:
        env["PROMPTSWAP_S3_ENDPOINT"] = args.s3_endpoint
    server = Server(args.model, args.s3, work / "server-s3.log", env)
    print(f"S3 server ready in {server.ready_s:.1f} s ({args.s3}); {args.uploads} uploads each", flush=True)
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            return bench_uploads(client, {k: v for k, v in adapters.items() if k[1] in lengths}, args.uploads)
    finally:
        server.stop()


# ---- 2. start-up and cold tasks --------------------------------------------------------------------------------
def build_store(store: Path, model, adapters: dict, num_tasks: int) -> list[str]:
    """`num_tasks` tasks (kinds alternating, 20 virtual tokens); returns their names."""
    from prompt_store.registry import PromptRegistry
    from prompt_store.storage import PromptStorage
    from server.config import StoreConfig
    from server.model.shape import model_shape

    registry = PromptRegistry(model_shape(model), StoreConfig(directory=store), "base", PromptStorage(store))
    names = [f"{KINDS[index % 2].lower().replace('_', '-')}-{index:05d}" for index in range(num_tasks)]
    for index, kind in enumerate(KINDS):
        registry.upload(names[index], *adapter_files(adapters[(kind, 20)][0].path))
    registry.close()
    for index in range(len(KINDS), num_tasks):
        clone_task(store, names[index % len(KINDS)], names[index])
    return names


def bench_startup(model_name: str, model, adapters: dict, work: Path, num_tasks: int, num_cold: int) -> dict:
    store = work / "startup-store"
    started = time.perf_counter()
    names = build_store(store, model, adapters, num_tasks)
    print(f"built a store of {num_tasks} tasks in {time.perf_counter() - started:.1f} s", flush=True)
    server = Server(model_name, store, work / "startup-server.log")
    try:
        log = server.log_path.read_text()
        load_line = next((line for line in log.splitlines() if "tasks loaded in" in line), "?")
        print(f"{num_tasks} tasks: ready in {server.ready_s:.1f} s  ({load_line.split(': ', 1)[-1]})", flush=True)
        with httpx.Client(base_url=server.url, timeout=120) as client:
            timings = cold_and_warm(client, names, num_cold)
    finally:
        server.stop()
    for name, seconds in timings.items():
        print(f"  first token, {name:<22} {Percentiles.of(seconds)}")
    return {"num_tasks": num_tasks, "ready_s": server.ready_s, "store_load": load_line,
            "first_token": {name: asdict(Percentiles.of(seconds)) for name, seconds in timings.items()}}  # fmt: skip


def cold_and_warm(client: httpx.Client, names: list[str], num_cold: int) -> dict[str, list[float]]:
    def timed(task: str | None) -> float:
        started = time.perf_counter()
        generate(client, task)
        return time.perf_counter() - started

    for _ in range(3):
        timed(None)  # warm-up: the first requests of a process are slower for reasons unrelated to the store
    timings: dict[str, list[float]] = {"base model": [timed(None) for _ in range(num_cold)]}
    rng = random.Random(0)
    for offset, kind in enumerate(KINDS):
        label = kind.lower().replace("_", " ")
        for task in rng.sample(names[len(KINDS) + offset :: len(KINDS)], num_cold):
            timings.setdefault(f"{label}, cold", []).append(timed(task))
            timings.setdefault(f"{label}, warm", []).append(timed(task))
    return timings


def load_base_model(name: str):
    from transformers import AutoModelForCausalLM

    from server.config import load_config
    from server.model.loader import resolve_model_path

    return AutoModelForCausalLM.from_pretrained(resolve_model_path(name, load_config({}).cache_dir))


# ---- main ------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a served model (folder or default name)")
    parser.add_argument("--uploads", type=int, default=50, help="timed uploads per PEFT type and length (0: skip)")
    parser.add_argument("--virtual-tokens", default="20,100", help="prompt lengths, comma-separated")
    parser.add_argument("--startup-tasks", type=int, default=10_000, help="0: skip the start-up benchmark")
    parser.add_argument("--cold-tasks", type=int, default=10, help="cold tasks timed per kind")
    parser.add_argument("--s3", help="also time the uploads on a server whose store is s3://BUCKET/PREFIX")
    parser.add_argument("--s3-endpoint", help="the S3-compatible server's URL (PROMPTSWAP_S3_ENDPOINT)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from loadtest.adapters import write_random_adapters

    model = load_base_model(args.model)
    lengths = [int(length) for length in args.virtual_tokens.split(",")]
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        work = Path(tmp)
        adapters = {  # (peft_type, virtual tokens) -> two different adapters
            (kind, p): write_random_adapters(model, work / f"{kind}-{p}", 2, p, (kind,), seed=p)
            for kind in KINDS
            for p in sorted({*lengths, 20})
        }
        uploads = []
        if args.uploads:
            server = Server(args.model, work / "store", work / "server.log")
            print(f"server ready in {server.ready_s:.1f} s (empty store); {args.uploads} uploads each", flush=True)
            try:
                with httpx.Client(base_url=server.url, timeout=120) as client:
                    timed = {k: v for k, v in adapters.items() if k[1] in lengths}
                    uploads = bench_uploads(client, timed, args.uploads)
            finally:
                server.stop()
        s3_uploads = []
        if args.uploads and args.s3:
            s3_uploads = bench_s3_uploads(args, adapters, lengths, work)
            for local, s3 in zip(uploads, s3_uploads, strict=True):
                put, servable = s3.put.p50_ms / local.put.p50_ms, s3.servable.p50_ms / local.servable.p50_ms
                print(
                    f"S3 / local, {local.peft_type} p={local.num_virtual_tokens}: "
                    f"p50 PUT {put:.2f}x, servable {servable:.2f}x"
                )
        startup = None
        if args.startup_tasks:
            startup = bench_startup(args.model, model, adapters, work, args.startup_tasks, args.cold_tasks)
    if args.json:
        document = {
            "model": args.model,
            "uploads": [asdict(result) for result in uploads],
            "s3_uploads": [asdict(result) for result in s3_uploads],
            "startup": startup,
        }
        args.json.write_text(json.dumps(document, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
