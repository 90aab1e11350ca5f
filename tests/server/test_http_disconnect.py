"""A client that goes away has its engine request cancelled and its place in flight released."""

from __future__ import annotations

import asyncio
import json

import pytest
from test_http_fake_engine import FakeEngine, call_asgi, fake_config

from server.http.app import create_app


async def _until(condition, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/generate", {"inputs": "x", "parameters": {"max_new_tokens": 50}}),
        ("/v1/generate", {"inputs": "x", "parameters": {"max_new_tokens": 50}, "stream": True}),
        ("/v1/completions", {"prompt": "x", "max_tokens": 50}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": True}),
        ("/v1/completions", {"prompt": "x", "max_tokens": 50, "n": 4, "stream": True}),  # every sample, released once
    ],
)
def test_disconnect_cancels_the_engine_request(path, body):
    engine = FakeEngine(fake_config())
    app = create_app(engine.config, engine)
    service = app.state.context.service

    async def main():
        engine.is_paused = True
        client_gone = asyncio.Event()
        data = json.dumps(body).encode()
        headers = {"content-type": "application/json", "content-length": str(len(data))}
        call = asyncio.create_task(call_asgi(app, "POST", path, data, headers, client_gone))
        await _until(lambda: engine.streams and service.num_in_flight == 1)
        client_gone.set()
        await call
        assert len(engine.streams) == body.get("n", 1)
        assert all(stream.is_cancelled for stream in engine.streams)
        assert service.num_in_flight == 0

    asyncio.run(main())


def test_body_over_the_limit_is_refused_before_it_is_read():
    engine = FakeEngine(fake_config(max_body_bytes=1000))
    app = create_app(engine.config, engine)

    async def main():
        headers = {"content-type": "application/json", "content-length": "5000000"}
        sent, num_receives = await call_asgi(app, "POST", "/v1/generate", b"", headers, asyncio.Event())
        assert sent[0]["status"] == 413
        assert json.loads(sent[1]["body"]) == {
            "error": "request body exceeds the limit of 1000 bytes",
            "error_type": "too_large",
        }
        assert num_receives == 0

    asyncio.run(main())


def test_chunked_body_over_the_limit_is_413():
    engine = FakeEngine(fake_config(max_body_bytes=1000))
    app = create_app(engine.config, engine)

    async def main():
        body = json.dumps({"prompt": "x" * 2000, "model": "fake-base"}).encode()
        sent, _ = await call_asgi(
            app, "POST", "/v1/completions", body, {"content-type": "application/json"}, asyncio.Event()
        )
        assert sent[0]["status"] == 413
        assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"

    asyncio.run(main())
