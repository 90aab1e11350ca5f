"""`POST /tokenize` and `POST /detokenize` with the fake engine: fields, counts with virtual tokens, errors, auth."""

from __future__ import annotations

import json

from test_http_fake_engine import BASE_MODEL_ID, BOS_ID, FAKE_VOCAB_SIZE, FakeEngine, run_with_client


def _config(num_virtual_tokens: int) -> bytes:
    return json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": num_virtual_tokens}).encode()


def test_tokenize_a_prompt_for_the_base_model():
    async def check(client, engine: FakeEngine):
        for body in ({"prompt": "Hi"}, {"model": BASE_MODEL_ID, "prompt": "Hi"}):
            response = await client.post("/tokenize", json=body)
            assert response.status_code == 200, response.text
            tokens = engine.tokenize("Hi")
            assert response.json() == {
                "tokens": tokens,
                "count": len(tokens),
                "max_model_len": engine.max_model_len(),
                "token_strs": None,
            }

    run_with_client(check)


def test_tokenize_options_special_tokens_and_token_strs():
    async def check(client, engine: FakeEngine):
        body = {"prompt": "Hi", "add_special_tokens": False, "return_token_strs": True}
        response = (await client.post("/tokenize", json=body)).json()
        assert response["tokens"] == [ord("H"), ord("i")] and response["count"] == 2
        assert response["token_strs"] == engine.token_strings(response["tokens"])

    run_with_client(check)


def test_count_adds_the_virtual_tokens_of_the_referenced_version():
    async def check(client, engine: FakeEngine):
        engine.registry.upload("geo", _config(4), b"w")
        engine.registry.upload("geo", _config(9), b"w")
        own = len(engine.tokenize("Hi"))
        for model, num_virtual in [("geo", 9), ("geo@1", 4), ("geo@2", 9)]:
            response = (await client.post("/tokenize", json={"model": model, "prompt": "Hi"})).json()
            assert (response["count"], response["tokens"]) == (own + num_virtual, engine.tokenize("Hi")), model

    run_with_client(check)


def test_messages_go_through_the_chat_template_as_chat_completions():
    async def check(client, engine: FakeEngine):
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        tokens = (await client.post("/tokenize", json={"messages": messages})).json()["tokens"]
        chat = await client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1})
        assert tokens == list(engine.streams[-1].request.prompt)
        assert len(tokens) == chat.json()["usage"]["prompt_tokens"]
        body = {"messages": messages, "add_generation_prompt": False}
        bare = (await client.post("/tokenize", json=body)).json()["tokens"]
        assert bare == engine.tokenize("<system>Be brief.<user>Hi")

    run_with_client(check)


def test_tokenize_errors():
    async def check(client, engine: FakeEngine):
        engine.registry.upload("geo", _config(4), b"w")
        cases = [
            ({"model": "nope", "prompt": "x"}, 404, "model"),
            ({"model": "geo@2", "prompt": "x"}, 404, "model"),
            ({"model": "geo@x", "prompt": "x"}, 400, "model"),
            ({"prompt": "x", "messages": [{"role": "user", "content": "x"}]}, 400, None),
            ({}, 400, None),
            ({"prompt": ""}, 400, "prompt"),
            ({"prompt": "x" * 101}, 400, "prompt"),
            ({"messages": [{"role": "user", "content": "x"}], "continue_final_message": True}, 400, None),
            ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, 400, "tools"),
            ({"prompt": [1, 2]}, 400, "prompt"),
        ]
        for body, status, param in cases:
            response = await client.post("/tokenize", json=body)
            assert response.status_code == status, (body, response.text)
            error = response.json()["error"]
            assert error["param"] == param and error["type"] in ("invalid_request_error", "not_found_error"), body

    run_with_client(check, max_prompt_chars=100)


def test_detokenize_round_trips_and_checks_ids():
    async def check(client, engine: FakeEngine):
        engine.registry.upload("geo", _config(4), b"w")
        tokens = (await client.post("/tokenize", json={"prompt": "Hé 😀", "add_special_tokens": False})).json()
        response = await client.post("/detokenize", json={"model": "geo@1", "tokens": tokens["tokens"]})
        assert response.status_code == 200 and response.json() == {"prompt": "Hé 😀"}
        assert (await client.post("/detokenize", json={"tokens": [BOS_ID]})).json() == {"prompt": "<s>"}
        for body, status in [
            ({"tokens": [-1]}, 400),
            ({"tokens": [FAKE_VOCAB_SIZE]}, 400),
            ({"tokens": [65] * 101}, 400),
            ({"tokens": "A"}, 400),
            ({"model": "nope", "tokens": [65]}, 404),
        ]:
            response = await client.post("/detokenize", json=body)
            assert response.status_code == status, (body, response.text)
            assert response.json()["error"]["param"] == ("model" if status == 404 else "tokens"), body

    run_with_client(check, max_prompt_chars=100)


def test_tokenize_needs_a_key_when_keys_are_required():
    async def check(client, engine: FakeEngine):
        for path, body in [("/tokenize", {"prompt": "x"}), ("/detokenize", {"tokens": [65]})]:
            response = await client.post(path, json=body)
            assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"

    run_with_client(check, require_api_key=True)
