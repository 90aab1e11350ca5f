"""Hostile inference requests against a real server: every field of every inference route (`/v1/generate` JSON and
stream, `/v1/completions`, `/v1/chat/completions`, streaming or not) gets floats from subnormal to 1e308 at both
ends of its range, NaN and Infinity literals, integers past 2**63, empty, over-the-limit and body-sized strings,
lone surrogates (sent as `\\ud800` escapes in the JSON text), unusual Unicode, nested JSON and wrong types; some
bodies are not JSON at all. Each request gets a 200 or a 4xx in the contract's shape, within a client timeout
(never a 5xx, never a hang), and a normal greedy request right after it is still served, with the same text."""

from __future__ import annotations

import json
import urllib.parse

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.server_process import sse_payloads, start_server, upload_adapter

TASK = "fuzz-task"
MAX_PROMPT_CHARS = 3000
MAX_INFERENCE_BODY_BYTES = 60_000
MAX_NEW_TOKENS_LIMIT = 12  # every valid request is short to serve
REQUEST_TIMEOUT_S = 60  # the client's: a request that hangs fails the test
FUZZ = settings(
    max_examples=55,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
TGI_ERROR_TYPES = {"validation", "not_found", "too_large"}
OPENAI_ERROR_TYPES = {"invalid_request_error", "not_found_error"}
GREEDY = {"inputs": "The capital of France is", "parameters": {"max_new_tokens": 4}}


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    env = {
        "PROMPTSWAP_MAX_PROMPT_CHARS": str(MAX_PROMPT_CHARS),
        "PROMPTSWAP_MAX_INFERENCE_BODY_BYTES": str(MAX_INFERENCE_BODY_BYTES),
        "PROMPTSWAP_MAX_NEW_TOKENS_LIMIT": str(MAX_NEW_TOKENS_LIMIT),
        "PROMPTSWAP_MAX_MESSAGES": "6",
    }
    server = start_server(tiny_llama_dir, tmp_path_factory.mktemp("e2e-inference-fuzz"), env=env)
    yield server
    assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log(num_chars=10**7), server.log()


@pytest.fixture(scope="module")
def client(server, tiny_llama_dir, adapter_factory):
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as client:
        adapter_dir = adapter_factory(tiny_llama_dir, "PROMPT_TUNING")
        assert upload_adapter(client, server, TASK, adapter_dir).status_code == 201
        yield client


@pytest.fixture(scope="module")
def greedy_text(client) -> str:
    response = client.post("/v1/generate", json=GREEDY)
    assert response.status_code == 200, response.text
    return response.json()["generated_text"]


# ---- values --------------------------------------------------------------------------------------------------------
# In range, at the edges of the range: the requests that reach the engine.
def _in_range(low: float, high: float, edges: list[float]) -> st.SearchStrategy:
    return st.one_of(st.sampled_from(edges), st.floats(low, high))


unicode_texts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60)
valid_texts = st.one_of(
    st.sampled_from(["Hello", " ", "\U0001f642\u202e\u0301\x00\uffff\U0010ffff 日本語 \n\t", "ab" * 1000]),
    unicode_texts,
)
valid_stops = st.one_of(unicode_texts, st.lists(st.text(min_size=1, max_size=256).filter(str.isprintable), max_size=4))
SAMPLING = {
    "temperature": _in_range(5e-324, 100.0, [5e-324, 1e-300, 9.99e-6, 1e-5, 0.01, 1.0, 2.0, 100.0]),
    "top_p": _in_range(5e-324, 1.0, [5e-324, 1e-300, 1e-9, 0.5, 1.0]),
    "top_k": st.one_of(st.sampled_from([0, 1, 2**31, 2**63, 2**80, 10**30]), st.integers(0, 100)),
    "repetition_penalty": _in_range(0.01, 100.0, [0.01, 0.5, 1.0, 2.0, 100.0]),
    "seed": st.one_of(st.sampled_from([0, 2**63 - 1]), st.integers(0, 2**63 - 1)),
    "stop": valid_stops,
}
GENERATE_PARAMETERS = SAMPLING | {
    "max_new_tokens": st.integers(1, MAX_NEW_TOKENS_LIMIT),
    "do_sample": st.booleans(),
    "return_full_text": st.booleans(),
    "details": st.booleans(),
}
OPENAI_FIELDS = SAMPLING | {
    "temperature": _in_range(0.0, 100.0, [0.0, 5e-324, 1e-300, 9.99e-6, 1.0, 2.0, 100.0]),
    "model": st.sampled_from([TASK]),
    "n": st.just(1),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "ignore_eos": st.booleans(),
    "subtask": st.just(0),
    "presence_penalty": _in_range(-2.0, 2.0, [-2.0, 0.0, 2.0]),
    "frequency_penalty": _in_range(-2.0, 2.0, [-2.0, 5e-324, 2.0]),
    "logit_bias": st.dictionaries(st.text(max_size=4), st.integers()),  # ignored, as OpenAI's unknown fields are
    "user": st.text(max_size=10),
}
token_prompts = st.lists(st.integers(0, 49151), min_size=1, max_size=20)
text_parts = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": valid_texts}), min_size=1, max_size=3)
valid_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"]), "content": st.one_of(valid_texts, text_parts)}
    ),
    min_size=1,
    max_size=6,
)

