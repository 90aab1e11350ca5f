"""`NAME@N` version pins and `/tokenize` / `/detokenize` against a real server: pinned versions give their own PEFT
output, the active one follows activation, pruned or never-existing versions are 404 in each route's error shape,
and token counts are the tokenizer's plus the referenced version's virtual tokens."""

from __future__ import annotations

from tests.e2e.store_client import adapter_bytes, generate, put_prompt

SERVER_ENV = {"PROMPTSWAP_VERSIONS_KEPT": "1"}  # old versions kept besides the active one: the third upload prunes
ADAPTERS = {  # "prompt" as test_e2e_generation trains it, so a session trains it once
    "prompt": ("PROMPT_TUNING", {}),
    "short": ("PROMPT_TUNING", {"num_virtual_tokens": 4, "seed": 1}),
}
NUM_VIRTUAL_TOKENS = {"prompt": 8, "short": 4}
PROMPT = "The capital of France is"
MAX_NEW_TOKENS = 5
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def _upload(client, server, task: str, adapter, expected_version: int) -> None:
    response = put_prompt(client, server, task, *adapter_bytes(adapter))
    assert response.status_code in (200, 201) and response.json()["version"] == expected_version, response.text


def _activate(client, server, task: str, version: int) -> None:
    response = client.post(
        f"/v1/admin/prompts/{task}/activate", headers=server.admin_headers, json={"version": version}
    )
    assert response.status_code == 200, response.text


def test_pins_serve_their_version_and_the_name_follows_the_active_one(server, client, adapters, references):
    _upload(client, server, "pins", adapters["prompt"], 1)
    _upload(client, server, "pins", adapters["short"], 2)
    for task, version, name in [("pins@1", 1, "prompt"), ("pins@2", 2, "short"), ("pins", 2, "short")]:
        served = generate(client, task, PROMPT, MAX_NEW_TOKENS)
        assert (served.task_version, served.token_ids) == (version, references[name]), task
    body = {"model": "pins@1", "prompt": PROMPT, "max_tokens": MAX_NEW_TOKENS, "temperature": 0}
    completion = client.post("/v1/completions", json=body)
    assert completion.status_code == 200 and completion.json()["model"] == "pins@1", completion.text
    _activate(client, server, "pins", 1)
    served = generate(client, "pins", PROMPT, MAX_NEW_TOKENS)
    assert (served.task_version, served.token_ids) == (1, references["prompt"])
    _upload(client, server, "pins", adapters["prompt"], 3)  # prunes version 1: 2 is the one old version kept
    assert generate(client, "pins@2", PROMPT, MAX_NEW_TOKENS).token_ids == references["short"]


def test_versions_not_kept_are_404_and_malformed_ones_400_or_422(server, client, adapters):
    _upload(client, server, "gone", adapters["prompt"], 1)
    _upload(client, server, "gone", adapters["short"], 2)
    _upload(client, server, "gone", adapters["prompt"], 3)  # prunes version 1
    tgi_body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 2}}
    for task in ("gone@1", "gone@9"):
        tgi = client.post("/v1/generate", params={"task": task}, json=tgi_body)
        assert tgi.status_code == 404 and tgi.json()["error_type"] == "not_found", tgi.text
        assert "kept versions: [2, 3]" in tgi.json()["error"]
        openai = client.post("/v1/completions", json={"model": task, "prompt": PROMPT, "max_tokens": 2})
        assert openai.status_code == 404, openai.text
        assert {k: openai.json()["error"][k] for k in ("type", "param", "code")} == {
            "type": "not_found_error",
            "param": "model",
            "code": "model_not_found",
        }
    assert client.post("/v1/generate", params={"task": "gone@x"}, json=tgi_body).status_code == 422
    malformed = client.post("/v1/completions", json={"model": "gone@x", "prompt": PROMPT})
    assert malformed.status_code == 400 and malformed.json()["error"]["param"] == "model"


def test_tokenize_counts_the_tokenizers_tokens_plus_the_versions_virtual_tokens(server, client, adapters, tokenizer):
    _upload(client, server, "tok", adapters["prompt"], 1)
    _upload(client, server, "tok", adapters["short"], 2)
    input_ids = tokenizer(PROMPT).input_ids
    for model, num_virtual in [(None, 0), ("tok", 4), ("tok@1", 8), ("tok@2", 4)]:
        body = {"prompt": PROMPT} | ({"model": model} if model else {})
        response = client.post("/tokenize", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["tokens"] == input_ids
        assert (response.json()["count"], response.json()["max_model_len"]) == (len(input_ids) + num_virtual, 512)


def test_tokenize_messages_counts_what_chat_completions_reports(server, client, adapters):
    _upload(client, server, "chat", adapters["short"], 1)
    for model, num_virtual in [(None, 0), ("chat", 4)]:
        extra = {"model": model} if model else {}
        counted = client.post("/tokenize", json={"messages": MESSAGES} | extra).json()["count"]
        chat = client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 1} | extra)
        assert chat.status_code == 200, chat.text
        assert counted == chat.json()["usage"]["prompt_tokens"] + num_virtual, model
    bare = client.post("/tokenize", json={"messages": MESSAGES, "add_generation_prompt": False}).json()["count"]
    assert bare < counted


def test_detokenize_round_trips_and_refuses_what_is_no_token(server, client, tokenizer):
    text = "Paris, the capital of France — ça va? 😀"
    tokenized = client.post("/tokenize", json={"prompt": text, "return_token_strs": True}).json()
    assert tokenized["token_strs"] == tokenizer.convert_ids_to_tokens(tokenized["tokens"])
    assert client.post("/detokenize", json={"tokens": tokenized["tokens"]}).json() == {"prompt": text}
    for tokens in ([-1], [len(tokenizer) + 10**6]):
        refused = client.post("/detokenize", json={"tokens": tokens})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "tokens", refused.text
    unknown = client.post("/tokenize", json={"model": "nope", "prompt": text})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
