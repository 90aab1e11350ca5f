"""What the tenant e2e tests share: the operator's tenant and key calls, and uploads made with any bearer token."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.e2e.server_process import ServerProcess, sse_payloads


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create_tenant(client: httpx.Client, server: ServerProcess, name: str, **fields) -> dict:
    response = client.post("/v1/admin/tenants", headers=server.admin_headers, json={"name": name, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def create_key(client: httpx.Client, server: ServerProcess, tenant: str, scopes=("generate",), **fields) -> dict:
    body = {"scopes": list(scopes), **fields}
    response = client.post(f"/v1/admin/tenants/{tenant}/keys", headers=server.admin_headers, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def upload_as(client: httpx.Client, token: str, task: str, adapter_dir: Path) -> httpx.Response:
    files = {
        "adapter_config": ("adapter_config.json", (adapter_dir / "adapter_config.json").read_bytes()),
        "adapter_model": ("adapter_model.safetensors", (adapter_dir / "adapter_model.safetensors").read_bytes()),
    }
    return client.put(f"/v1/admin/prompts/{task}", headers=bearer(token), files=files)


def greedy(client: httpx.Client, token: str | None, task: str | None, prompt: str, max_new_tokens: int):
    """POST /v1/generate as `token` (None: anonymous); the response."""
    params = {"task": task} if task else {}
    headers = bearer(token) if token else {}
    body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens}}
    return client.post("/v1/generate", params=params, headers=headers, json=body)


def streamed_tokens(client: httpx.Client, token: str | None, task: str | None, prompt: str, max_new_tokens: int):
    """Greedy token ids of a streamed /v1/generate as `token`; raises on any failure."""
    params = {"task": task} if task else {}
    headers = bearer(token) if token else {}
    body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens}, "stream": True}
    with client.stream("POST", "/v1/generate", params=params, headers=headers, json=body) as response:
        if response.status_code != 200:
            raise AssertionError(f"HTTP {response.status_code}: {response.read()!r}")
        events = sse_payloads(response.iter_lines())
    assert events and events[-1] == "[DONE]", events[-2:]
    return [event["token"]["id"] for event in events[:-1]]
