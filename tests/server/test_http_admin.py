"""Admin routes against the fake registry: auth, multipart upload, catalogue, activate, delete, error shapes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from test_http_fake_engine import ADMIN_TOKEN, FakeEngine, run_with_client

from prompt_store.spec import TaskKind
from server.cli import _multipart

PROMPTS = "/v1/admin/prompts"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CONFIG = b'{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}'


def _files(config: bytes = CONFIG, model: bytes = b"weights") -> dict:
    return {"adapter_config": ("adapter_config.json", config), "adapter_model": ("adapter_model.safetensors", model)}


def test_admin_api_is_403_without_a_configured_token():
    async def check(client, engine):
        for method, path in [
            ("GET", PROMPTS),
            ("PUT", f"{PROMPTS}/t"),
            ("DELETE", f"{PROMPTS}/t"),
            ("GET", f"{PROMPTS}/t"),
        ]:
            response = await client.request(method, path, headers=AUTH)
            assert response.status_code == 403
            assert response.json()["error_type"] == "forbidden"
            assert "admin API disabled" in response.json()["error"]

    run_with_client(check, admin_token=None)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": ADMIN_TOKEN},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
    ],
)
def test_missing_or_wrong_token_is_401(headers):
    async def check(client, engine: FakeEngine):
        response = await client.put(f"{PROMPTS}/t", headers=headers, files=_files())
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {"error": "missing or invalid admin token or API key", "error_type": "unauthorized"}
        assert engine.registry.tasks == {}

    run_with_client(check)


def test_upload_creates_then_adds_versions_and_the_catalogue_follows():
    async def check(client, engine: FakeEngine):
        first = await client.put(f"{PROMPTS}/geo", headers=AUTH, files=_files())
        assert first.status_code == 201
        assert first.json() == {
            "task": "geo",
            "version": 1,
            "peft_type": "PROMPT_TUNING",
            "kind": "embedding",
            "num_virtual_tokens": 4,
            "bytes": len(CONFIG) + 7,
            "owner": None,
            "task_kind": "generate",
            "num_labels": None,
            "labels": None,
        }
        second = await client.put(
            f"{PROMPTS}/geo", headers=AUTH, files=_files(b'{"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 2}')
        )
        assert second.status_code == 200
        assert (second.json()["version"], second.json()["kind"]) == (2, "prefix_kv")

        listing = (await client.get(PROMPTS, headers=AUTH)).json()
        assert [t["task"] for t in listing["tasks"]] == ["geo"]
        task = (await client.get(f"{PROMPTS}/geo", headers=AUTH)).json()
        assert task["active_version"] == 2
        assert [(v["version"], v["is_active"]) for v in task["versions"]] == [(1, False), (2, True)]
        assert task["versions"][0].keys() >= {"peft_type", "kind", "num_virtual_tokens", "bytes", "created_at"}
        assert (task["task_kind"], task["versions"][0]["task_kind"]) == ("generate", "generate")

        rolled_back = await client.post(f"{PROMPTS}/geo/activate", headers=AUTH, json={"version": 1})
        assert rolled_back.status_code == 200 and rolled_back.json()["active_version"] == 1
        missing_version = await client.post(f"{PROMPTS}/geo/activate", headers=AUTH, json={"version": 9})
        assert missing_version.status_code == 404 and missing_version.json()["error_type"] == "not_found"

        deleted = await client.delete(f"{PROMPTS}/geo", headers=AUTH)
        assert deleted.status_code == 204 and deleted.content == b""
        assert (await client.get(f"{PROMPTS}/geo", headers=AUTH)).status_code == 404
        assert (await client.delete(f"{PROMPTS}/geo", headers=AUTH)).status_code == 404

    run_with_client(check)


def _classifying(engine: FakeEngine) -> list[bytes]:
    """The fake registry's uploads answer as a classifier with the config's labels; returns the configs it got."""
    received, upload = [], engine.registry.upload

    def classify(task, config_bytes, model_bytes, caller=None):
        received.append(config_bytes)
        labels = tuple(json.loads(config_bytes).get("labels", ["LABEL_0", "LABEL_1"]))
        result = upload(task, config_bytes, model_bytes, caller)
        return replace(result, task_kind=TaskKind.CLASSIFY_SEQUENCE, num_labels=len(labels), labels=labels)

    engine.registry.upload = classify
    return received


@pytest.mark.parametrize("as_file", [False, True])
def test_upload_labels_part_is_merged_into_the_config(as_file):
    async def check(client, engine: FakeEngine):
        received = _classifying(engine)
        labels = b'["neg", "pos"]'
        if as_file:
            parts = {"files": _files() | {"labels": ("labels.json", labels)}}
        else:
            parts = {"files": _files(), "data": {"labels": labels}}
        response = await client.put(f"{PROMPTS}/sentiment", headers=AUTH, **parts)
        assert response.status_code == 201, response.text
        assert json.loads(received[0]) == json.loads(CONFIG) | {"labels": ["neg", "pos"]}
        body = response.json()
        assert (body["task_kind"], body["num_labels"], body["labels"]) == ("classify-sequence", 2, ["neg", "pos"])

    run_with_client(check)


def test_upload_without_labels_sends_the_config_unchanged():
    async def check(client, engine: FakeEngine):
        received = _classifying(engine)
        response = await client.put(f"{PROMPTS}/sentiment", headers=AUTH, files=_files())
        assert response.status_code == 201 and received == [CONFIG]
        assert response.json()["labels"] == ["LABEL_0", "LABEL_1"]

    run_with_client(check)


@pytest.mark.parametrize("labels", [b"neg,pos", b'["neg", 1]', b'{"neg": 0}'])
def test_a_bad_labels_part_is_422_naming_it(labels):
    async def check(client, engine: FakeEngine):
        response = await client.put(f"{PROMPTS}/sentiment", headers=AUTH, files=_files(), data={"labels": labels})
        assert response.status_code == 422
        assert response.json()["error_type"] == "validation" and "labels" in response.json()["error"]
        assert engine.registry.tasks == {}

    run_with_client(check)


def test_cli_multipart_body_is_what_the_route_reads():
    async def check(client, engine: FakeEngine):
        body, content_type = _multipart({"adapter_config": CONFIG, "adapter_model": b"\x00\xff\r\n--binary"})
        response = await client.put(f"{PROMPTS}/cli-task", headers=AUTH | {"Content-Type": content_type}, content=body)
        assert response.status_code == 201
        assert response.json()["bytes"] == len(CONFIG) + len(b"\x00\xff\r\n--binary")

    run_with_client(check)


@pytest.mark.parametrize(
    "files, status, error_type",
    [
        ({"adapter_config": ("adapter_config.json", CONFIG)}, 422, "validation"),
        (_files(config=b"not json"), 422, "validation"),
        (_files(config=b'{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 9999}'), 413, "too_large"),
    ],
)
def test_bad_uploads_are_refused_and_counted(files, status, error_type):
    async def check(client, engine: FakeEngine):
        response = await client.put(f"{PROMPTS}/geo", headers=AUTH, files=files)
        assert response.status_code == status
        assert response.json()["error_type"] == error_type
        assert engine.registry.tasks == {}
        metrics = (await client.get("/metrics")).text
        assert 'promptswap_prompt_uploads_total{result="rejected"} 1.0' in metrics

    run_with_client(check)


def test_body_over_the_limit_is_413():
    async def check(client, engine: FakeEngine):
        response = await client.put(f"{PROMPTS}/geo", headers=AUTH, files=_files(model=b"x" * 5000))
        assert response.status_code == 413
        assert response.json()["error_type"] == "too_large"

    run_with_client(check, max_body_bytes=4000)


def test_activate_body_is_validated():
    async def check(client, engine: FakeEngine):
        await client.put(f"{PROMPTS}/geo", headers=AUTH, files=_files())
        response = await client.post(f"{PROMPTS}/geo/activate", headers=AUTH, json={"version": "latest"})
        assert response.status_code == 422 and response.json()["error_type"] == "validation"

    run_with_client(check)
