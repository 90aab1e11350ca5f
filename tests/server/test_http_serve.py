"""DrainingServer: the first signal drains before uvicorn shuts down, a second one exits at once."""

from __future__ import annotations

import asyncio
import signal

import httpx
import uvicorn
from test_http_fake_engine import FakeEngine, fake_config

from server.http.app import create_app
from server.http.serve import DrainingServer


async def _start(engine: FakeEngine) -> tuple[DrainingServer, asyncio.Task, str]:
    app = create_app(engine.config, engine)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=1)
    server = DrainingServer(config, app.state.context.service, drain_timeout_s=10)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, serving, f"http://127.0.0.1:{port}"


def test_first_signal_drains_while_still_answering_then_shuts_down():
    engine = FakeEngine(fake_config())

    async def main():
        server, serving, url = await _start(engine)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            engine.is_paused = True
            in_flight = asyncio.create_task(
                client.post("/v1/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 2}})
            )
            while not engine.streams:
                await asyncio.sleep(0.01)
            server.handle_exit(signal.SIGTERM, None)
            await asyncio.sleep(0.2)
            assert not serving.done()
            assert (await client.get("/ready")).status_code == 503
            assert (await client.post("/v1/generate", json={"inputs": "x"})).status_code == 503
            engine.is_paused = False
            assert (await in_flight).status_code == 200
        await asyncio.wait_for(serving, 10)
        assert (engine.num_starts, engine.num_shutdowns) == (1, 1)  # the lifespan ran both ways

    asyncio.run(main())


def test_second_signal_exits_without_waiting():
    engine = FakeEngine(fake_config())

    async def main():
        server, serving, url = await _start(engine)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            engine.is_paused = True
            in_flight = asyncio.create_task(client.post("/v1/generate", json={"inputs": "x"}))
            while not engine.streams:
                await asyncio.sleep(0.01)
            server.handle_exit(signal.SIGTERM, None)
            server.handle_exit(signal.SIGTERM, None)
            await asyncio.wait_for(serving, 5)
            assert server.force_exit
            in_flight.cancel()

    asyncio.run(main())
