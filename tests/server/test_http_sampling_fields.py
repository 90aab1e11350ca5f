"""The OpenAI routes' sampling fields beyond v1 reach SamplingParams; fields the server cannot honour are a 400
naming them."""

from __future__ import annotations

import json

import pytest
from test_http_fake_engine import FakeEngine, run_with_client

from server.engine.request import ResponseFormat

MESSAGES = [{"role": "user", "content": "x"}]
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


@pytest.mark.parametrize(
    "path, prompt", [("/v1/completions", {"prompt": "x"}), ("/v1/chat/completions", {"messages": MESSAGES})]
)
def test_new_sampling_fields_reach_the_engine(path, prompt):
    async def check(client, engine: FakeEngine):
        body = prompt | {
            "max_tokens": 4,
            "presence_penalty": 0.5,
            "frequency_penalty": -1.0,
            "logit_bias": {"50": 100, "7": -2.5},
            "min_tokens": 2,
            "stop_token_ids": [3, 9],
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "strict": True}},
        }
        response = await client.post(path, json=body)
        assert response.status_code == 200, response.text
        sampling = engine.streams[-1].request.sampling
        assert (sampling.presence_penalty, sampling.frequency_penalty) == (0.5, -1.0)
        assert sampling.logit_bias == ((50, 100.0), (7, -2.5))
        assert (sampling.min_tokens, sampling.stop_token_ids) == (2, (3, 9))
        assert sampling.response_format == ResponseFormat("json_schema", json.dumps(SCHEMA))

    run_with_client(check)


@pytest.mark.parametrize(
    "response_format, expected",
    [({"type": "text"}, None), ({"type": "json_object"}, ResponseFormat("json_object"))],
)
def test_text_and_json_object_response_formats(response_format, expected):
    async def check(client, engine: FakeEngine):
        body = {"messages": MESSAGES, "max_tokens": 1, "response_format": response_format}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        assert engine.streams[-1].request.sampling.response_format == expected
        # compiled off the event loop before admission, once per request
        assert engine.compiled_formats == ([] if expected is None else [expected])

    run_with_client(check)


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"-3": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"stop_token_ids": [-1]}, "stop_token_ids.0"),
        ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"response_format": {"type": "grammar"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": [1]}}}, "response_format"),
        ({"n": 9}, "n"),
        ({"suffix": "tail"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"logprobs": 6}, "logprobs"),
    ],
)
def test_invalid_or_refused_completion_fields_are_400_naming_them(extra, param):
    async def check(client, engine: FakeEngine):
        response = await client.post("/v1/completions", json={"prompt": "x"} | extra)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert engine.streams == []

    run_with_client(check)


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": {"name": "f"}}, "function_call"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"response_format": {"type": "xml"}}, "response_format"),
    ],
)
def test_refused_chat_fields_are_400_naming_them(extra, param):
    async def check(client, engine: FakeEngine):
        response = await client.post("/v1/chat/completions", json={"messages": MESSAGES} | extra)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
        assert engine.streams == []

    run_with_client(check)


def test_what_means_no_tools_and_text_only_passes():
    async def check(client, engine: FakeEngine):
        extra = {
            "tools": [],
            "tool_choice": "none",
            "modalities": ["text"],
            "best_of": None,
            "user": "u",
            "store": False,
        }
        response = await client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 1} | extra)
        assert response.status_code == 200
        response = await client.post(
            "/v1/completions", json={"prompt": "x", "max_tokens": 1, "n": 2, "best_of": 2, "suffix": ""}
        )
        assert response.status_code == 200

    run_with_client(check)
