"""Backpressure and cancellation on a real server that runs one sequence at a time and lets one wait:
a full queue answers 429 with Retry-After, and a client that goes away (streaming or not) frees its request."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import pytest

from tests.e2e.server_process import metric_value, wait_until

LONG = 400  # tokens: far longer than any check below waits
SERVER_ENV = {"PROMPTSWAP_MAX_NUM_SEQS": "1", "PROMPTSWAP_MAX_WAITING": "1", "PROMPTSWAP_MAX_MODEL_LEN": "512"}


@pytest.fixture
def client(server):  # per test, unlike tests/e2e/conftest.py's: each test must leave the server idle
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client
        wait_until(
            lambda: _gauge(client, "num_requests_running") == 0 and _gauge(client, "num_requests_waiting") == 0,
            message="server idle after the test",
        )


def _gauge(client: httpx.Client, name: str) -> float:
    return metric_value(client.get("/metrics").text, f"promptswap_{name}")


def _base_id(client: httpx.Client) -> str:
    return client.get("/v1/models").json()["data"][0]["id"]


class OpenStream:
    """A streamed /v1/generate held open in a thread until `close()`: the client going away mid-request."""

    def __init__(self, url: str):
        self.first_event = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        body = {"inputs": "Once upon a time", "parameters": {"max_new_tokens": LONG}, "stream": True}
        with (
            httpx.Client(base_url=url, timeout=120) as client,
            client.stream("POST", "/v1/generate", json=body) as response,
        ):
            for line in response.iter_lines():
                if line.startswith("data: "):
                    self.first_event.set()
                if self._closing.is_set():
                    return  # leaving the `with` closes the connection

    def close(self) -> None:
        self._closing.set()
        self._thread.join(30)


def test_full_queue_answers_429_with_retry_after(server, client):
    running = OpenStream(server.url)
    assert running.first_event.wait(60)
    waiting = threading.Thread(
        target=lambda: httpx.post(
            f"{server.url}/v1/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 2}}, timeout=120
        )
    )
    waiting.start()
    wait_until(lambda: _gauge(client, "num_requests_waiting") == 1, message="one request waiting")
    refused = client.post("/v1/generate", json={"inputs": "x"})
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error_type"] == "overloaded"
    refused = client.post("/v1/completions", json={"prompt": "x"})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    running.close()
    waiting.join(60)
    assert client.post("/v1/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 2}}).status_code == 200


def test_streaming_client_that_leaves_frees_its_request(server, client):
    idle_kv = _gauge(client, "kv_cache_usage_ratio")
    stream = OpenStream(server.url)
    assert stream.first_event.wait(60)
    wait_until(lambda: _gauge(client, "kv_cache_usage_ratio") > idle_kv, message="KV blocks in use")
    stream.close()
    wait_until(lambda: _gauge(client, "num_requests_running") == 0, timeout_s=20, message="request cancelled")
    assert _gauge(client, "kv_cache_usage_ratio") == idle_kv


def test_non_streaming_client_that_leaves_frees_its_request(server, client):
    base_id = _base_id(client)
    tokens = f'promptswap_generation_tokens_total{{task="{base_id}"}}'
    before = metric_value(client.get("/metrics").text, tokens)
    idle_kv = _gauge(client, "kv_cache_usage_ratio")
    body = json.dumps({"inputs": "Once upon a time", "parameters": {"max_new_tokens": LONG}}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:  # a client that leaves once its request runs
        raw.sendall(
            b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        wait_until(lambda: _gauge(client, "num_requests_running") == 1, timeout_s=20, message="request running")
    wait_until(lambda: _gauge(client, "num_requests_running") == 0, timeout_s=20, message="request cancelled")
    assert _gauge(client, "kv_cache_usage_ratio") == idle_kv
    generated = metric_value(client.get("/metrics").text, tokens) - before
    assert generated < LONG  # stopped when the client left, long before its end
