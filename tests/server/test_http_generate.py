"""`POST /v1/generate` against the fake engine: request mapping, JSON and SSE shapes, every error status."""

from __future__ import annotations

import asyncio

import pytest
from test_http_fake_engine import FakeEngine, run_with_client, sse_payloads

from server.engine.request import SamplingParams

GENERATE = "/v1/generate"


def test_json_generation_returns_text_and_details():
    async def check(client, engine: FakeEngine):
        response = await client.post(GENERATE, json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}})
        assert response.status_code == 200
        assert response.json() == {
            "generated_text": " w0 w1 w2",
            "details": {
                "finish_reason": "length",
                "generated_tokens": 3,
                "prompt_tokens": 3,
                "task": None,
                "task_version": None,
            },
        }

    run_with_client(check)


def test_parameters_map_onto_sampling_params():
    async def check(client, engine: FakeEngine):
        parameters = {
            "max_new_tokens": 5,
            "do_sample": True,
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 40,
            "repetition_penalty": 1.2,
            "stop": ["\n\n", "END"],
            "seed": 42,
        }
        response = await client.post(GENERATE, json={"inputs": "x", "parameters": parameters})
        assert response.status_code == 200
        assert engine.streams[-1].request.sampling == SamplingParams(
            max_new_tokens=5,
            do_sample=True,
            temperature=0.7,
            top_p=0.9,
            top_k=40,
            repetition_penalty=1.2,
            stop=("\n\n", "END"),
            seed=42,
        )

    run_with_client(check)


def test_null_parameters_mean_defaults_as_tgi_clients_send_them():
    async def check(client, engine: FakeEngine):
        names = ["max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "stop", "seed", "frequency_penalty"]
        nulls = dict.fromkeys(names + ["top_n_tokens", "decoder_input_details", "grammar"])
        body = {"inputs": "x", "parameters": nulls | {"details": True, "watermark": False, "best_of": None}}
        response = await client.post(GENERATE, json=body)
        assert response.status_code == 200
        # details: each token's logprob, without alternatives
        assert engine.streams[-1].request.sampling == SamplingParams(logprobs=0)

    run_with_client(check)


def test_task_query_parameter_and_return_full_text():
    async def check(client, engine: FakeEngine):
        engine.registry.upload("summarize", b'{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}', b"w")
        body = {"inputs": "Text:", "parameters": {"max_new_tokens": 2, "return_full_text": True}}
        response = await client.post(GENERATE, params={"task": "summarize"}, json=body)
        assert response.status_code == 200
        assert response.json()["generated_text"] == "Text: w0 w1"
        assert (response.json()["details"]["task"], response.json()["details"]["task_version"]) == ("summarize", 1)
        assert engine.streams[-1].request.task == "summarize"

    run_with_client(check)


def test_stop_sequence_ends_the_text_before_it():
    async def check(client, engine: FakeEngine):
        response = await client.post(
            GENERATE, json={"inputs": "x", "parameters": {"max_new_tokens": 9, "stop": [" w2"]}}
        )
        assert response.json()["generated_text"] == " w0 w1"
        assert response.json()["details"]["finish_reason"] == "stop_sequence"

    run_with_client(check)


def test_stream_sends_one_event_per_token_then_done():
    async def check(client, engine: FakeEngine):
        response = await client.post(
            GENERATE, json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}, "stream": True}
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_payloads(response.text)
        assert events[-1] == "[DONE]"
        assert [e["token"] for e in events[:-1]] == [
            {"id": 100, "text": " w0", "logprob": -0.25, "special": False},
            {"id": 101, "text": " w1", "logprob": -0.5, "special": False},
            {"id": 102, "text": " w2", "logprob": -0.75, "special": False},
        ]
        assert all("top_tokens" not in e for e in events[:-1])
        assert [e["generated_text"] for e in events[:-1]] == [None, None, " w0 w1 w2"]
        assert events[0]["details"] is None
        assert events[2]["details"] == {
            "finish_reason": "length",
            "generated_tokens": 3,
            "prompt_tokens": 3,
            "task": None,
            "task_version": None,
        }

    run_with_client(check)


