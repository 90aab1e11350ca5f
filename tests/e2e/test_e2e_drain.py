"""SIGTERM on a real server: it stops admitting (503, /ready 503), lets the request in flight finish, exits 0."""

from __future__ import annotations

import signal
import threading

import httpx

from tests.e2e.server_process import sse_payloads, start_server, wait_until

NUM_TOKENS = 120  # long enough to be still running when the signal lands


def test_sigterm_drains_in_flight_requests_then_exits_zero(tiny_llama_dir, tmp_path):
    server = start_server(tiny_llama_dir, tmp_path, env={"PROMPTSWAP_MAX_MODEL_LEN": "512"})
    try:
        events: list = []
        first_event = threading.Event()

        def in_flight() -> None:
            body = {"inputs": "Once upon a time", "parameters": {"max_new_tokens": NUM_TOKENS}, "stream": True}
            with httpx.stream("POST", f"{server.url}/v1/generate", json=body, timeout=120) as response:
                for line in response.iter_lines():
                    events.extend(sse_payloads([line]))
                    first_event.set()

        thread = threading.Thread(target=in_flight)
        thread.start()
        assert first_event.wait(60)
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(f"{server.url}/ready", timeout=5).status_code == 503, message="/ready 503")
        assert thread.is_alive(), "the request finished before the drain began: nothing was tested"
        refused = httpx.post(f"{server.url}/v1/generate", json={"inputs": "x"}, timeout=10)
        assert (refused.status_code, refused.json()["error_type"]) == (503, "unavailable")
        refused = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x"}, timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "service_unavailable_error"
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
        thread.join(120)
        assert events[-1] == "[DONE]"
        assert events[-2]["details"]["generated_tokens"] == NUM_TOKENS
        assert events[-2]["details"]["finish_reason"] == "length"
        assert server.process.wait(60) == 0, server.log()
    finally:
        server.stop()
