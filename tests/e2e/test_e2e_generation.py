"""A real `promptswap serve` on a tiny Llama (GQA): real PEFT adapters uploaded over HTTP give PEFT's greedy tokens
through every generation route, alone and in concurrent mixed batches; the admin API, the official openai client,
the CLI, every error path and /metrics, all against the same server process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.e2e.server_process import ROOT, metric_value, sse_payloads, upload_adapter
from tests.support.reference import base_greedy, peft_greedy

MAX_NEW_TOKENS = 6
PROMPTS = ["The capital of France is", "Hello"]
ADAPTERS = {  # task -> (peft_type, training options)
    "geo-prompt": ("PROMPT_TUNING", {}),
    "geo-ptuning": ("P_TUNING", {}),
    "geo-prefix": ("PREFIX_TUNING", {"prefix_projection": True}),
    "geo-prefix-plain": ("PREFIX_TUNING", {}),
}
MAX_BODY_BYTES = 1_000_000
SERVER_ENV = {"PROMPTSWAP_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}


@pytest.fixture(scope="module")
def tasks(server, client, adapters) -> dict[str, Path]:
    for task, adapter_dir in adapters.items():
        response = upload_adapter(client, server, task, adapter_dir)
        assert response.status_code == 201, response.text
        assert response.json()["version"] == 1
    return adapters


@pytest.fixture(scope="module")
def expected(tasks, tiny_llama_dir, tokenizer) -> dict[tuple[str | None, str], list[int]]:
    """PEFT's greedy tokens for every (task, prompt); task None is the base model alone."""
    references = {}
    for prompt in PROMPTS:
        input_ids = tokenizer(prompt).input_ids
        references[(None, prompt)] = base_greedy(tiny_llama_dir, input_ids, MAX_NEW_TOKENS)
        for task, adapter_dir in tasks.items():
            references[(task, prompt)] = peft_greedy(tiny_llama_dir, adapter_dir, input_ids, MAX_NEW_TOKENS)
    return references


def stream_generate(client: httpx.Client, task: str | None, prompt: str, max_new_tokens: int = MAX_NEW_TOKENS):
    """(token ids, last event) of a streamed /v1/generate."""
    params = {"task": task} if task else {}
    body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens}, "stream": True}
    with client.stream("POST", "/v1/generate", params=params, json=body) as response:
        assert response.status_code == 200, response.read()
        events = sse_payloads(response.iter_lines())
    assert events[-1] == "[DONE]"
    return [event["token"]["id"] for event in events[:-1]], events[-2]


def test_streamed_tokens_equal_peft_for_every_prompt_type(client, expected):
    for (task, prompt), reference in expected.items():
        token_ids, last = stream_generate(client, task, prompt)
        assert token_ids == reference, (task, prompt)
        assert last["details"]["generated_tokens"] == len(reference)
        assert last["details"]["task"] == task
        assert last["details"]["task_version"] == (1 if task else None)
        body = {"inputs": prompt, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}}
        response = client.post("/v1/generate", params={"task": task} if task else {}, json=body)
        assert response.json()["generated_text"] == last["generated_text"]
        assert response.json()["details"] == last["details"]


def test_concurrent_mixed_batches_still_equal_peft(client, expected):
    jobs = list(expected.items()) * 2
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(lambda job: stream_generate(client, *job[0])[0], jobs))
    for ((task, prompt), reference), token_ids in zip(jobs, results, strict=True):
        assert token_ids == reference, (task, prompt)


