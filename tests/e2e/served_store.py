"""The durable store a real server runs on in the store e2e tests, on either backend: the environment that points
`promptswap serve` at it, and its files as the test sees them (tests/support/stored_files.py). A module runs its
server on both by overriding the `store_backend` fixture (tests/e2e/conftest.py) with `params=BACKENDS`."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.store_client import store_digest
from tests.support.stored_files import BucketFiles, LocalFiles

S3_PREFIX = "prompts"
VERSION_DIR = re.compile(r"v(\d+)")


@dataclass(frozen=True)
class ServedStore:
    backend: str  # "local" | "s3"
    work_dir: Path  # the server's: its log, its audit log, and a local store (work_dir/store)
    env: dict[str, str]  # what `start_server` needs to put the server's store here
    files: LocalFiles | BucketFiles

    def digest(self) -> str:
        """SHA-256 over everything the store holds (paths and contents; the audit log left out)."""
        if isinstance(self.files, LocalFiles):
            return store_digest(self.files.root)
        digest = hashlib.sha256()
        for key in sorted(self.files.keys("")):
            if key.startswith(f"{S3_PREFIX}/audit/"):  # the audit log: every admin request adds an entry
                continue
            digest.update(f"{key}\n".encode())
            digest.update(hashlib.sha256(self.files.read(key.removeprefix(f"{S3_PREFIX}/"))).digest())
        return digest.hexdigest()

    def version_numbers(self, task: str) -> set[int]:
        """Every `v<N>` the store holds for `task`, committed or not: numbers the server must never reuse."""
        return {int(match[1]) for name in self.files.names(task) if (match := VERSION_DIR.fullmatch(name))}

    def stored_files(self, task: str, version: int) -> tuple[bytes, bytes]:
        """(adapter_config.json, adapter_model.safetensors) of one version, as stored."""
        folder = f"tasks/{task}/v{version}"
        return self.files.read(f"{folder}/adapter_config.json"), self.files.read(f"{folder}/adapter_model.safetensors")

    def assert_no_work_in_progress(self) -> None:
        """A local store clears staging/ and trash/ at start-up (a bucket has neither: each PUT is atomic)."""
        if isinstance(self.files, LocalFiles):
            root = self.files.root
            assert list((root / "staging").iterdir()) == [] and list((root / "trash").iterdir()) == []


def served_store(request: pytest.FixtureRequest, backend: str, work_dir: Path) -> ServedStore:
    """A fresh store for a server whose work directory is `work_dir`: work_dir/store, or a new bucket of the
    session's SeaweedFS (started only when a test asks for S3)."""
    if backend == "local":
        return ServedStore(backend, work_dir, {}, LocalFiles(work_dir / "store"))
    seaweedfs = request.getfixturevalue("seaweedfs")
    bucket = seaweedfs.new_bucket()
    env = {
        "PROMPTSWAP_STORE": f"s3://{bucket}/{S3_PREFIX}",
        "PROMPTSWAP_AUDIT_LOG": str(work_dir / "audit"),  # an S3 store's default is the user's cache directory
    }
    return ServedStore(backend, work_dir, env | seaweedfs.env, BucketFiles(seaweedfs.client(), bucket, S3_PREFIX))
