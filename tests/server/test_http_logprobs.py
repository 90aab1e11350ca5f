"""Logprobs and echo on the OpenAI routes, read back through the official client's typed objects from a real
server on loopback (the fake engine's logprobs: see test_http_fake_engine.py)."""

from __future__ import annotations

import httpx
import openai
import pytest
from test_http_fake_engine import BASE_MODEL_ID, FakeEngine, fake_token_text, run_with_client, run_with_server

from server.engine.request import TokenLogprob
from server.http.logprobs import LOGPROB_FLOOR, CompletionLogprobsWriter, chat_logprobs

MESSAGES = [{"role": "user", "content": "Hi"}]


def _client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def _render(token_ids):
    return [fake_token_text(token_id) for token_id in token_ids]


def test_completion_logprobs_list_each_token_with_its_best_alternatives_and_the_chosen_one():
    async def check(url: str, engine: FakeEngine):
        completion = await _client(url).completions.create(
            model=BASE_MODEL_ID, prompt="HI", max_tokens=2, temperature=0, logprobs=2
        )
        logprobs = completion.choices[0].logprobs
        assert logprobs.tokens == [" w0", " w1"]
        assert logprobs.token_logprobs == [-0.25, -0.5]
        assert logprobs.top_logprobs == [{" w0": -0.25, " w1": -1.25}, {" w1": -0.5, " w2": -1.5}]
        assert logprobs.text_offset == [0, 3]
        assert engine.streams[-1].request.sampling.logprobs == 2
        assert engine.streams[-1].request.sampling.prompt_logprobs is None

    run_with_server(check)


def test_lm_eval_loglikelihood_request_echoes_token_prompts_with_their_logprobs():
    """What lm-eval's local-completions sends to score a continuation, and what it reads back."""

    async def check(url: str, engine: FakeEngine):
        async with httpx.AsyncClient(base_url=url) as client:
            body = {"prompt": [[1, 72, 73]], "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": True, "seed": 3}
            response = await client.post("/v1/completions", json=body)
        choice = response.json()["choices"][0]
        assert choice["text"] == "<s>HI w0"
        assert choice["logprobs"] == {
            "tokens": ["<s>", "H", "I", " w0"],
            "token_logprobs": [None, -1.5, -1.5, -0.25],
            "top_logprobs": [None, {"H": -1.5}, {"I": -1.5}, {" w0": -0.25}],
            "text_offset": [0, 3, 4, 5],
        }
        ctxlen = 2  # lm-eval's slice: the continuation's tokens, the generated one left out
        continuation = choice["logprobs"]["token_logprobs"][ctxlen:-1]
        tops = choice["logprobs"]["top_logprobs"][ctxlen:-1]
        assert sum(continuation) == -1.5 and all(lp == max(top.values()) for lp, top in zip(continuation, tops))
        sampling = engine.streams[-1].request.sampling
        assert (sampling.logprobs, sampling.prompt_logprobs, sampling.max_new_tokens) == (1, 1, 1)

    run_with_server(check)


def test_streamed_completion_logprobs_cover_each_chunk_and_offsets_run_on():
    async def check(url: str, engine: FakeEngine):
        stream = await _client(url).completions.create(
            model=BASE_MODEL_ID, prompt="HI", max_tokens=2, temperature=0, logprobs=0, echo=True, stream=True
        )
        chunks = [chunk async for chunk in stream]
        assert [c.choices[0].text for c in chunks] == ["HI", " w0", " w1"]
        assert [c.choices[0].logprobs.tokens for c in chunks] == [["<s>", "H", "I"], [" w0"], [" w1"]]
        assert [c.choices[0].logprobs.text_offset for c in chunks] == [[0, 3, 4], [5], [8]]
        assert chunks[0].choices[0].logprobs.token_logprobs == [None, -1.5, -1.5]
        assert chunks[2].choices[0].logprobs.top_logprobs == [{" w1": -0.5}]
        assert [c.choices[0].finish_reason for c in chunks] == [None, None, "length"]

    run_with_server(check)


def test_echo_without_logprobs_echoes_token_prompts_as_text():
    async def check(client: httpx.AsyncClient, engine: FakeEngine):
        body = {"prompt": [72, 73], "max_tokens": 1, "echo": True, "temperature": 0}
        choice = (await client.post("/v1/completions", json=body)).json()["choices"][0]
        assert choice["text"] == "HI w0" and choice["logprobs"] is None

    run_with_client(check)


def test_chat_logprobs_carry_bytes_and_top_logprobs_whole_and_streamed():
    async def check(url: str, engine: FakeEngine):
        api = _client(url)
        chat = await api.chat.completions.create(
            model=BASE_MODEL_ID, messages=MESSAGES, max_tokens=2, temperature=0, logprobs=True, top_logprobs=2
        )
        content = chat.choices[0].logprobs.content
        assert [(t.token, t.logprob, t.bytes) for t in content] == [
            (" w0", -0.25, list(b" w0")),
            (" w1", -0.5, list(b" w1")),
        ]
        assert [(t.token, t.logprob, t.bytes) for t in content[0].top_logprobs] == [
            (" w0", -0.25, list(b" w0")),
            (" w1", -1.25, list(b" w1")),
        ]
        assert chat.choices[0].logprobs.refusal is None
        assert engine.streams[-1].request.sampling.logprobs == 2

        stream = await api.chat.completions.create(
            model=BASE_MODEL_ID, messages=MESSAGES, max_tokens=2, temperature=0, logprobs=True, stream=True
        )
        chunks = [chunk async for chunk in stream]
        with_logprobs = [c.choices[0].logprobs.content for c in chunks if c.choices[0].logprobs]
        assert [[(t.token, t.logprob, t.top_logprobs) for t in content] for content in with_logprobs] == [
            [(" w0", -0.25, [])],
            [(" w1", -0.5, [])],
        ]

    run_with_server(check)


def test_without_logprobs_none_are_asked_or_sent():
    async def check(client: httpx.AsyncClient, engine: FakeEngine):
        chat = await client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 1})
        assert chat.json()["choices"][0]["logprobs"] is None
        assert engine.streams[-1].request.sampling.logprobs is None

    run_with_client(check)


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", {"prompt": "x", "logprobs": 6}, "logprobs"),
        ("/v1/chat/completions", {"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"messages": MESSAGES, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ],
)
def test_logprobs_out_of_range_are_400_naming_the_field(path, body, param):
    async def check(client: httpx.AsyncClient, engine: FakeEngine):
        response = await client.post(path, json=body)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param
        assert engine.streams == []

    run_with_client(check)


def test_text_offset_runs_on_across_writes_and_the_chosen_token_joins_the_alternatives():
    writer = CompletionLogprobsWriter(_render)
    first = writer.write([100, 101], [TokenLogprob(100, -0.1, ((102, -0.05),)), TokenLogprob(101, -0.2)])
    second = writer.write([72], [TokenLogprob(72, -0.3, ((72, -0.3),))])
    assert first.text_offset == [0, 3] and second.text_offset == [6]
    assert first.top_logprobs == [{" w2": -0.05, " w0": -0.1}, {" w1": -0.2}]
    assert second.top_logprobs == [{"H": -0.3}]


def test_impossible_tokens_read_as_the_floor_since_json_has_no_infinity():
    logprobs = chat_logprobs(_render, [TokenLogprob(100, float("-inf"), ((100, float("-inf")), (101, float("nan"))))])
    assert logprobs.content[0].logprob == LOGPROB_FLOOR
    assert [top.logprob for top in logprobs.content[0].top_logprobs] == [LOGPROB_FLOOR, LOGPROB_FLOOR]
