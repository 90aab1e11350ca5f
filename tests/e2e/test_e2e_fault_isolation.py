"""Against a real server: a request that makes its step fail gets a 500 while concurrent requests on other tasks
finish with PEFT's tokens; a damaged version file on disk fails only its task's requests; and a fault the engine
cannot pin on a request ends the process with a non-zero status instead of leaving it up answering 503."""

from __future__ import annotations

import contextlib
import threading

import httpx
import pytest

from tests.e2e.server_process import metric_value, start_server, upload_adapter
from tests.e2e.store_client import generate

MARKER = "FAULT-INJECT"
SERVER_ENV = {"PROMPTSWAP_FAULT_INJECTION": f"run:{MARKER}"}
ADAPTERS = {"pt": ("PROMPT_TUNING", {"num_virtual_tokens": 5}), "prefix": ("PREFIX_TUNING", {"num_virtual_tokens": 6})}
PROMPT = "The capital of France is"
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def tasks(client, server, adapters):
    for name, path in adapters.items():
        assert upload_adapter(client, server, name, path).status_code == 201
    return list(adapters)


def test_a_failing_request_fails_alone_while_others_are_served(server, client, tasks, references):
    served: dict[str, list] = {task: [] for task in tasks}
    errors: list[BaseException] = []

    def bystander(task: str) -> None:
        try:
            for _ in range(3):
                served[task].append(generate(client, task, PROMPT, MAX_NEW_TOKENS).token_ids)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=bystander, args=(task,)) for task in tasks]
    for thread in threads:
        thread.start()
    failures = []
    for task in [None, *tasks]:
        params = {"task": task} if task else {}
        body = {"inputs": f"{MARKER} {PROMPT}", "parameters": {"max_new_tokens": MAX_NEW_TOKENS}}
        failures.append(client.post("/v1/generate", params=params, json=body))
        streamed = client.post("/v1/generate", params=params, json=body | {"stream": True})
        assert streamed.status_code == 200 and '"error_type":"generation"' in streamed.text.replace(" ", "")
        assert streamed.text.rstrip().endswith("data: [DONE]")
    openai = client.post("/v1/completions", json={"model": tasks[0], "prompt": f"{MARKER} x", "max_tokens": 4})
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    for response in failures:
        assert response.status_code == 500
        assert response.json()["error_type"] == "generation"
        assert "other requests were not affected" in response.json()["error"]
    assert openai.status_code == 500 and openai.json()["error"]["type"] == "server_error"
    for task in tasks:
        assert served[task] == [references[task]] * 3, task
    assert client.get("/health").status_code == 200
    assert metric_value(client.get("/metrics").text, "promptswap_engine_step_failures_total") >= 1
    assert generate(client, tasks[0], PROMPT, MAX_NEW_TOKENS).token_ids == references[tasks[0]]


def test_a_damaged_version_file_fails_only_its_task(tiny_llama_dir, tmp_path, adapters, references):
    first = start_server(tiny_llama_dir, tmp_path)
    with httpx.Client(base_url=first.url, timeout=120) as client:
        for name, path in adapters.items():
            assert upload_adapter(client, first, name, path).status_code == 201
        version = client.get("/v1/admin/prompts/prefix", headers=first.admin_headers).json()["active_version"]
    assert first.stop() == 0
    weights = tmp_path / "store" / "tasks" / "prefix" / f"v{version}" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # same size, still parses: only the checksum can tell
    weights.write_bytes(bytes(data))
    second = start_server(tiny_llama_dir, tmp_path)  # start-up reads manifests only: the damage is not seen yet
    try:
        with httpx.Client(base_url=second.url, timeout=120) as client:
            body = {"inputs": PROMPT, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}}
            damaged = client.post("/v1/generate", params={"task": "prefix"}, json=body)
            assert damaged.status_code == 500, damaged.text
            assert "'prefix'" in damaged.json()["error"] and "could not be loaded" in damaged.json()["error"]
            assert generate(client, "pt", PROMPT, MAX_NEW_TOKENS).token_ids == references["pt"]
            metrics = client.get("/metrics").text
            assert metric_value(metrics, "promptswap_registry_damaged_entries") == 1
            assert metric_value(metrics, "promptswap_engine_step_failures_total") == 0
            assert client.get("/health").status_code == 200
    finally:
        assert second.stop() == 0, second.log()
    assert "damaged prompt store entry" in second.log(20_000)


def test_a_fault_the_engine_cannot_attribute_ends_the_process_non_zero(tiny_llama_dir, tmp_path):
    server = start_server(tiny_llama_dir, tmp_path, env={"PROMPTSWAP_FAULT_INJECTION": f"loop:{MARKER}"})
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/health").status_code == 200
        with contextlib.suppress(httpx.TransportError):  # the process may be gone before it answers
            client.post("/v1/generate", json={"inputs": MARKER, "parameters": {"max_new_tokens": 2}})
    assert server.process.wait(timeout=60) == 1, server.log()
    assert "the engine cannot continue" in server.log(20_000)
