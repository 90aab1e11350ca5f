"""/health, /ready, /metrics, the Grafana dashboard's metric names, and draining, against the fake engine."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from test_http_fake_engine import FakeEngine, run_with_client

from server.http.metrics import MAX_TASK_LABELS

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
CONTRACT_METRICS = [
    "requests_total",
    "time_to_first_token_seconds",
    "time_per_output_token_seconds",
    "e2e_request_latency_seconds",
    "request_queue_time_seconds",
    "prompt_tokens_total",
    "generation_tokens_total",
    "num_requests_running",
    "num_requests_waiting",
    "batch_size",
    "kv_cache_usage_ratio",
    "registry_tasks",
    "registry_resident_tasks",
    "registry_loads_total",
    "registry_evictions_total",
    "prompt_uploads_total",
    "engine_step_failures_total",
    "prefix_cache_hit_tokens_total",
    "prefix_cache_queried_tokens_total",
    "prompt_upload_seconds",
    "tenant_requests_total",
    "tenant_tokens_total",
    "tenant_rate_limited_total",
    "tenant_queue_time_seconds",
]
HISTOGRAMS = {
    "time_to_first_token_seconds",
    "time_per_output_token_seconds",
    "e2e_request_latency_seconds",
    "request_queue_time_seconds",
    "batch_size",
    "prompt_upload_seconds",
    "tenant_queue_time_seconds",
}


def sample_names(exposition: str) -> set[str]:
    """Metric names that have at least one sample line."""
    return {line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line and not line.startswith("#")}


def sample_value(exposition: str, series: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {series}")


def test_health_and_ready_follow_the_engine():
    async def check(client, engine: FakeEngine):
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).json() == {"status": "ready"}
        engine.is_loaded = False
        ready = await client.get("/ready")
        assert (ready.status_code, ready.json()) == (503, {"status": "loading"})
        assert (await client.get("/health")).status_code == 200
        engine.is_stuck = True
        stalled = await client.get("/health")
        assert (stalled.status_code, stalled.json()) == (503, {"status": "stalled"})
        engine.is_stuck = False
        assert (await client.get("/health")).status_code == 200
        engine.is_running = False
        assert (await client.get("/ready")).json() == {"status": "failed"}
        assert (await client.get("/health")).status_code == 503
        refused = await client.post("/v1/generate", json={"inputs": "x"})
        assert (refused.status_code, refused.json()["error"]) == (503, "the engine has stopped: see the server log")

    run_with_client(check)


def test_metrics_expose_every_contract_name_before_and_after_traffic():
    async def check(client, engine: FakeEngine):
        engine.is_loaded = False
        names = sample_names((await client.get("/metrics")).text)
        gauges_and_counters = [
            n for n in CONTRACT_METRICS if n not in HISTOGRAMS and n not in ("requests_total", "tenant_requests_total")
        ]
        assert {f"promptswap_{n}" for n in gauges_and_counters if n != "registry_loads_total"} <= names
        engine.is_loaded = True
        await client.post("/v1/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 3}})
        engine.batch_sizes = [4, 9]
        text = (await client.get("/metrics")).text
        names = sample_names(text)
        for name in CONTRACT_METRICS:
            expected = f"promptswap_{name}_bucket" if name in HISTOGRAMS else f"promptswap_{name}"
            assert expected in names, name
        assert sample_value(text, 'promptswap_requests_total{route="/v1/generate",status="200"}') == 1
        assert sample_value(text, 'promptswap_generation_tokens_total{task="fake-base"}') == 3
        assert sample_value(text, 'promptswap_prompt_tokens_total{task="fake-base"}') == 2
        assert sample_value(text, "promptswap_batch_size_count") == 2
        assert sample_value(text, "promptswap_kv_cache_usage_ratio") == pytest.approx(0.1)
        assert sample_value(text, 'promptswap_registry_loads_total{tier="disk"}') == 0
        assert sample_value(text, "promptswap_registry_evictions_total") == 3
        assert sample_value(text, "promptswap_time_to_first_token_seconds_count") == 1
        assert sample_value(text, "promptswap_time_per_output_token_seconds_count") == 1

    run_with_client(check)


def test_task_labels_are_bounded():
    async def check(client, engine: FakeEngine):
        for i in range(MAX_TASK_LABELS + 3):
            engine.registry.upload(f"task-{i}", b'{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 1}', b"w")
            response = await client.post(
                "/v1/generate", params={"task": f"task-{i}"}, json={"inputs": "x", "parameters": {"max_new_tokens": 1}}
            )
            assert response.status_code == 200
        text = (await client.get("/metrics")).text
        labels = set(re.findall(r'promptswap_generation_tokens_total\{task="([^"]+)"\}', text))
        assert len(labels) == MAX_TASK_LABELS + 2  # and the base model, and "other"
        assert sample_value(text, 'promptswap_generation_tokens_total{task="other"}') == 3

    run_with_client(check)


def test_unmatched_routes_share_one_label():
    async def check(client, engine):
        for path in ("/a", "/b", "/c"):
            assert (await client.get(path)).status_code == 404
        text = (await client.get("/metrics")).text
        assert sample_value(text, 'promptswap_requests_total{route="unmatched",status="404"}') == 3

    run_with_client(check)


def test_every_dashboard_metric_exists_in_metrics_output():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bpromptswap_[a-z0-9_]+", expr)}
    assert {f"promptswap_{n}" for n in CONTRACT_METRICS} <= {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}

    async def check(client, engine: FakeEngine):
        await client.post("/v1/generate", json={"inputs": "x"})
        engine.batch_sizes = [1]
        exposed = sample_names((await client.get("/metrics")).text)
        assert used <= exposed, used - exposed

    run_with_client(check)


def test_drain_waits_for_requests_in_flight_and_refuses_new_ones():
    async def check(client, engine: FakeEngine):
        service = client._transport.app.state.context.service
        engine.is_paused = True
        in_flight = asyncio.create_task(
            client.post("/v1/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 2}})
        )
        while service.num_in_flight == 0:
            await asyncio.sleep(0.005)
        drain = asyncio.create_task(service.drain(timeout_s=5))
        await asyncio.sleep(0.05)
        assert not drain.done()
        assert (await client.get("/ready")).json() == {"status": "draining"}
        assert (await client.post("/v1/completions", json={"prompt": "x"})).status_code == 503
        engine.is_paused = False
        assert (await in_flight).status_code == 200
        assert await drain is True

    run_with_client(check)


def test_drain_gives_up_at_its_timeout():
    async def check(client, engine: FakeEngine):
        service = client._transport.app.state.context.service
        engine.is_paused = True
        in_flight = asyncio.create_task(client.post("/v1/generate", json={"inputs": "x"}))
        while service.num_in_flight == 0:
            await asyncio.sleep(0.005)
        assert await service.drain(timeout_s=0.05) is False
        in_flight.cancel()

    run_with_client(check)