def test_openai_routes_give_the_same_greedy_text(client, expected, tokenizer, tiny_llama_dir, tasks):
    for task in [None, *tasks]:
        model = task or tiny_llama_dir.name
        body = {"inputs": PROMPTS[0], "parameters": {"max_new_tokens": MAX_NEW_TOKENS}}
        text = client.post("/v1/generate", params={"task": task} if task else {}, json=body).json()["generated_text"]
        completion = client.post(
            "/v1/completions",
            json={"model": model, "prompt": PROMPTS[0], "max_tokens": MAX_NEW_TOKENS, "temperature": 0},
        )
        assert completion.status_code == 200
        assert completion.json()["choices"][0]["text"] == text
        assert completion.json()["usage"]["completion_tokens"] == len(expected[(task, PROMPTS[0])])

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    templated = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    reference = peft_greedy(tiny_llama_dir, tasks["geo-prefix"], tokenizer(templated).input_ids, MAX_NEW_TOKENS)
    token_ids, last = stream_generate(client, "geo-prefix", templated)
    assert token_ids == reference
    chat = client.post(
        "/v1/chat/completions",
        json={"model": "geo-prefix", "messages": messages, "max_tokens": MAX_NEW_TOKENS, "temperature": 0},
    )
    assert chat.status_code == 200
    assert chat.json()["choices"][0]["message"] == {"role": "assistant", "content": last["generated_text"]}
    assert chat.json()["usage"]["prompt_tokens"] == len(tokenizer(templated).input_ids)


def test_official_openai_client(server, tasks, tiny_llama_dir):
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    models = api.models.list().data
    assert models[0].id == tiny_llama_dir.name
    assert {m.id for m in models[1:]} >= set(tasks)
    assert all(m.model_extra["parent"] == tiny_llama_dir.name for m in models[1:])

    completion = api.completions.create(model="geo-prompt", prompt=PROMPTS[0], max_tokens=MAX_NEW_TOKENS, temperature=0)
    chunks = list(
        api.completions.create(
            model="geo-prompt", prompt=PROMPTS[0], max_tokens=MAX_NEW_TOKENS, temperature=0, stream=True
        )
    )
    assert "".join(chunk.choices[0].text for chunk in chunks) == completion.choices[0].text

    messages = [{"role": "user", "content": "Hi there"}]
    chat = api.chat.completions.create(model="geo-ptuning", messages=messages, max_tokens=MAX_NEW_TOKENS, temperature=0)
    stream = api.chat.completions.create(
        model="geo-ptuning",
        messages=messages,
        max_tokens=MAX_NEW_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == chat.usage.prompt_tokens

    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="no-such-task", messages=messages)
    with pytest.raises(openai.BadRequestError):
        api.completions.create(model="geo-prompt", prompt="x", n=9)  # 1..8 are served


def test_new_versions_serve_at_once_and_roll_back(server, client, tasks, expected):
    assert upload_adapter(client, server, "versioned", tasks["geo-prompt"]).status_code == 201
    second = upload_adapter(client, server, "versioned", tasks["geo-prefix"])
    assert second.status_code == 200
    assert (second.json()["version"], second.json()["kind"], second.json()["peft_type"]) == (
        2,
        "prefix_kv",
        "PREFIX_TUNING",
    )
    token_ids, last = stream_generate(client, "versioned", PROMPTS[0])
    assert token_ids == expected[("geo-prefix", PROMPTS[0])] and last["details"]["task_version"] == 2

    rolled_back = client.post("/v1/admin/prompts/versioned/activate", headers=server.admin_headers, json={"version": 1})
    assert rolled_back.status_code == 200 and rolled_back.json()["active_version"] == 1
    token_ids, last = stream_generate(client, "versioned", PROMPTS[0])
    assert token_ids == expected[("geo-prompt", PROMPTS[0])] and last["details"]["task_version"] == 1

    listed = client.get("/v1/admin/prompts/versioned", headers=server.admin_headers).json()
    assert [(v["version"], v["is_active"]) for v in listed["versions"]] == [(1, True), (2, False)]
    assert client.delete("/v1/admin/prompts/versioned", headers=server.admin_headers).status_code == 204
    assert client.post("/v1/generate", params={"task": "versioned"}, json={"inputs": "x"}).status_code == 404


