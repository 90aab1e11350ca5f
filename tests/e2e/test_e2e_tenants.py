"""Tenants against a real server: a tenant sees, uses and manages only its own tasks and the shared ones (another
tenant's task is exactly an unknown task on every route, in /v1/models and in /metrics); keys are scoped, expire and
are revoked for the next request while admitted requests finish; quotas refuse with the contract's codes before any
work; a tenant that owns tasks cannot be deleted; every admin request is in the audit log, no secret anywhere."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest

from server.cli import main
from tests.e2e.server_process import upload_adapter
from tests.e2e.tenant_client import bearer, create_key, create_tenant, greedy, streamed_tokens, upload_as

ADAPTERS = {"pt": ("PROMPT_TUNING", {"num_virtual_tokens": 5}), "prefix": ("PREFIX_TUNING", {"num_virtual_tokens": 6})}
PROMPT = "The capital of France is"
MAX_NEW_TOKENS = 6
WRITE = ("generate", "prompts:write")


@pytest.fixture(scope="module")
def world(client, server, adapters):
    """Tenants acme and globex with read+write keys, each owning one task; one shared task."""
    keys = {}
    for name in ("acme", "globex"):
        create_tenant(client, server, name)
        keys[name] = create_key(client, server, name, WRITE)["key"]
    assert upload_as(client, keys["acme"], "acme-secret", adapters["pt"]).status_code == 201
    assert upload_as(client, keys["globex"], "globex-task", adapters["prefix"]).status_code == 201
    assert upload_adapter(client, server, "shared-task", adapters["prefix"]).status_code == 201
    return keys


def test_a_tenant_uses_its_own_and_shared_tasks_with_pefts_tokens(client, world, references):
    assert streamed_tokens(client, world["acme"], "acme-secret", PROMPT, MAX_NEW_TOKENS) == references["pt"]
    assert streamed_tokens(client, world["acme"], "shared-task", PROMPT, MAX_NEW_TOKENS) == references["prefix"]
    assert streamed_tokens(client, None, "shared-task", PROMPT, MAX_NEW_TOKENS) == references["prefix"]


def test_another_tenants_task_is_exactly_an_unknown_task_on_every_route(client, world, adapters):
    globex = world["globex"]

    def inference(token, task):
        headers = bearer(token) if token else {}
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 2}}
        yield client.post("/v1/generate", params={"task": task}, headers=headers, json=body)
        yield client.post("/v1/generate", params={"task": task}, headers=headers, json=body | {"stream": True})
        yield client.post("/v1/completions", headers=headers, json={"model": task, "prompt": PROMPT, "max_tokens": 2})
        messages = [{"role": "user", "content": PROMPT}]
        yield client.post("/v1/chat/completions", headers=headers, json={"model": task, "messages": messages})

    for token in (globex, None):
        hidden = list(inference(token, "acme-secret"))
        unknown = list(inference(token, "no-such-task"))
        for seen, absent in zip(hidden, unknown, strict=True):
            assert seen.status_code == absent.status_code == 404
            assert seen.text.replace("acme-secret", "X") == absent.text.replace("no-such-task", "X")

    for method in ("GET", "DELETE"):
        seen = client.request(method, "/v1/admin/prompts/acme-secret", headers=bearer(globex))
        absent = client.request(method, "/v1/admin/prompts/no-such-task", headers=bearer(globex))
        assert seen.status_code == absent.status_code == 404
        assert seen.text.replace("acme-secret", "X") == absent.text.replace("no-such-task", "X")
    activate = client.post("/v1/admin/prompts/acme-secret/activate", headers=bearer(globex), json={"version": 1})
    assert activate.status_code == 404
    # the name is taken, which an upload must say (names are global), and nothing about it changes
    taken = upload_as(client, globex, "acme-secret", adapters["prefix"])
    assert taken.status_code == 409 and "taken" in taken.json()["error"]
    assert client.get("/v1/admin/prompts/acme-secret", headers=bearer(world["acme"])).json()["active_version"] == 1


def test_listings_show_only_what_the_caller_may_use(client, server, world):
    def model_ids(headers):
        response = client.get("/v1/models", headers=headers)
        assert response.status_code == 200
        return {card["id"]: card["owned_by"] for card in response.json()["data"][1:]}

    assert model_ids(bearer(world["acme"])) == {"acme-secret": "acme", "shared-task": "promptswap"}
    assert model_ids(bearer(world["globex"])) == {"globex-task": "globex", "shared-task": "promptswap"}
    assert model_ids({}) == {"shared-task": "promptswap"}
    assert set(model_ids(server.admin_headers)) == {"acme-secret", "globex-task", "shared-task"}
    listed = client.get("/v1/admin/prompts", headers=bearer(world["globex"])).json()["tasks"]
    assert {task["task"]: task["owner"] for task in listed} == {"globex-task": "globex", "shared-task": None}


def test_tenant_task_names_never_appear_in_metrics(client, world):
    for token, task in ((world["acme"], "acme-secret"), (world["globex"], "globex-task"), (None, "shared-task")):
        assert greedy(client, token, task, PROMPT, 2).status_code == 200
    exposition = client.get("/metrics").text
    assert "acme-secret" not in exposition and "globex-task" not in exposition
    assert 'task="shared-task"' in exposition and 'task="private"' in exposition
    assert 'promptswap_tenant_requests_total{status="200",tenant="acme"}' in exposition
    assert 'promptswap_tenant_tokens_total{kind="generated",tenant="globex"}' in exposition
    assert 'promptswap_tenant_queue_time_seconds_count{tenant="anonymous"}' in exposition


def test_a_tenant_cannot_change_shared_tasks_or_use_operator_routes(client, world, adapters):
    acme = world["acme"]
    assert client.delete("/v1/admin/prompts/shared-task", headers=bearer(acme)).status_code == 409
    assert upload_as(client, acme, "shared-task", adapters["pt"]).status_code == 409
    assert client.get("/v1/admin/tenants", headers=bearer(acme)).status_code == 403
    assert client.post("/v1/admin/tenants/acme/keys", headers=bearer(acme), json={}).status_code == 403
    assert client.get("/v1/admin/tenants").status_code == 401


def test_key_scopes(client, server, world):
    read_only = create_key(client, server, "acme", ("generate",))["key"]
    write_only = create_key(client, server, "acme", ("prompts:write",))["key"]
    assert greedy(client, read_only, "acme-secret", PROMPT, 2).status_code == 200
    assert client.get("/v1/admin/prompts", headers=bearer(read_only)).status_code == 403
    forbidden = greedy(client, write_only, "acme-secret", PROMPT, 2)
    assert forbidden.status_code == 403 and forbidden.json()["error_type"] == "forbidden"
    assert client.get("/v1/admin/prompts", headers=bearer(write_only)).status_code == 200


def test_key_secrets_are_shown_once_and_stored_only_hashed(client, server, world):
    created = create_key(client, server, "globex", ("generate",))
    listed = client.get("/v1/admin/tenants/globex/keys", headers=server.admin_headers).json()["keys"]
    assert created["id"] in {key["id"] for key in listed}
    assert all("key" not in key for key in listed)
    assert created["key"].startswith("ps-") and len(created["key"]) >= 3 + 32  # >= 192 bits in url-safe base64
    store_dir = server.log_path.parent / "store"
    for path in store_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (created["key"], world["acme"], world["globex"]):
                assert secret.encode() not in data and secret[3:].encode() not in data, path


def test_expired_and_revoked_keys_are_refused_from_the_next_request(client, server, world):
    expiring = create_key(client, server, "acme", ("generate",), expires_at=time.time() + 1.5)["key"]
    assert greedy(client, expiring, "acme-secret", PROMPT, 2).status_code == 200
    time.sleep(1.6)
    refused = greedy(client, expiring, "acme-secret", PROMPT, 2)
    assert refused.status_code == 401 and refused.json()["error_type"] == "unauthorized"

    key = create_key(client, server, "acme", ("generate",))
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 48}, "stream": True}
    with client.stream(
        "POST", "/v1/generate", params={"task": "acme-secret"}, headers=bearer(key["key"]), json=body
    ) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        next(line for line in lines if line.startswith("data:"))  # admitted and generating
        revoked = client.delete(f"/v1/admin/tenants/acme/keys/{key['id']}", headers=server.admin_headers)
        assert revoked.status_code == 204
        assert greedy(client, key["key"], "acme-secret", PROMPT, 2).status_code == 401  # the very next request
        rest = [line for line in lines if line.startswith("data:")]
    assert rest[-1] == "data: [DONE]" and '"finish_reason"' in rest[-2]  # the admitted request finished


def test_concurrency_quota_is_429_before_any_work(client, server, adapters):
    create_tenant(client, server, "single", max_concurrent=1)
    key = create_key(client, server, "single", ("generate",))["key"]
    started, release = threading.Event(), threading.Event()

    def hold():
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 64}, "stream": True}
        with client.stream("POST", "/v1/generate", headers=bearer(key), json=body) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    started.set()
                    release.wait(60)
                    return  # leaving the block closes the stream: the request is cancelled

    holder = threading.Thread(target=hold)
    holder.start()
    assert started.wait(60)
    try:
        limited = greedy(client, key, None, PROMPT, 2)
        assert limited.status_code == 429, limited.text
        assert limited.json()["error_type"] == "rate_limited" and "max_concurrent" in limited.json()["error"]
        assert int(limited.headers["Retry-After"]) >= 1
        invalid = client.post("/v1/generate", headers=bearer(key), json={"inputs": 17})  # not even validated
        assert invalid.status_code == 429
        api = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            api.completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
    finally:
        release.set()
        holder.join(60)
    deadline = time.monotonic() + 30
    while greedy(client, key, None, PROMPT, 2).status_code == 429:  # the holder's cancellation frees the slot
        assert time.monotonic() < deadline
        time.sleep(0.1)
    exposition = client.get("/metrics").text
    assert 'promptswap_tenant_rate_limited_total{reason="concurrency",tenant="single"}' in exposition


def test_tokens_per_minute_quota_says_when_to_retry(client, server):
    create_tenant(client, server, "metered", tokens_per_minute=20)
    key = create_key(client, server, "metered", ("generate",))["key"]
    assert greedy(client, key, None, PROMPT, 16).status_code == 200  # admitted under the limit, takes it over
    limited = greedy(client, key, None, PROMPT, 2)
    assert limited.status_code == 429 and limited.json()["error_type"] == "rate_limited"
    assert "tokens_per_minute" in limited.json()["error"]
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    openai_limited = client.post(
        "/v1/completions", headers=bearer(key), json={"model": "x", "prompt": PROMPT, "max_tokens": 2}
    )
    assert openai_limited.status_code == 429 and openai_limited.json()["error"]["type"] == "rate_limit_error"
    assert 'reason="tokens",tenant="metered"' in client.get("/metrics").text


def test_storage_quotas_refuse_uploads_with_403_naming_them(client, server, adapters):
    create_tenant(client, server, "small", max_tasks=1)
    key = create_key(client, server, "small", WRITE)["key"]
    assert upload_as(client, key, "small-one", adapters["pt"]).status_code == 201
    assert upload_as(client, key, "small-one", adapters["pt"]).status_code == 200  # a new version: not a new task
    refused = upload_as(client, key, "small-two", adapters["pt"])
    assert refused.status_code == 403 and "max_tasks" in refused.json()["error"]

    size = sum(
        (adapters["prefix"] / name).stat().st_size for name in ("adapter_config.json", "adapter_model.safetensors")
    )
    create_tenant(client, server, "tight", max_prompt_bytes=size + 10)
    tight = create_key(client, server, "tight", WRITE)["key"]
    assert upload_as(client, tight, "tight-one", adapters["prefix"]).status_code == 201
    refused = upload_as(client, tight, "tight-one", adapters["prefix"])
    assert refused.status_code == 403 and "max_prompt_bytes" in refused.json()["error"]
    listed = client.get("/v1/admin/prompts", headers=bearer(tight)).json()["tasks"]
    assert [len(task["versions"]) for task in listed if task["task"] == "tight-one"] == [1]
    everything = client.get("/v1/admin/prompts", headers=server.admin_headers).json()["tasks"]
    assert "small-one" in {task["task"] for task in everything} and "small-two" not in {t["task"] for t in everything}


def test_a_tenant_that_owns_tasks_cannot_be_deleted(client, server, adapters):
    create_tenant(client, server, "leaving")
    key = create_key(client, server, "leaving", WRITE)["key"]
    assert upload_as(client, key, "leaving-task", adapters["pt"]).status_code == 201
    conflict = client.delete("/v1/admin/tenants/leaving", headers=server.admin_headers)
    assert conflict.status_code == 409 and "owns" in conflict.json()["error"]
    assert client.delete("/v1/admin/prompts/leaving-task", headers=bearer(key)).status_code == 204
    assert client.delete("/v1/admin/tenants/leaving", headers=server.admin_headers).status_code == 204
    assert greedy(client, key, None, PROMPT, 2).status_code == 401  # its keys went with it
    assert client.get("/v1/admin/tenants/leaving", headers=server.admin_headers).status_code == 404


def test_tenant_routes_validate_and_patch(client, server):
    for body in (
        {"name": "Bad Name"},
        {"name": "anonymous"},
        {"name": "w", "weight": 0},
        {"name": "q", "max_tasks": -1},
        {"name": "typo", "max_task": 3},
    ):
        assert client.post("/v1/admin/tenants", headers=server.admin_headers, json=body).status_code == 422, body
    create_tenant(client, server, "patched", weight=2, max_tasks=5)
    assert client.post("/v1/admin/tenants", headers=server.admin_headers, json={"name": "patched"}).status_code == 409
    patched = client.patch("/v1/admin/tenants/patched", headers=server.admin_headers, json={"max_tasks": None})
    assert patched.status_code == 200 and patched.json()["max_tasks"] is None and patched.json()["weight"] == 2
    bad_scope = client.post("/v1/admin/tenants/patched/keys", headers=server.admin_headers, json={"scopes": ["root"]})
    assert bad_scope.status_code == 422
    past = client.post("/v1/admin/tenants/patched/keys", headers=server.admin_headers, json={"expires_at": 1.0})
    assert past.status_code == 422


def test_every_admin_request_is_in_the_audit_log_without_secrets(client, server, world):
    assert client.get("/v1/admin/tenants", headers={"Authorization": "Bearer wrong"}).status_code == 401
    key = create_key(client, server, "acme", ("generate",))
    assert client.delete(f"/v1/admin/tenants/acme/keys/{key['id']}", headers=server.admin_headers).status_code == 204
    text = (server.log_path.parent / "store" / "audit.log").read_text()
    entries = [json.loads(line) for line in text.splitlines()]
    assert all(set(entry) == {"time", "actor", "action", "target", "result"} for entry in entries)
    revoke = next(entry for entry in entries if entry["target"].get("key_id") == key["id"])
    assert revoke | {"time": 0} == {
        "time": 0,
        "actor": "operator",
        "action": "key.revoke",
        "target": {"name": "acme", "key_id": key["id"]},
        "result": 204,
    }
    assert any(e["actor"] == "unauthenticated" and e["result"] == 401 for e in entries)
    assert any(e["actor"].startswith("key:") and e["action"] == "prompt.upload" and e["result"] == 201 for e in entries)
    for secret in (key["key"], world["acme"], world["globex"]):
        assert secret not in text


def test_an_unknown_ps_key_is_401_even_without_require_api_key(client):
    response = client.get("/v1/models", headers=bearer("ps-" + "A" * 43))
    assert response.status_code == 401
    assert client.get("/v1/models", headers=bearer("EMPTY")).status_code == 200  # the openai client's placeholder


def test_the_tenant_and_key_commands(client, server, adapters, world, capsys):
    url, admin = ["--url", server.url], ["--admin-token", server.admin_token]
    assert main(["tenant", "create", "cli-co", "--weight", "3", "--max-tasks", "2", *url, *admin]) == 0
    assert "created tenant cli-co: weight=3 max-tasks=2" in capsys.readouterr().out
    assert main(["key", "create", "cli-co", "--scope", "generate", "--scope", "prompts:write", *url, *admin]) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("ps-")
    assert main(["upload", "cli-task", str(adapters["pt"]), *url, "--api-key", secret]) == 0
    assert "created task cli-task: version 1" in capsys.readouterr().out
    assert main(["list", *url, "--api-key", secret]) == 0
    listed = capsys.readouterr().out
    assert "cli-task" in listed and "shared-task" in listed and "acme-secret" not in listed
    assert main(["tenant", "list", *url, *admin]) == 0
    assert any(line.split()[:2] == ["cli-co", "1"] for line in capsys.readouterr().out.splitlines())
    assert main(["tenant", "delete", "cli-co", *url, *admin]) == 1
    assert "HTTP 409" in capsys.readouterr().err
    assert main(["key", "list", "cli-co", *url, *admin]) == 0
    key_id = capsys.readouterr().out.splitlines()[1].split()[0]
    assert main(["key", "revoke", "cli-co", key_id, *url, *admin]) == 0
    capsys.readouterr()
    assert main(["list", *url, "--api-key", secret]) == 1
    assert "HTTP 401" in capsys.readouterr().err
