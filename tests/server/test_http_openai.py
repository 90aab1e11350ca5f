"""OpenAI-compatible routes against the fake engine: shapes, parameter mapping, errors, and the official client."""

from __future__ import annotations

import httpx
import openai
import pytest
from test_http_fake_engine import BASE_MODEL_ID, FakeEngine, run_with_client, sse_payloads

from server.engine.request import SamplingParams

PROMPT_CONFIG = b'{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}'


def test_completion_shape_and_usage():
    async def check(client, engine: FakeEngine):
        response = await client.post(
            "/v1/completions", json={"model": BASE_MODEL_ID, "prompt": "Hi", "max_tokens": 2, "temperature": 0}
        )
        assert response.status_code == 200
        body = response.json()
        assert body["id"].startswith("cmpl-") and body["object"] == "text_completion" and body["model"] == BASE_MODEL_ID
        assert body["choices"] == [{"index": 0, "text": " w0 w1", "logprobs": None, "finish_reason": "length"}]
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        assert engine.streams[-1].request.task is None

    run_with_client(check)


def test_sampling_follows_openai_defaults_and_temperature_zero_is_greedy():
    async def check(client, engine: FakeEngine):
        await client.post("/v1/completions", json={"prompt": "x"})
        assert engine.streams[-1].request.sampling == SamplingParams(max_new_tokens=16, do_sample=True, temperature=1.0)
        body = {
            "prompt": "x",
            "max_tokens": 3,
            "temperature": 0,
            "top_p": 0.5,
            "stop": "END",
            "seed": 7,
            "top_k": 5,
            "ignore_eos": True,
        }
        await client.post("/v1/completions", json=body)
        assert engine.streams[-1].request.sampling == SamplingParams(
            max_new_tokens=3, do_sample=False, top_p=0.5, top_k=5, stop=("END",), seed=7, ignore_eos=True
        )

    run_with_client(check)


def test_unknown_fields_are_ignored_and_token_prompts_accepted():
    async def check(client, engine: FakeEngine):
        body = {
            "prompt": [[5, 6, 7]],
            "max_tokens": 1,
            "frequency_penalty": 0.5,
            "logit_bias": {},
            "user": "u",
            "whatever": [1],
        }
        response = await client.post("/v1/completions", json=body)
        assert response.status_code == 200
        assert engine.streams[-1].request.prompt == (5, 6, 7)

    run_with_client(check)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x", "n": 9}, "n"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "stop": ["1", "2", "3", "4", "5"]}, "stop"),
        ({"max_tokens": 3}, "prompt"),
    ],
)
def test_invalid_completion_requests_are_400_in_openai_shape(body, param):
    async def check(client, engine: FakeEngine):
        response = await client.post("/v1/completions", json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error.keys() == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["message"]
        assert error["param"] == param
        assert engine.streams == []

    run_with_client(check)


def test_unknown_model_is_404_model_not_found():
    async def check(client, engine):
        response = await client.post(
            "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}
        )
        assert response.status_code == 404
        assert response.json() == {
            "error": {
                "message": "unknown task 'nope'",
                "type": "not_found_error",
                "param": "model",
                "code": "model_not_found",
            }
        }

    run_with_client(check)


def test_chat_applies_the_template_and_answers_in_chat_shape():
    async def check(client, engine: FakeEngine):
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ]
        response = await client.post(
            "/v1/chat/completions", json={"messages": messages, "max_tokens": 2, "temperature": 0}
        )
        body = response.json()
        assert response.status_code == 200
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        assert body["choices"] == [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " w0 w1"},
                "logprobs": None,
                "finish_reason": "length",
            }
        ]
        # tokenized off the event loop, so the engine gets the template's tokens
        assert engine.streams[-1].request.prompt == tuple(engine.tokenize("<system>Be brief.<user>Hi<assistant>"))
        assert body["usage"]["prompt_tokens"] == len(engine.tokenize("<system>Be brief.<user>Hi<assistant>"))

    run_with_client(check)


def test_chat_without_max_tokens_may_fill_the_context_up_to_the_limit():
    async def check(client, engine: FakeEngine):
        await client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "temperature": 0}
        )
        assert engine.streams[-1].request.sampling.max_new_tokens == 300

    run_with_client(check, max_new_tokens_limit=300)


def test_chat_stream_chunks_end_with_usage_then_done():
    async def check(client, engine: FakeEngine):
        body = {
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        events = sse_payloads((await client.post("/v1/chat/completions", json=body)).text)
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
        assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
            {"role": "assistant", "content": ""},
            {"content": " w0"},
            {"content": " w1"},
            {},
        ]
        assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, None, "length"]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
            "prompt_tokens": 19,
            "completion_tokens": 2,
            "total_tokens": 21,
        }

    run_with_client(check)


def test_completion_stream_without_usage_and_with_echo():
    async def check(client, engine: FakeEngine):
        body = {"prompt": "Hi", "max_tokens": 2, "stream": True, "echo": True}
        chunks = sse_payloads((await client.post("/v1/completions", json=body)).text)[:-1]
        assert [c["choices"][0]["text"] for c in chunks] == ["Hi", " w0", " w1"]
        assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
        assert all(c["usage"] is None for c in chunks)

    run_with_client(check)


def test_models_lists_the_base_model_then_tasks():
    async def check(client, engine: FakeEngine):
        engine.registry.upload("b-task", PROMPT_CONFIG, b"w")
        engine.registry.upload("a-task", PROMPT_CONFIG, b"w")
        body = (await client.get("/v1/models")).json()
        assert body["object"] == "list"
        assert [(m["id"], m["root"], m["parent"]) for m in body["data"]] == [
            (BASE_MODEL_ID, BASE_MODEL_ID, None),
            ("a-task", "a-task", BASE_MODEL_ID),
            ("b-task", "b-task", BASE_MODEL_ID),
        ]
        assert all(m["object"] == "model" and m["owned_by"] == "promptswap" for m in body["data"])

    run_with_client(check)


def test_official_openai_client_works_unchanged():
    async def check(client: httpx.AsyncClient, engine: FakeEngine):
        engine.registry.upload("geo", PROMPT_CONFIG, b"w")
        api = openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=client, max_retries=0)
        assert [m.id for m in (await api.models.list()).data] == [BASE_MODEL_ID, "geo"]
        completion = await api.completions.create(model="geo", prompt="Hi", max_tokens=3, temperature=0)
        assert completion.choices[0].text == " w0 w1 w2" and completion.usage.completion_tokens == 3
        chat = await api.chat.completions.create(
            model=BASE_MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
        assert chat.choices[0].message.content == " w0 w1" and chat.choices[0].finish_reason == "length"
        stream = await api.chat.completions.create(
            model="geo",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " w0 w1"
        assert chunks[-1].usage.completion_tokens == 2
        with pytest.raises(openai.NotFoundError):
            await api.completions.create(model="missing", prompt="Hi")
        with pytest.raises(openai.BadRequestError):
            await api.completions.create(model="geo", prompt="Hi", n=9)
        engine.queue_is_full = True
        with pytest.raises(openai.RateLimitError):
            await api.completions.create(model="geo", prompt="Hi")

    run_with_client(check)