def _adapter_variant(adapter_dir: Path, out_dir: Path, config_changes: dict | None = None, tensor_fn=None) -> Path:
    out_dir.mkdir()
    config = json.loads((adapter_dir / "adapter_config.json").read_text()) | (config_changes or {})
    (out_dir / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    save_file(
        {name: tensor_fn(t) if tensor_fn else t for name, t in tensors.items()}, out_dir / "adapter_model.safetensors"
    )
    return out_dir


def test_bad_uploads_are_refused_and_change_nothing(server, client, tasks, tmp_path, tiny_gpt2_dir, adapter_factory):
    before = client.get("/v1/admin/prompts", headers=server.admin_headers).json()
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_bytes((tasks["geo-prompt"] / "adapter_config.json").read_bytes())
    torch.save(load_file(tasks["geo-prompt"] / "adapter_model.safetensors"), pickled / "adapter_model.safetensors")
    bad_adapters = {
        "pickled": pickled,
        "wrong-task-type": _adapter_variant(tasks["geo-prompt"], tmp_path / "seq-cls", {"task_type": "SEQ_CLS"}),
        "not-finite": _adapter_variant(
            tasks["geo-prompt"], tmp_path / "nan", tensor_fn=lambda t: torch.full_like(t, float("nan"))
        ),
        "int-weights": _adapter_variant(tasks["geo-prompt"], tmp_path / "int", tensor_fn=lambda t: t.to(torch.int32)),
        "wrong-shape": adapter_factory(tiny_gpt2_dir, "PREFIX_TUNING"),  # GPT-2's KV width, not the Llama's
    }
    for task, adapter_dir in bad_adapters.items():
        response = upload_adapter(client, server, task, adapter_dir)
        assert 400 <= response.status_code < 500, (task, response.text)
        assert response.json()["error_type"] in ("validation", "too_large"), task
        assert response.json()["error"], task
    assert client.get("/v1/admin/prompts", headers=server.admin_headers).json() == before


def test_every_error_path_answers_its_status_and_shape_and_the_server_stays_healthy(
    server, client, tasks, tiny_llama_dir
):
    admin = server.admin_headers
    tgi_cases = [
        (client.post("/v1/generate", params={"task": "missing"}, json={"inputs": "x"}), 404, "not_found"),
        (client.post("/v1/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 0}}), 422, "validation"),
        (client.post("/v1/generate", json={"inputs": "word " * 600}), 422, "validation"),
        (client.post("/v1/generate", content=b"{", headers={"content-type": "application/json"}), 422, "validation"),
        (client.get("/v1/admin/prompts"), 401, "unauthorized"),
        (client.get("/v1/admin/prompts", headers={"Authorization": "Bearer wrong-token-value"}), 401, "unauthorized"),
        (client.get("/v1/admin/prompts/missing", headers=admin), 404, "not_found"),
        (client.delete("/v1/admin/prompts/missing", headers=admin), 404, "not_found"),
        (client.post("/v1/admin/prompts/geo-prompt/activate", headers=admin, json={"version": 42}), 404, "not_found"),
        (upload_adapter(client, server, "bad name!", tasks["geo-prompt"]), 422, "validation"),
        (upload_adapter(client, server, tiny_llama_dir.name, tasks["geo-prompt"]), 422, "validation"),
        (
            client.put(
                "/v1/admin/prompts/big",
                headers=admin,
                files={"adapter_config": ("c", b"{}"), "adapter_model": ("m", b"x" * (MAX_BODY_BYTES + 1))},
            ),
            413,
            "too_large",
        ),
    ]
    for response, status, error_type in tgi_cases:
        assert (response.status_code, response.json()["error_type"]) == (status, error_type), response.text
    openai_cases = [
        (client.post("/v1/completions", json={"model": "missing", "prompt": "x"}), 404, "model_not_found"),
        (client.post("/v1/completions", json={"prompt": "x", "n": 9}), 400, None),
        (client.post("/v1/chat/completions", json={"messages": []}), 400, None),
        (
            client.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9}
            ),
            400,
            None,
        ),
    ]
    for response, status, code in openai_cases:
        assert response.status_code == status, response.text
        assert response.json()["error"].keys() == {"message", "type", "param", "code"}
        assert response.json()["error"]["code"] == code
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200
    assert stream_generate(client, "geo-prompt", PROMPTS[0])[1]["details"]["finish_reason"] in ("length", "eos_token")


def test_metrics_expose_every_contract_name_and_count_traffic(server, client, tasks):
    before = client.get("/metrics").text
    stream_generate(client, "geo-prompt", PROMPTS[0])
    after = client.get("/metrics").text
    names = {line.split("{")[0].split(" ")[0] for line in after.splitlines() if line and not line.startswith("#")}
    for name in [
        "requests_total",
        "prompt_tokens_total",
        "generation_tokens_total",
        "num_requests_running",
        "num_requests_waiting",
        "kv_cache_usage_ratio",
        "registry_tasks",
        "registry_resident_tasks",
        "registry_loads_total",
        "registry_evictions_total",
        "prompt_uploads_total",
    ]:
        assert f"promptswap_{name}" in names, name
    for histogram in [
        "time_to_first_token_seconds",
        "time_per_output_token_seconds",
        "e2e_request_latency_seconds",
        "request_queue_time_seconds",
        "batch_size",
        "prompt_upload_seconds",
    ]:
        assert f"promptswap_{histogram}_bucket" in names, histogram
    series = 'promptswap_requests_total{route="/v1/generate",status="200"}'
    assert metric_value(after, series) == metric_value(before, series) + 1
    tokens = 'promptswap_generation_tokens_total{task="geo-prompt"}'
    assert metric_value(after, tokens) == metric_value(before, tokens) + MAX_NEW_TOKENS
    assert metric_value(after, "promptswap_e2e_request_latency_seconds_count") > metric_value(
        before, "promptswap_e2e_request_latency_seconds_count"
    )
    assert metric_value(after, "promptswap_registry_tasks") == len(
        [t for t in client.get("/v1/admin/prompts", headers=server.admin_headers).json()["tasks"]]
    )
    assert metric_value(after, 'promptswap_prompt_uploads_total{result="created"}') >= len(tasks)
    assert metric_value(after, "promptswap_num_requests_running") == 0


def test_a_repeated_prompt_is_served_from_the_prefix_cache(client, tasks):
    prompt = "Write three short sentences about Paris, the capital of France, for a travel guide. " * 2
    hit, queried = "promptswap_prefix_cache_hit_tokens_total", "promptswap_prefix_cache_queried_tokens_total"
    before = client.get("/metrics").text
    first, _ = stream_generate(client, "geo-prompt", prompt)
    between = client.get("/metrics").text
    second, _ = stream_generate(client, "geo-prompt", prompt)
    after = client.get("/metrics").text
    assert second == first
    num_prompt_tokens = metric_value(between, queried) - metric_value(before, queried)
    assert num_prompt_tokens > 32  # at least two full blocks of 16
    assert metric_value(after, queried) - metric_value(between, queried) == num_prompt_tokens
    reused = metric_value(after, hit) - metric_value(between, hit)
    assert reused == (num_prompt_tokens - 1) // 16 * 16  # every full block, the last token computed


def test_cli_upload_and_list_talk_to_the_server(server, tasks):
    env = {**os.environ, "PROMPTSWAP_ADMIN_TOKEN": server.admin_token}
    upload = subprocess.run(
        [sys.executable, "-m", "server", "upload", "cli-task", str(tasks["geo-ptuning"]), "--url", server.url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upload.returncode == 0, upload.stderr
    assert "created task cli-task: version 1, P_TUNING (embedding)" in upload.stdout
    listing = subprocess.run(
        [sys.executable, "-m", "server", "list", "--url", server.url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listing.returncode == 0, listing.stderr
    assert any(line.split()[:2] == ["cli-task", "1"] for line in listing.stdout.splitlines())
    denied = subprocess.run(
        [sys.executable, "-m", "server", "list", "--url", server.url, "--admin-token", "wrong-token-value"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert denied.returncode == 1 and "HTTP 401" in denied.stderr
