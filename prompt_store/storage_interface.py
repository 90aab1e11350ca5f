"""What the registry and the tenant directory need from a store: one interface, three implementations.

`PromptStorage` (a local directory, storage.py), `S3Storage` (S3-compatible object storage, s3_storage.py) and
`MemoryStorage` (nothing durable, memory_storage.py). Every implementation keeps the same invariant: a version is
served only once a committed manifest names it, each change to a task commits with one atomic step (a rename, or
a conditional write of the manifest object), and whatever an interrupted write left behind is a leftover that
`scan` ignores and `discard_leftovers` removes.
"""

from __future__ import annotations

from typing import Protocol

from prompt_store.manifest import TaskManifest, VersionRecord
from prompt_store.storage import ScanResult, StoreChanges, StoredTask


class StorageBackend(Protocol):
    is_shared: bool  # other processes may change it (S3): the server polls `changes`

    def scan(self) -> ScanResult:
        """Every committed task from its manifest (no tensor is read); damaged entries are reported, not raised."""
        ...

    def discard_leftovers(self, result: ScanResult) -> None:
        """Remove the uncommitted entries `scan` found."""
        ...

    def reload_task(self, task: str) -> StoredTask:
        """The task as the store holds it now, read again (its manifest and, on S3, its ETag): after a lost
        conditional write, or a change `changes` reported. Single-writer stores return what they hold."""
        ...

    def changes(self) -> StoreChanges:
        """Tasks and documents other processes changed since this one last read or wrote them (cheap: one
        listing on S3, nothing read); single-writer stores report none."""
        ...

    def read_version(self, task: str, record: VersionRecord) -> tuple[bytes, bytes]:
        """(adapter_config.json, adapter_model.safetensors), checked against the record's checksums."""
        ...

    def read_document(self, name: str) -> bytes | None:
        """A whole document beside the tasks (documents.py), or None if it was never written."""
        ...

    def write_document(self, name: str, data: bytes) -> None:
        """Replace the document as one unit; once this returns, a crash leaves `data` in place."""
        ...

    def append_audit(self, entry: bytes) -> None:
        """Keep one admin request's audit entry where every replica's go (a shared store); a store one process
        holds leaves the audit to that process's audit log file (server/http/audit.py)."""
        ...

    def create_task(self, manifest: TaskManifest, config_bytes: bytes, model_bytes: bytes) -> None:
        """A new task appears whole, with its first version (or replaces an entry `scan` skipped as damaged)."""
        ...

    def write_version(self, task: str, record: VersionRecord, config_bytes: bytes, model_bytes: bytes) -> None:
        """Store a complete version; it is served only after `commit` names it."""
        ...

    def commit(self, manifest: TaskManifest) -> None:
        """Replace the task's manifest in one step: the moment a change becomes durable."""
        ...

    def remove_versions(self, task: str, versions: list[int]) -> None:
        """Best effort: free versions a committed manifest no longer names (leftovers for `scan` otherwise)."""
        ...

    def delete_task(self, task: str, highest_version: int) -> None:
        """Remove the task, first recording `highest_version` so a re-created task continues the numbering."""
        ...

    def close(self) -> None:
        """Release what the store holds (a directory lock, connections); the object is unusable afterwards."""
        ...
