"""`/v1/generate`'s TGI details: tokens, top_tokens, prefill, streamed logprobs, and `grammar`."""

from __future__ import annotations

import json

import pytest
from test_http_fake_engine import FakeEngine, run_with_client, sse_payloads

from server.engine.request import ResponseFormat

GENERATE = "/v1/generate"
SCHEMA = {"type": "object"}


def test_details_tokens_top_tokens_and_prefill_when_asked():
    async def check(client, engine: FakeEngine):
        parameters = {"max_new_tokens": 2, "details": True, "top_n_tokens": 2, "decoder_input_details": True}
        details = (await client.post(GENERATE, json={"inputs": "HI", "parameters": parameters})).json()["details"]
        assert details["finish_reason"] == "length" and details["generated_tokens"] == 2
        assert details["tokens"] == [
            {"id": 100, "text": " w0", "logprob": -0.25, "special": False},
            {"id": 101, "text": " w1", "logprob": -0.5, "special": False},
        ]
        assert details["top_tokens"] == [
            [
                {"id": 100, "text": " w0", "logprob": -0.25, "special": False},
                {"id": 101, "text": " w1", "logprob": -1.25, "special": False},
            ],
            [
                {"id": 101, "text": " w1", "logprob": -0.5, "special": False},
                {"id": 102, "text": " w2", "logprob": -1.5, "special": False},
            ],
        ]
        assert details["prefill"] == [
            {"id": 1, "text": "<s>", "logprob": None},
            {"id": 72, "text": "H", "logprob": -1.5},
            {"id": 73, "text": "I", "logprob": -1.5},
        ]
        sampling = engine.streams[-1].request.sampling
        assert (sampling.logprobs, sampling.prompt_logprobs) == (2, 0)

    run_with_client(check)


def test_nothing_unasked_is_computed_or_sent():
    async def check(client, engine: FakeEngine):
        details = (await client.post(GENERATE, json={"inputs": "x", "parameters": {"details": False}})).json()[
            "details"
        ]
        assert details.keys() == {"finish_reason", "generated_tokens", "prompt_tokens", "task", "task_version"}
        assert engine.streams[-1].request.sampling.logprobs is None
        details = (await client.post(GENERATE, json={"inputs": "x", "parameters": {"details": True}})).json()["details"]
        assert "tokens" in details and "top_tokens" not in details and "prefill" not in details

    run_with_client(check)


def test_stream_tokens_carry_logprob_special_and_top_tokens():
    async def check(client, engine: FakeEngine):
        engine.tokens_per_step = 2
        body = {"inputs": "x", "parameters": {"max_new_tokens": 2, "top_n_tokens": 1}, "stream": True}
        events = sse_payloads((await client.post(GENERATE, json=body)).text)[:-1]
        assert [e["token"] for e in events] == [
            {"id": 100, "text": "", "logprob": -0.25, "special": False},
            {"id": 101, "text": " w0 w1", "logprob": -0.5, "special": False},
        ]
        assert [e["top_tokens"] for e in events] == [
            [{"id": 100, "text": " w0", "logprob": -0.25, "special": False}],
            [{"id": 101, "text": " w1", "logprob": -0.5, "special": False}],
        ]
        assert events[-1]["generated_text"] == " w0 w1"

    run_with_client(check)


@pytest.mark.parametrize(
    "grammar",
    [
        {"type": "json", "value": SCHEMA},
        {"type": "json", "value": json.dumps(SCHEMA)},
        {"type": "json_schema", "value": {"name": "x", "schema": SCHEMA}},
    ],
)
def test_json_grammar_becomes_a_json_schema_response_format(grammar):
    async def check(client, engine: FakeEngine):
        body = {"inputs": "x", "parameters": {"grammar": grammar, "frequency_penalty": 0.5}}
        assert (await client.post(GENERATE, json=body)).status_code == 200
        sampling = engine.streams[-1].request.sampling
        assert sampling.response_format == ResponseFormat("json_schema", json.dumps(SCHEMA))
        assert sampling.frequency_penalty == 0.5

    run_with_client(check)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"parameters": {"grammar": {"type": "regex", "value": "[a-z]+"}}}, "parameters.grammar"),
        ({"parameters": {"grammar": {"type": "json", "value": "{nope"}}}, "parameters.grammar"),
        ({"parameters": {"top_n_tokens": 6}}, "top_n_tokens"),
        ({"parameters": {"frequency_penalty": 3}}, "frequency_penalty"),
        ({"parameters": {"decoder_input_details": True}, "stream": True}, "parameters.decoder_input_details"),
    ],
)
def test_unservable_parameters_are_422_naming_them(body, field):
    async def check(client, engine: FakeEngine):
        response = await client.post(GENERATE, json={"inputs": "x"} | body)
        assert response.status_code == 422
        assert field in response.json()["error"] and response.json()["error_type"] == "validation"
        assert engine.streams == []

    run_with_client(check)
