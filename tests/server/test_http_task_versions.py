"""`NAME@N` on the inference routes, with the fake engine: parsing, the version submitted, 404s and error shapes."""

from __future__ import annotations

import json

import pytest
from test_http_fake_engine import BASE_MODEL_ID, FakeEngine, run_with_client

from server.config import EngineConfig
from server.engine.errors import RequestValidationError
from server.http.task_reference import TaskReference, parse_task_reference


def _config(num_virtual_tokens: int) -> bytes:
    return json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": num_virtual_tokens}).encode()


def _two_versions(engine: FakeEngine) -> None:
    engine.registry.upload("summarize", _config(4), b"w")
    engine.registry.upload("summarize", _config(60), b"w")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, TaskReference(None)),
        ("", TaskReference(None)),
        (BASE_MODEL_ID, TaskReference(None)),
        ("summarize", TaskReference("summarize")),
        ("summarize@1", TaskReference("summarize", 1)),
        ("a.b-c_d@1234", TaskReference("a.b-c_d", 1234)),
    ],
)
def test_task_references_parse(value, expected):
    assert parse_task_reference(value, BASE_MODEL_ID, "model") == expected


MALFORMED = [
    "summarize@",
    "summarize@x",
    "summarize@0",
    "summarize@01",
    "summarize@-1",
    "summarize@+1",
    "summarize@1.0",
    "summarize@ 1",
    "summarize@1@2",
    "summarize@\u0661",  # an Arabic-Indic digit: str.isdecimal() would take it
    "@1",
    "summarize@" + "9" * 19,
    f"{BASE_MODEL_ID}@1",
]


@pytest.mark.parametrize("value", MALFORMED)
def test_malformed_task_references_are_validation_errors_naming_the_field(value):
    with pytest.raises(RequestValidationError) as error:
        parse_task_reference(value, BASE_MODEL_ID, "task")
    assert error.value.param == "task"


def test_generate_pins_the_version_and_reports_it():
    async def check(client, engine: FakeEngine):
        _two_versions(engine)
        for task, version in [("summarize@1", 1), ("summarize@2", 2), ("summarize", 2)]:
            body = {"inputs": "x", "parameters": {"max_new_tokens": 2}}
            response = await client.post("/v1/generate", params={"task": task}, json=body)
            assert response.status_code == 200, response.text
            assert response.json()["details"]["task_version"] == version
            assert (engine.streams[-1].request.task, engine.streams[-1].request.task_version) == (
                "summarize",
                None if task == "summarize" else version,
            )

    run_with_client(check)


def test_openai_routes_pin_the_version_and_echo_the_model():
    async def check(client, engine: FakeEngine):
        _two_versions(engine)
        completion = await client.post("/v1/completions", json={"model": "summarize@1", "prompt": "x", "max_tokens": 1})
        assert completion.status_code == 200 and completion.json()["model"] == "summarize@1"
        assert engine.streams[-1].request.task_version == 1
        messages = [{"role": "user", "content": "x"}]
        chat = await client.post("/v1/chat/completions", json={"model": "summarize@2", "messages": messages})
        assert chat.status_code == 200 and chat.json()["model"] == "summarize@2"
        assert (engine.streams[-1].request.task, engine.streams[-1].request.task_version) == ("summarize", 2)

    run_with_client(check)


def test_the_token_budget_counts_the_pinned_versions_virtual_tokens():
    async def check(client, engine: FakeEngine):
        _two_versions(engine)  # 4 virtual tokens, then 60
        room = engine.max_model_len() - len(engine.tokenize("x"))
        for model, num_virtual in [("summarize@1", 4), ("summarize", 60)]:
            body = {"model": model, "prompt": "x", "max_tokens": room - num_virtual}
            assert (await client.post("/v1/completions", json=body)).status_code == 200
            body["max_tokens"] += 1
            too_many = await client.post("/v1/completions", json=body)
            assert too_many.status_code == 400 and f"(+{num_virtual} virtual)" in too_many.json()["error"]["message"]

    run_with_client(check, engine=EngineConfig(max_model_len=128))


def test_a_version_not_kept_is_404_in_each_routes_shape():
    async def check(client, engine: FakeEngine):
        _two_versions(engine)
        body = {"inputs": "x", "parameters": {"max_new_tokens": 2}}
        tgi = await client.post("/v1/generate", params={"task": "summarize@3"}, json=body)
        assert tgi.status_code == 404 and tgi.json()["error_type"] == "not_found"
        assert "kept versions: [1, 2]" in tgi.json()["error"]
        openai = await client.post("/v1/completions", json={"model": "summarize@3", "prompt": "x"})
        assert openai.status_code == 404
        assert openai.json()["error"] | {"message": ""} == {
            "message": "",
            "type": "not_found_error",
            "param": "model",
            "code": "model_not_found",
        }
        unknown = await client.post("/v1/completions", json={"model": "nope@1", "prompt": "x"})
        assert unknown.status_code == 404 and "unknown task 'nope'" in unknown.json()["error"]["message"]
        assert engine.streams == []

    run_with_client(check)


def test_malformed_references_are_400_or_422_naming_the_field():
    async def check(client, engine: FakeEngine):
        _two_versions(engine)
        body = {"inputs": "x", "parameters": {"max_new_tokens": 2}}
        tgi = await client.post("/v1/generate", params={"task": "summarize@x"}, json=body)
        assert tgi.status_code == 422 and tgi.json()["error_type"] == "validation" and "task" in tgi.json()["error"]
        for model in ("summarize@x", f"{BASE_MODEL_ID}@1"):
            openai = await client.post("/v1/completions", json={"model": model, "prompt": "x"})
            assert openai.status_code == 400 and openai.json()["error"]["param"] == "model", openai.text
        assert engine.streams == []

    run_with_client(check)


def test_models_list_is_unchanged_by_versions():
    async def check(client, engine: FakeEngine):
        _two_versions(engine)
        ids = [card["id"] for card in (await client.get("/v1/models")).json()["data"]]
        assert ids == [BASE_MODEL_ID, "summarize"]

    run_with_client(check)