def test_stream_gives_every_token_its_own_event_when_a_step_brings_several():
    async def check(client, engine: FakeEngine):
        engine.tokens_per_step = 2
        body = {"inputs": "Hi", "parameters": {"max_new_tokens": 4, "return_full_text": True}, "stream": True}
        events = sse_payloads((await client.post(GENERATE, json=body)).text)[:-1]
        assert [e["token"]["id"] for e in events] == [100, 101, 102, 103]
        assert "".join(e["token"]["text"] for e in events) == " w0 w1 w2 w3"
        assert events[-1]["generated_text"] == "Hi w0 w1 w2 w3"

    run_with_client(check)


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": "x", "parameters": {"max_new_tokens": 0}},
        {"inputs": "x", "parameters": {"max_new_tokens": 100_000}},
        {"inputs": "x", "parameters": {"stop": ["a", "b", "c", "d", "e"]}},
        {"inputs": "x", "parameters": {"stop": [""]}},
        {"inputs": "x", "parameters": {"top_p": 1.5}},
        {"inputs": "x", "parameters": {"temperature": 0}},
        {"inputs": "x", "parameters": {"seed": -1}},
        {"parameters": {}},
        {"inputs": 5},
    ],
)
def test_invalid_requests_are_422_with_a_validation_error(body):
    async def check(client, engine: FakeEngine):
        response = await client.post(GENERATE, json=body)
        assert response.status_code == 422
        assert response.json()["error_type"] == "validation"
        assert isinstance(response.json()["error"], str) and response.json()["error"]
        assert engine.streams == []

    run_with_client(check)


def test_malformed_json_is_422():
    async def check(client, engine):
        response = await client.post(GENERATE, content=b"{not json", headers={"content-type": "application/json"})
        assert response.status_code == 422
        assert response.json()["error_type"] == "validation"

    run_with_client(check)


def test_engine_validation_error_is_422():
    async def check(client, engine):
        response = await client.post(GENERATE, json={"inputs": ""})
        assert response.status_code == 422
        assert response.json() == {"error": "the prompt is empty", "error_type": "validation"}

    run_with_client(check)


def test_unknown_task_is_404():
    async def check(client, engine):
        response = await client.post(GENERATE, params={"task": "nope"}, json={"inputs": "x"})
        assert response.status_code == 404
        assert response.json() == {"error": "unknown task 'nope'", "error_type": "not_found"}

    run_with_client(check)


def test_full_queue_is_429_with_retry_after():
    async def check(client, engine: FakeEngine):
        engine.queue_is_full = True
        response = await client.post(GENERATE, json={"inputs": "x"})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "3"
        assert response.json() == {"error": "queue full", "error_type": "overloaded"}

    run_with_client(check)


def test_loading_and_draining_are_503():
    async def check(client, engine: FakeEngine):
        engine.is_loaded = False
        response = await client.post(GENERATE, json={"inputs": "x"})
        assert (response.status_code, response.json()["error_type"]) == (503, "unavailable")
        engine.is_loaded = True
        draining = asyncio.create_task(client._transport.app.state.context.service.drain(1.0))
        await asyncio.sleep(0)
        response = await client.post(GENERATE, json={"inputs": "x"})
        assert (response.status_code, response.json()["error_type"]) == (503, "unavailable")
        assert "shutting down" in response.json()["error"]
        assert await draining

    run_with_client(check)


def test_request_past_its_deadline_is_cancelled_and_503():
    async def check(client, engine: FakeEngine):
        engine.is_paused = True
        response = await client.post(GENERATE, json={"inputs": "x"})
        assert response.status_code == 503
        assert "request timeout" in response.json()["error"]
        assert engine.streams[-1].is_cancelled
        response = await client.post(GENERATE, json={"inputs": "x", "stream": True})
        assert sse_payloads(response.text)[-2]["error_type"] == "unavailable"
        assert engine.streams[-1].is_cancelled

    run_with_client(check, request_timeout_s=0.05)
