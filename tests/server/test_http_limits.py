"""Inference limits against the fake engine: body size, prompt characters, stop strings, messages, the token budget,
out-of-range and non-finite parameters, invalid Unicode; each a 4xx naming its field before the engine sees the
request. Tokenizing runs off the event loop, on a bounded pool."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from test_http_fake_engine import FakeEngine, call_asgi, fake_config, run_with_client

from server.config import ConfigError, EngineConfig, load_config
from server.http.app import create_app

PROMPT_CONFIG = b'{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}'
MAX_MODEL_LEN = 64  # the fake tokenizes "x" * n into n + 1 tokens
LIMITS = {
    "max_inference_body_bytes": 4000,
    "max_prompt_chars": 1000,
    "max_stop_chars": 8,
    "max_messages": 3,
    "engine": EngineConfig(max_model_len=MAX_MODEL_LEN),
}
CHAT = "/v1/chat/completions"


def _user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


async def _post(client, path: str, body) -> tuple[int, dict]:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(path, content=content, headers={"content-type": "application/json"})
    return response.status_code, response.json()


def _assert_refused(status: int, body: dict, path: str, field: str, engine: FakeEngine) -> None:
    """The route's 4xx shape naming `field` (OpenAI: `param`; TGI: the message), and nothing submitted."""
    if path == "/v1/generate":
        assert status == 422, body
        assert body["error_type"] == "validation" and field in body["error"], body
    else:
        assert status == 400, body
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == field, body
    assert engine.streams == []


