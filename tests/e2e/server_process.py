"""A real `promptswap serve` subprocess on a free loopback port, and small helpers to talk to it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "e2e-admin-token"
READY_TIMEOUT_S = 240  # a cold start imports torch and transformers on a busy 2-core machine


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str
    log_path: Path
    admin_token: str | None

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def log(self, num_chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-num_chars:]

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, then the exit status (SIGKILL if it does not exit in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    model_dir: Path, work_dir: Path, env: dict[str, str] | None = None, admin_token: str | None = ADMIN_TOKEN
) -> ServerProcess:
    """Start `python -m server serve` and wait until /ready answers 200 (its store: work_dir/store, unless `env`
    names PROMPTSWAP_STORE)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "server",
        "serve",
        "--model",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if "PROMPTSWAP_STORE" not in (env or {}):  # the flag would win over the variable
        command += ["--store", str(work_dir / "store")]
    if admin_token:
        command += ["--admin-token", admin_token]
    log_path = work_dir / "server.log"
    process = subprocess.Popen(
        command, cwd=ROOT, env=_server_env(env or {}), stdout=log_path.open("wb"), stderr=subprocess.STDOUT
    )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path, admin_token)
    _wait_ready(server)
    return server


def _server_env(overrides: dict[str, str]) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PROMPTSWAP_") or name == "PROMPTSWAP_CACHE_DIR"
    }
    defaults = {
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PROMPTSWAP_KV_BLOCKS": "256",
        "PROMPTSWAP_MAX_MODEL_LEN": "512",
    }
    return env | defaults | overrides


def _wait_ready(server: ServerProcess) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"server not ready after {READY_TIMEOUT_S} s:\n{server.log()}")


def sse_payloads(lines) -> list:
    """The `data:` payloads of an event stream, JSON-decoded except the final "[DONE]"."""
    payloads = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    return [payload if payload == "[DONE]" else json.loads(payload) for payload in payloads]


def metric_value(exposition: str, series: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {series}")


def wait_until(condition, timeout_s: float = 30, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached in {timeout_s} s")
        time.sleep(0.05)


def upload_adapter(client: httpx.Client, server: ServerProcess, task: str, adapter_dir: Path) -> httpx.Response:
    files = {
        "adapter_config": ("adapter_config.json", (adapter_dir / "adapter_config.json").read_bytes()),
        "adapter_model": ("adapter_model.safetensors", (adapter_dir / "adapter_model.safetensors").read_bytes()),
    }
    return client.put(f"/v1/admin/prompts/{task}", headers=server.admin_headers, files=files)
