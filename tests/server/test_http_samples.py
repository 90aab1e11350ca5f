"""`n` samples of one prompt: one HTTP request, n engine requests in one group; choices, usage, streams, failures."""

from __future__ import annotations

import httpx
import openai
from test_http_fake_engine import BASE_MODEL_ID, FakeEngine, run_with_client, run_with_server

MESSAGES = [{"role": "user", "content": "Hi"}]


def test_n_samples_are_one_group_with_consecutive_seeds_and_indexed_choices():
    async def check(url: str, engine: FakeEngine):
        api = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        completion = await api.completions.create(model=BASE_MODEL_ID, prompt="HI", max_tokens=2, n=3, seed=10)
        assert [choice.index for choice in completion.choices] == [0, 1, 2]
        # seeds 10, 11, 12 start the fake at 100 + 1000 * (1 + seed % 5)
        assert [choice.text for choice in completion.choices] == [" w1000 w1001", " w2000 w2001", " w3000 w3001"]
        requests = [stream.request for stream in engine.streams]
        assert [r.request_id for r in requests] == [f"{completion.id}-{i}" for i in range(3)]
        assert {r.group for r in requests} == {completion.id}
        assert [r.sampling.seed for r in requests] == [10, 11, 12]
        assert completion.usage.prompt_tokens == 3  # the prompt once
        assert completion.usage.completion_tokens == 6 and completion.usage.total_tokens == 9

        chat = await api.chat.completions.create(
            model=BASE_MODEL_ID, messages=MESSAGES, max_tokens=1, n=2, temperature=0
        )
        assert [(c.index, c.message.content) for c in chat.choices] == [(0, " w0"), (1, " w0")]  # greedy: all equal
        assert chat.usage.completion_tokens == 2

    run_with_server(check)


def test_one_sample_is_submitted_as_before_without_a_group():
    async def check(client: httpx.AsyncClient, engine: FakeEngine):
        body = (await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1, "seed": 5})).json()
        request = engine.streams[-1].request
        assert (request.request_id, request.group, request.sampling.seed) == (body["id"], None, 5)

    run_with_client(check)


def test_streamed_samples_interleave_each_with_its_index_and_finish_then_usage():
    async def check(url: str, engine: FakeEngine):
        api = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        stream = await api.chat.completions.create(
            model=BASE_MODEL_ID,
            messages=MESSAGES,
            max_tokens=2,
            n=3,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        choices = [(c.choices[0].index, c.choices[0].delta.content, c.choices[0].finish_reason) for c in chunks[:-1]]
        assert choices[:3] == [(0, "", None), (1, "", None), (2, "", None)]  # each sample's role first
        for index in range(3):
            mine = [(content, finish) for i, content, finish in choices if i == index]
            assert mine == [("", None), (" w0", None), (" w1", None), (None, "length")]
        first_finish = next(i for i, (_, _, finish) in enumerate(choices) if finish)
        assert any(content == " w1" for _, content, _ in choices[first_finish:])  # interleaved, not one by one
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6

        stream = await api.completions.create(model=BASE_MODEL_ID, prompt="HI", max_tokens=1, n=2, stream=True)
        chunks = [chunk async for chunk in stream]
        assert sorted((c.choices[0].index, c.choices[0].finish_reason) for c in chunks) == [
            (0, "length"),
            (1, "length"),
        ]

    run_with_server(check)


def test_a_failed_sample_fails_the_response_and_cancels_the_others():
    async def check(client: httpx.AsyncClient, engine: FakeEngine):
        original_submit = engine.submit

        def submit(request, loop):
            if request.request_id.endswith("-1"):
                engine.failing_request_ids.add(request.request_id)
            return original_submit(request, loop)

        engine.submit = submit
        engine.is_paused = True
        response = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 50, "n": 3})
        assert response.status_code == 500
        assert response.json()["error"]["message"] == "the fake step failed"
        assert [stream.is_cancelled for stream in engine.streams] == [True, False, True]

    run_with_client(check)


def test_a_refused_sample_cancels_the_ones_submitted_before_it():
    async def check(client: httpx.AsyncClient, engine: FakeEngine):
        original_submit = engine.submit

        def submit(request, loop):
            engine.queue_is_full = request.request_id.endswith("-2")
            return original_submit(request, loop)

        engine.submit = submit
        engine.is_paused = True
        response = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 5, "n": 3})
        assert response.status_code == 429
        assert [stream.is_cancelled for stream in engine.streams] == [True, True]

    run_with_client(check)