# (route, body, the field it must name)
REFUSED = [
    ("/v1/generate", {"inputs": "x" * 1001}, "inputs"),
    ("/v1/completions", {"prompt": "x" * 1001}, "prompt"),
    ("/v1/completions", {"prompt": ["x" * 1001]}, "prompt"),
    (CHAT, {"messages": _user("x" * 1001)}, "messages"),
    (CHAT, {"messages": _user("x" * 400) * 3}, "messages"),  # 1200 characters in all
    (CHAT, {"messages": _user("x") * 4}, "messages"),
    ("/v1/generate", {"inputs": "x", "parameters": {"stop": ["123456789"]}}, "parameters.stop"),
    ("/v1/completions", {"prompt": "x", "stop": "123456789"}, "stop"),
    (CHAT, {"messages": _user("x"), "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    (CHAT, {"messages": _user("x"), "stop": [""]}, "stop"),
    ("/v1/generate", {"inputs": "x" * 63}, "inputs"),  # 64 tokens: no room to generate one
    ("/v1/completions", {"prompt": list(range(64))}, "prompt"),
    ("/v1/generate", {"inputs": "x" * 10, "parameters": {"max_new_tokens": 54}}, "parameters.max_new_tokens"),
    ("/v1/completions", {"prompt": "x" * 10, "max_tokens": 54}, "max_tokens"),
    (CHAT, {"messages": _user("x"), "max_tokens": 10**6}, "max_tokens"),
    (CHAT, {"messages": _user("x"), "max_completion_tokens": 60}, "max_completion_tokens"),
    ("/v1/generate", {"inputs": ""}, "prompt"),  # "the prompt is empty", as the engine says it
    ("/v1/completions", {"prompt": []}, "prompt"),
    ("/v1/completions", {"prompt": "x", "n": 9}, "n"),
]


@pytest.mark.parametrize("path, body, field", REFUSED)
def test_requests_over_the_limits_are_refused_naming_the_field(path, body, field):
    async def check(client, engine: FakeEngine):
        _assert_refused(*await _post(client, path, body), path, field, engine)

    run_with_client(check, **LIMITS)


# Raw JSON text: Python's json reads NaN and Infinity, and "\ud800" escapes to a lone surrogate.
RAW_REFUSED = [
    ("/v1/generate", b'{"inputs": "x", "parameters": {"temperature": NaN, "do_sample": true}}', "temperature"),
    ("/v1/generate", b'{"inputs": "x", "parameters": {"top_p": NaN}}', "top_p"),
    ("/v1/generate", b'{"inputs": "x", "parameters": {"temperature": Infinity}}', "temperature"),
    ("/v1/generate", b'{"inputs": "x", "parameters": {"repetition_penalty": -Infinity}}', "repetition_penalty"),
    ("/v1/generate", b'{"inputs": "x", "parameters": {"repetition_penalty": 1e300}}', "repetition_penalty"),
    ("/v1/generate", b'{"inputs": "x", "parameters": {"temperature": 1e300}}', "temperature"),
    ("/v1/generate", b'{"inputs": "x", "parameters": {"seed": 9223372036854775808}}', "seed"),
    ("/v1/generate", b'{"inputs": "x", "parameters": {"seed": 1e400}}', "seed"),
    ("/v1/generate", b'{"inputs": "a\\ud800b"}', "inputs"),
    ("/v1/generate", b'{"inputs": "x", "parameters": {"stop": ["\\udfff"]}}', "parameters.stop.0"),
    ("/v1/completions", b'{"prompt": "x", "temperature": NaN}', "temperature"),
    ("/v1/completions", b'{"prompt": "x", "temperature": 100.5}', "temperature"),
    ("/v1/completions", b'{"prompt": "x", "top_p": Infinity}', "top_p"),
    ("/v1/completions", b'{"prompt": "x", "presence_penalty": NaN}', "presence_penalty"),
    ("/v1/completions", b'{"prompt": "x", "frequency_penalty": 2.5}', "frequency_penalty"),
    ("/v1/completions", b'{"prompt": "x", "seed": 18446744073709551616}', "seed"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 1e400}', "max_tokens"),
    ("/v1/completions", b'{"prompt": "\\ud800"}', "prompt"),
    (CHAT, b'{"messages": [{"role": "user", "content": "\\ud83d"}]}', "messages.0.content"),
    (CHAT, b'{"messages": [{"role": "\\udc00", "content": "x"}]}', "messages.0.role"),
    (CHAT, b'{"messages": [{"role": "user", "content": "x"}], "repetition_penalty": 0.001}', "repetition_penalty"),
]


@pytest.mark.parametrize("path, raw, field", RAW_REFUSED)
def test_non_finite_out_of_range_and_invalid_unicode_values_are_refused_naming_the_field(path, raw, field):
    async def check(client, engine: FakeEngine):
        status, body = await _post(client, path, raw)
        if path == "/v1/generate":
            field_name = field.split(".")[-1] if field != "parameters.stop.0" else "stop"
            assert status == 422 and body["error_type"] == "validation" and field_name in body["error"], body
            assert engine.streams == []
        else:
            _assert_refused(status, body, path, field, engine)  # a field's path, without pydantic's union tags

    run_with_client(check, **LIMITS)


def test_what_fits_is_served_and_omitted_maximums_become_what_fits():
    async def check(client, engine: FakeEngine):
        engine.registry.upload("geo", PROMPT_CONFIG, b"w")
        fits = {"inputs": "x" * 10, "parameters": {"max_new_tokens": 49}}  # 11 + 4 virtual + 49 = 64
        status, body = await _post(client, "/v1/generate?task=geo", fits)
        assert status == 200 and body["details"]["generated_tokens"] == 49
        status, body = await _post(client, "/v1/generate?task=geo", {**fits, "parameters": {"max_new_tokens": 50}})
        assert status == 422 and "max_new_tokens" in body["error"] and "+4 virtual" in body["error"], body
        status, _ = await _post(client, "/v1/completions", {"prompt": "x" * 59})  # the default 16 does not fit
        assert status == 200 and engine.streams[-1].request.sampling.max_new_tokens == 4
        status, _ = await _post(client, CHAT, {"messages": _user("x" * 10), "model": "geo"})
        num_prompt_tokens = len(engine.tokenize("<user>" + "x" * 10 + "<assistant>"))
        assert status == 200 and engine.streams[-1].request.sampling.max_new_tokens == 64 - 4 - num_prompt_tokens
        status, _ = await _post(client, "/v1/generate", {"inputs": "x", "parameters": {"stop": ["12345678"] * 4}})
        assert status == 200
        status, _ = await _post(client, CHAT, {"messages": _user("x" * 300) * 3})  # 3 messages, 912 characters
        assert status == 400  # ... but 900+ tokens do not fit 64; the message count and characters passed

    run_with_client(check, **LIMITS)


def test_extreme_but_valid_sampling_values_reach_the_engine():
    async def check(client, engine: FakeEngine):
        parameters = {"do_sample": True, "temperature": 5e-324, "top_p": 5e-324, "top_k": 2**80, "seed": 2**63 - 1}
        status, body = await _post(client, "/v1/generate", {"inputs": "x", "parameters": parameters})
        assert status == 200, body
        sampling = engine.streams[-1].request.sampling
        assert sampling.is_greedy and sampling.top_k == 2**80 and sampling.seed == 2**63 - 1
        unusual = "\U0001f642 e\u0301 \u202e\x00 日本"
        status, _ = await _post(client, "/v1/completions", {"prompt": unusual, "temperature": 100})
        assert status == 200

    run_with_client(check, **LIMITS)


def test_an_inference_body_over_its_limit_is_refused_before_it_is_read_while_uploads_keep_theirs():
    engine = FakeEngine(fake_config(**LIMITS))
    app = create_app(engine.config, engine)

    async def main():
        for path in ("/v1/generate", "/v1/completions", CHAT):
            headers = {"content-type": "application/json", "content-length": "4001"}
            sent, num_receives = await call_asgi(app, "POST", path, b"", headers, asyncio.Event())
            assert sent[0]["status"] == 413 and num_receives == 0
            error = json.loads(sent[1]["body"])
            assert (
                error["error"]["code"] == "request_too_large"
                if path != "/v1/generate"
                else error
                == {
                    "error": "request body exceeds the limit of 4000 bytes",
                    "error_type": "too_large",
                }
            )
        body = json.dumps({"inputs": "x" * 4000}).encode()  # no Content-Length: refused as the bytes arrive
        headers = {"content-type": "application/json"}
        sent, _ = await call_asgi(app, "POST", "/v1/generate", body, headers, asyncio.Event())
        assert sent[0]["status"] == 413

    asyncio.run(main())

    async def upload(client, engine: FakeEngine):
        files = {"adapter_config": ("c", PROMPT_CONFIG), "adapter_model": ("m", b"w" * 20_000)}
        headers = {"Authorization": "Bearer test-admin-token"}
        response = await client.put("/v1/admin/prompts/big", files=files, headers=headers)
        assert response.status_code == 201, response.text

    run_with_client(upload, **LIMITS)


def test_tokenizing_runs_off_the_event_loop_on_a_bounded_pool():
    async def check(client, engine: FakeEngine):
        entered, release = threading.Event(), threading.Event()
        threads = []
        real_tokenize = engine.tokenize

        def slow_tokenize(text: str, add_special_tokens: bool = True) -> list[int]:
            threads.append(threading.current_thread().name)
            entered.set()
            release.wait(10)
            return real_tokenize(text, add_special_tokens)

        engine.tokenize = slow_tokenize
        first = asyncio.create_task(_post(client, "/v1/generate", {"inputs": "x", "parameters": {"max_new_tokens": 2}}))
        second = asyncio.create_task(_post(client, CHAT, {"messages": _user("x"), "max_tokens": 2}))
        while not entered.is_set() or len(threads) < 2:
            await asyncio.sleep(0.005)
        # both tokenizers are stuck in their threads, and the loop still answers everyone else
        assert (await client.get("/health")).status_code == 200
        status, body = await _post(client, "/v1/completions", {"prompt": "x"})
        assert status == 429 and body["error"]["type"] == "rate_limit_error"  # max_waiting=2 preparations at once
        release.set()
        assert [(await first)[0], (await second)[0]] == [200, 200]
        assert all(name.startswith("promptswap-prepare") for name in threads)
        assert (await _post(client, "/v1/completions", {"prompt": "x"}))[0] == 200

    run_with_client(check, tokenizer_threads=2, max_waiting=2)


def test_limits_are_configuration_read_from_the_environment():
    environ = {
        "PROMPTSWAP_MAX_INFERENCE_BODY_BYTES": "1234",
        "PROMPTSWAP_MAX_PROMPT_CHARS": "99",
        "PROMPTSWAP_MAX_STOP_CHARS": "7",
        "PROMPTSWAP_MAX_MESSAGES": "5",
        "PROMPTSWAP_TOKENIZER_THREADS": "3",
        "PROMPTSWAP_HOST_CACHE_BYTES": "4096",
    }
    config = load_config(flags={}, environ=environ)
    assert (config.max_inference_body_bytes, config.max_prompt_chars, config.max_stop_chars) == (1234, 99, 7)
    assert (config.max_messages, config.tokenizer_threads, config.store.host_cache_bytes) == (5, 3, 4096)
    defaults = load_config(flags={}, environ={})
    assert (defaults.max_inference_body_bytes, defaults.max_prompt_chars, defaults.max_stop_chars) == (
        2_000_000,
        100_000,
        256,
    )
    for variable in environ:
        with pytest.raises(ConfigError):
            load_config(flags={}, environ={variable: "0"})
