"""What the prompt-store e2e tests (`test_store_*.py`) share: uploads of raw bytes, generation that reports the
task version that served it, and a digest of everything under a store directory."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.e2e.server_process import ServerProcess, sse_payloads

CONFIG_FILE, MODEL_FILE = "adapter_config.json", "adapter_model.safetensors"


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]
    task_version: int | None


def adapter_bytes(adapter_dir: Path) -> tuple[bytes, bytes]:
    return (adapter_dir / CONFIG_FILE).read_bytes(), (adapter_dir / MODEL_FILE).read_bytes()


def put_prompt(
    client: httpx.Client, server: ServerProcess, task: str, config_bytes: bytes, model_bytes: bytes
) -> httpx.Response:
    files = {"adapter_config": (CONFIG_FILE, config_bytes), "adapter_model": (MODEL_FILE, model_bytes)}
    return client.put(f"/v1/admin/prompts/{task}", headers=server.admin_headers, files=files)


def generate(client: httpx.Client, task: str, prompt: str, max_new_tokens: int) -> Generation:
    """Greedy tokens of a streamed /v1/generate, and the version that served them; raises on any failure."""
    body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens}, "stream": True}
    with client.stream("POST", "/v1/generate", params={"task": task}, json=body) as response:
        if response.status_code != 200:
            raise AssertionError(f"HTTP {response.status_code}: {response.read()!r}")
        events = sse_payloads(response.iter_lines())
    if not events or events[-1] != "[DONE]":
        raise AssertionError(f"stream ended without [DONE]: {events[-2:]}")
    return Generation([event["token"]["id"] for event in events[:-1]], events[-2]["details"]["task_version"])


def list_tasks(client: httpx.Client, server: ServerProcess) -> dict[str, dict]:
    """task -> its entry in GET /v1/admin/prompts."""
    response = client.get("/v1/admin/prompts", headers=server.admin_headers)
    response.raise_for_status()
    return {task["task"]: task for task in response.json()["tasks"]}


AUDIT_LOG = "audit.log"  # the default audit log sits in the store and records refused requests too, by design


def store_digest(store_dir: Path) -> str:
    """SHA-256 over every path (directories included) and file content under the store, but the audit log."""
    digest = hashlib.sha256()
    for folder, dir_names, file_names in sorted(os.walk(store_dir)):
        dir_names.sort()
        digest.update(f"d {os.path.relpath(folder, store_dir)}\n".encode())
        for name in sorted(file_names):
            if os.path.relpath(folder, store_dir) == "." and name == AUDIT_LOG:
                continue
            digest.update(f"f {name}\n".encode())
            digest.update(hashlib.sha256(Path(folder, name).read_bytes()).digest())
    return digest.hexdigest()