# Out of range or not the field's type at all.
HOSTILE_FLOATS = [
    0.0,
    -0.0,
    -5e-324,
    -1.0,
    1.0000001,
    2.0000001,
    100.5,
    1e5,
    1e300,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    float("nan"),
    float("inf"),
    -float("inf"),
]
HOSTILE_INTS = [-1, 0, 13, 512, 2**63, 2**64 - 1, 2**64, 10**30, -(2**63), -(10**30)]
HOSTILE_STRINGS = [
    "",
    "\ud800",  # a lone surrogate: json.dumps sends it as the escape "\ud800"
    "a\udfffb",
    "x" * (MAX_PROMPT_CHARS + 1),  # over the character limit
    "word " * 590,  # within the character limit, longer than the model (512 tokens)
    "é" * (MAX_INFERENCE_BODY_BYTES // 2),  # over the body limit once escaped
    "missing",
]
hostile_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(HOSTILE_FLOATS),
    st.floats(),
    st.sampled_from(HOSTILE_INTS),
    st.integers(-(2**70), 2**70),
    st.sampled_from(HOSTILE_STRINGS),
    st.text(max_size=20),
)
hostile = st.recursive(
    hostile_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


def _bodies(fields: dict[str, st.SearchStrategy], required: tuple[str, ...] = ()) -> st.SearchStrategy[dict]:
    """Half valid requests (every field in range, at its edges), the others with one field or every field hostile."""

    @st.composite
    def build(draw) -> dict:
        optional = {name: strategy for name, strategy in fields.items() if name not in required}
        body = draw(st.fixed_dictionaries({name: fields[name] for name in required}, optional=optional))
        mode = draw(st.sampled_from(["valid", "valid", "one field", "every field"]))
        if mode == "one field":
            body[draw(st.sampled_from(sorted(fields)))] = draw(hostile)
        elif mode == "every field":
            body = {name: draw(hostile) for name in body}
        return body

    return build()


generate_bodies = _bodies(
    {"inputs": valid_texts, "parameters": _bodies(GENERATE_PARAMETERS), "stream": st.booleans()}, ("inputs",)
)
generate_queries = st.fixed_dictionaries(
    {},
    optional={
        "task": st.sampled_from([TASK, TASK, "", "missing", "\ud800", "x" * 300]),
        "subtask": st.sampled_from(["0", "0", "1", "-1", "99999999999999999999999", "x", "1e400"]),
    },
)
completion_bodies = _bodies(
    OPENAI_FIELDS
    | {
        "prompt": st.one_of(
            valid_texts,
            st.lists(valid_texts, min_size=1, max_size=1),
            token_prompts,
            st.lists(token_prompts, min_size=1, max_size=1),
        ),
        "max_tokens": st.integers(1, MAX_NEW_TOKENS_LIMIT),
        "echo": st.booleans(),
    },
    ("prompt",),
)
chat_bodies = _bodies(
    OPENAI_FIELDS
    | {
        "messages": valid_messages,
        "max_tokens": st.integers(1, MAX_NEW_TOKENS_LIMIT),
        "max_completion_tokens": st.integers(1, MAX_NEW_TOKENS_LIMIT),
    },
    ("messages",),
)


# ---- checks --------------------------------------------------------------------------------------------------------
def _send(client: httpx.Client, path: str, body, params: dict | None = None) -> tuple[int, object]:
    """POST `body` (a JSON value written with NaN/Infinity literals and \\ud800 escapes, or raw bytes); the
    status and the decoded answer: the JSON body, or for a 200 event stream the list of its payloads."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if params:  # percent-encoded by hand: a lone surrogate travels as its (invalid) UTF-8 bytes
        path += "?" + "&".join(f"{name}={_quote(value)}" for name, value in params.items())
    with client.stream("POST", path, content=content, headers=headers) as response:
        raw = response.read()
    if response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream"):
        return 200, sse_payloads(raw.decode().split("\n\n"))
    return response.status_code, json.loads(raw)


def _quote(value: str) -> str:
    return urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")


def _assert_answered_in_shape(status: int, answer, is_openai: bool) -> None:
    assert status in (200, 400, 404, 413, 422), (status, answer)
    if status == 200:
        if isinstance(answer, list):  # an event stream: it ends with [DONE] and carries no error
            assert answer and answer[-1] == "[DONE]", answer
            assert not any(isinstance(event, dict) and "error" in event for event in answer), answer
        else:
            assert ("choices" in answer) if is_openai else ("generated_text" in answer), answer
        return
    if is_openai:
        error = answer["error"]
        assert error.keys() == {"message", "type", "param", "code"} and error["message"], answer
        assert error["type"] in OPENAI_ERROR_TYPES, answer
        assert status != 422, answer  # the OpenAI routes' invalid requests are 400
    else:
        assert answer.keys() == {"error", "error_type"} and answer["error"], answer
        assert answer["error_type"] in TGI_ERROR_TYPES, answer
        assert status != 400, answer  # /v1/generate's invalid requests are 422


def _assert_still_serving(client: httpx.Client, greedy_text: str) -> None:
    response = client.post("/v1/generate", json=GREEDY)
    assert response.status_code == 200, response.text
    assert response.json()["generated_text"] == greedy_text
    assert client.get("/health").status_code == 200


# ---- the fuzz ------------------------------------------------------------------------------------------------------
@FUZZ
@given(body=generate_bodies, params=generate_queries)
def test_hostile_generate_requests_are_served_or_refused_in_shape(client, greedy_text, body, params):
    _assert_answered_in_shape(*_send(client, "/v1/generate", body, params), is_openai=False)
    _assert_still_serving(client, greedy_text)


@FUZZ
@given(body=generate_bodies.map(lambda body: {**body, "stream": True}), params=generate_queries)
def test_hostile_generate_streams_are_served_or_refused_in_shape(client, greedy_text, body, params):
    _assert_answered_in_shape(*_send(client, "/v1/generate", body, params), is_openai=False)
    _assert_still_serving(client, greedy_text)


@FUZZ
@given(body=completion_bodies)
def test_hostile_completions_are_served_or_refused_in_shape(client, greedy_text, body):
    _assert_answered_in_shape(*_send(client, "/v1/completions", body), is_openai=True)
    _assert_still_serving(client, greedy_text)


@FUZZ
@given(body=chat_bodies)
def test_hostile_chat_completions_are_served_or_refused_in_shape(client, greedy_text, body):
    _assert_answered_in_shape(*_send(client, "/v1/chat/completions", body), is_openai=True)
    _assert_still_serving(client, greedy_text)


NOT_JSON = [
    b"",
    b"{",
    b"null",
    b"[]",
    b'"inputs"',
    b"\xff\xfe\x00{",  # not UTF-8
    b'{"inputs": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8 bytes: invalid UTF-8
    b'{"inputs": "x", "parameters": {"temperature": 1e400, "do_sample": true}}',  # json reads it as inf
    b'{"inputs": "x", "parameters": {"seed": ' + b"9" * 5000 + b"}}",  # past Python's int digit limit
    b'{"inputs": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",  # deeper than the JSON parser recurses
    b'{"prompt": "x", "messages": [], "inputs": {"inputs": {"inputs": [1, 2, {"a": NaN}]}}}',
]


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("raw", NOT_JSON, ids=range(len(NOT_JSON)))
def test_bodies_that_are_not_valid_requests_are_4xx_in_shape(client, greedy_text, path, raw):
    _assert_answered_in_shape(*_send(client, path, raw), is_openai=path != "/v1/generate")
    _assert_still_serving(client, greedy_text)
