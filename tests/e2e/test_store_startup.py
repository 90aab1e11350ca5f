"""A real server over a store of 10,000 tasks: it starts without loading tensors, reports the damaged entries it
skipped (log and metric), serves any task (a cold one's first request reads it from disk), and a second server on
the same store refuses to start. Timings are printed (and recorded in docs/benchmarks.md), not asserted."""

from __future__ import annotations

import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from transformers import AutoModelForCausalLM

from loadtest.store_bench import clone_task
from prompt_store.registry import PromptRegistry
from prompt_store.storage import PromptStorage
from server.config import StoreConfig
from server.model.shape import model_shape
from tests.e2e.server_process import ROOT, free_port, metric_value, start_server
from tests.e2e.store_client import MODEL_FILE, adapter_bytes, generate

NUM_TASKS = 10_000
ADAPTERS = {  # kind -> (peft_type, training options), the same as test_e2e_generation's (trained once)
    "prompt": ("PROMPT_TUNING", {}),
    "prefix": ("PREFIX_TUNING", {"prefix_projection": True}),
}
DAMAGED = ("damaged-manifest", "damaged-file")
PROMPT = "The capital of France is"
MAX_NEW_TOKENS = 4
NUM_COLD_PER_KIND = 5
HOST_CACHE_TASKS = 4  # small tiers, so the cold tasks below evict each other from host memory and the device
TIER_ENV = {
    "PROMPTSWAP_HOST_CACHE_TASKS": str(HOST_CACHE_TASKS),
    "PROMPTSWAP_PROMPT_TABLE_ROWS": "24",  # three 8-token prompt-tuning tasks
    "PROMPTSWAP_KV_BLOCKS": "12",  # a prefix (or materialized prompt) takes one 16-token block
    "PROMPTSWAP_MAX_MODEL_LEN": "128",
}


def task_name(index: int) -> str:
    kind = "prompt" if index % 2 == 0 else "prefix"
    return f"{kind}-{index:05d}"


def build_store(store: Path, model_dir: Path, adapters: dict[str, Path]) -> float:
    """NUM_TASKS valid tasks (every other one prefix tuning) plus the DAMAGED entries; returns seconds taken.

    Two tasks go through the registry; the rest are their copies (hard links + a manifest naming the copy), which
    is what the registry would have written for the same files, minus thousands of fsyncs.
    """
    started = time.perf_counter()
    shape = model_shape(AutoModelForCausalLM.from_pretrained(model_dir))
    registry = PromptRegistry(shape, StoreConfig(directory=store), "base", PromptStorage(store))
    for index in (0, 1):
        registry.upload(task_name(index), *adapter_bytes(adapters[task_name(index).split("-")[0]]))
    registry.close()  # the server must be able to lock the store
    tasks = store / "tasks"
    for index in range(2, NUM_TASKS + len(DAMAGED)):
        clone_task(store, task_name(index % 2), task_name(index) if index < NUM_TASKS else DAMAGED[index - NUM_TASKS])
    (tasks / DAMAGED[0] / "manifest.json").write_text('{"format": 1, "task": "dama')
    (tasks / DAMAGED[1] / "v1" / MODEL_FILE).unlink()
    return time.perf_counter() - started


def _timed_generate(client: httpx.Client, task: str):
    started = time.perf_counter()
    generation = generate(client, task, PROMPT, MAX_NEW_TOKENS)
    return generation, time.perf_counter() - started


def test_ten_thousand_tasks_start_fast_and_any_task_serves(tiny_llama_dir, tmp_path, adapters, references):
    build_s = build_store(tmp_path / "store", tiny_llama_dir, adapters)
    started = time.perf_counter()
    server = start_server(tiny_llama_dir, tmp_path, env=TIER_ENV)
    ready_s = time.perf_counter() - started
    try:
        log = server.log_path.read_text(errors="replace")
        loaded = re.search(r"prompt store: (\d+) tasks loaded in ([\d.]+) s, (\d+) entries skipped", log)
        assert loaded and loaded.groups()[::2] == (str(NUM_TASKS), str(len(DAMAGED))), log[-3000:]
        for task in DAMAGED:
            assert f"prompt store: task '{task}'" in log
        with httpx.Client(base_url=server.url, timeout=60) as client:
            metrics = client.get("/metrics").text
            assert metric_value(metrics, "promptswap_registry_tasks") == NUM_TASKS
            assert metric_value(metrics, "promptswap_registry_damaged_entries") == len(DAMAGED)
            assert metric_value(metrics, 'promptswap_registry_loads_total{tier="disk"}') == 0  # nothing read yet
            timings, cold_tasks = _cold_and_warm(client, references)
            metrics = client.get("/metrics").text
            assert metric_value(metrics, 'promptswap_registry_loads_total{tier="disk"}') == len(cold_tasks)
            assert metric_value(metrics, "promptswap_registry_evictions_total") >= len(cold_tasks) - HOST_CACHE_TASKS
            for task in cold_tasks[:2]:  # evicted from both tiers since: read from disk again
                assert generate(client, task, PROMPT, MAX_NEW_TOKENS).token_ids == references[task.split("-")[0]]
            metrics = client.get("/metrics").text
            assert metric_value(metrics, 'promptswap_registry_loads_total{tier="disk"}') == len(cold_tasks) + 2
        _second_server_is_refused(server, tiny_llama_dir, tmp_path / "store")
    finally:
        assert server.stop() == 0, server.log()
    print(
        f"\n{NUM_TASKS} tasks: store built in {build_s:.1f} s; server ready in {ready_s:.1f} s "
        f"(store load {float(loaded[2]):.2f} s)\n"
        + "\n".join(f"  {name}: median {statistics.median(values) * 1000:.0f} ms" for name, values in timings.items())
    )


def _cold_and_warm(client: httpx.Client, references) -> tuple[dict[str, list[float]], list[str]]:
    """First request of never-used tasks of each kind (read from disk, parsed, put on the device) and the same
    request again (warm), checked against PEFT; the base model for scale. Returns the timings and the tasks used."""
    rng = random.Random(0)
    timings: dict[str, list[float]] = {"base model": [_timed_generate(client, "")[1] for _ in range(3)]}
    cold_tasks = []
    for kind in ADAPTERS:
        indexes = range(2 + (kind == "prefix"), NUM_TASKS, 2)
        for task in map(task_name, rng.sample(indexes, NUM_COLD_PER_KIND)):
            for temperature in ("cold", "warm"):
                generation, seconds = _timed_generate(client, task)
                assert (generation.token_ids, generation.task_version) == (references[kind], 1), task
                timings.setdefault(f"{kind} tuning, {temperature}", []).append(seconds)
            cold_tasks.append(task)
    return timings, cold_tasks


def _second_server_is_refused(server, model_dir: Path, store: Path) -> None:
    command = [sys.executable, "-m", "server", "serve", "--model", str(model_dir), "--store", str(store)]
    second = subprocess.run(
        [*command, "--port", str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert second.returncode == 1, second.stderr[-2000:]
    message = f"is in use by another promptswap process (pid {server.process.pid})"
    assert message in second.stderr, second.stderr[-2000:]
