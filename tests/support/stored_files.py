"""The files of a durable store as a test sees them, on either backend: paths relative to the store's root
("tasks/t/v1/adapter_model.safetensors"), so one test can read, damage or remove them in a directory or a bucket."""

from __future__ import annotations

import shutil
from pathlib import Path


class LocalFiles:
    def __init__(self, root: Path):
        self.root = root

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def write(self, path: str, data: bytes) -> None:
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        (self.root / path).write_bytes(data)

    def remove(self, path: str) -> None:
        """A file, or a directory with all it holds."""
        target = self.root / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    def names(self, task: str) -> set[str]:
        task_dir = self.root / "tasks" / task
        return {p.name for p in task_dir.iterdir()} if task_dir.exists() else set()


class BucketFiles:
    def __init__(self, client, bucket: str, prefix: str):
        self.client, self.bucket, self.prefix = client, bucket, prefix

    def read(self, path: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{path}")["Body"].read()

    def write(self, path: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{path}", Body=data)

    def remove(self, path: str) -> None:
        """An object, or every object under `path/`."""
        keys = [f"{self.prefix}/{path}", *self.keys(f"{path}/")]
        for key in keys:
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def keys(self, below: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/{below}"
        )
        return [entry["Key"] for page in pages for entry in page.get("Contents", [])]

    def names(self, task: str) -> set[str]:
        return {key.split("/")[3] for key in self.keys(f"tasks/{task}/")}
