"""One short real run of the load generator against a real `promptswap serve` (tiny Llama) on loopback:
random PEFT tasks uploaded over HTTP, a Zipf mix with base-model requests, streamed, and the results written."""

from __future__ import annotations

import json

import httpx
import pytest
from transformers import AutoModelForCausalLM

from loadtest.adapters import write_random_adapters
from loadtest.loadgen.cli import main
from tests.e2e.server_process import start_server, upload_adapter

NUM_TASKS = 4
OUTPUT_TOKENS = 5


@pytest.fixture(scope="module")
def server_with_tasks(tiny_llama_dir, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("loadgen-server")
    server = start_server(tiny_llama_dir, work_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
        adapters = write_random_adapters(model, work_dir / "adapters", NUM_TASKS, num_virtual_tokens=4)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for adapter in adapters:
                assert upload_adapter(client, server, adapter.task, adapter.path).status_code == 201
        yield server, [adapter.task for adapter in adapters]
    finally:
        server.stop()


def _run(server, out, *options: str) -> dict:
    argv = [
        "--url",
        server.url,
        "--num-requests",
        "12",
        "--input-len",
        "uniform:4:12",
        "--output-len",
        f"fixed:{OUTPUT_TOKENS}",
        "--no-progress",
        "--out",
        str(out),
        *options,
    ]
    assert main(argv) == 0
    return json.loads(out.with_suffix(".json").read_text())


def test_open_loop_run_streams_every_request_and_writes_results(server_with_tasks, tiny_llama_dir, tmp_path):
    server, tasks = server_with_tasks
    results = _run(
        server,
        tmp_path / "poisson",
        "--rate",
        "40",
        "--base-fraction",
        "0.3",
        "--tokenizer",
        str(tiny_llama_dir),
        "--slo",
        "ttft:60000",
        "--slo",
        "tpot:60000",
    )
    summary = results["summary"]
    assert (summary["num_completed"], summary["num_failed"]) == (12, 0)
    assert summary["num_output_tokens"] == 12 * OUTPUT_TOKENS  # ignore_eos: every request runs to max_tokens
    assert summary["num_short_outputs"] == 0
    assert summary["goodput"] == pytest.approx(summary["request_throughput"])
    assert summary["ttft_ms"]["count"] == 12 and summary["ttft_ms"]["p50"] > 0
    assert summary["tpot_ms"]["count"] == 12 and summary["itl_ms"]["count"] > 0
    assert results["config"]["num_tasks"] == NUM_TASKS and results["config"]["exact_prompt_lengths"]
    requests = results["requests"]
    assert {r["task"] for r in requests} - {None} <= set(tasks)
    assert any(r["task"] is None for r in requests) and any(r["task"] is not None for r in requests)
    # The server counts the prompt's own tokens: exactly the lengths drawn (its tokenizer adds no BOS here).
    assert all(4 <= r["num_prompt_tokens"] <= 12 for r in requests)
    assert set(results["by_group"]) == {"base", "task"}
    for name in ("poisson_latency.png", "poisson_timeline.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_closed_loop_on_the_generate_route(server_with_tasks, tmp_path):
    server, _ = server_with_tasks
    results = _run(
        server, tmp_path / "closed", "--concurrency", "3", "--endpoint", "generate", "--no-plots", "--zipf", "0"
    )
    summary = results["summary"]
    assert (summary["num_completed"], summary["num_failed"]) == (12, 0)
    assert summary["send_lag_ms"]["max"] < 1000
    assert all(r["num_output_tokens"] <= OUTPUT_TOKENS for r in results["requests"])


def test_an_unknown_task_is_an_error_not_a_crash(server_with_tasks, tmp_path):
    server, _ = server_with_tasks
    argv = [
        "--url",
        server.url,
        "--num-requests",
        "3",
        "--output-len",
        "fixed:2",
        "--no-progress",
        "--no-plots",
        "--rate",
        "inf",
        "--tasks",
        "no-such-task",
        "--base-fraction",
        "0",
        "--out",
        str(tmp_path / "bad"),
    ]
    assert main(argv) == 1  # nothing completed
    summary = json.loads((tmp_path / "bad.json").read_text())["summary"]
    assert summary["errors"] == {"http_404": 3}
