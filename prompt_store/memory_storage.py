"""The store a registry uses when it has no directory (tests, engine tests): same interface, nothing durable."""

from __future__ import annotations

from prompt_store.documents import check_document_name
from prompt_store.errors import StorageError
from prompt_store.manifest import TaskManifest, VersionRecord
from prompt_store.storage import ScanResult, StoreChanges, StoredTask


class MemoryStorage:
    """Keeps the uploaded bytes so a version evicted from the host cache can be parsed again."""

    is_shared = False  # one process's memory: nothing changes it elsewhere

    def __init__(self) -> None:
        self._files: dict[tuple[str, int], tuple[bytes, bytes]] = {}  # (task, version) -> (config, model)
        self._manifests: dict[str, TaskManifest] = {}
        self._marks: dict[str, int] = {}  # deleted task -> its highest version
        self._documents: dict[str, bytes] = {}  # name (documents.py) -> its content
        self.audit_entries: list[bytes] = []  # what a shared store would keep (tests read it)

    def scan(self) -> ScanResult:
        highest = self._marks | {task: manifest.latest_version for task, manifest in self._manifests.items()}
        return ScanResult(manifests=dict(self._manifests), highest_versions=highest)

    def reload_task(self, task: str) -> StoredTask:
        manifest = self._manifests.get(task)
        highest = max(self._marks.get(task, 0), manifest.latest_version if manifest is not None else 0)
        return StoredTask(manifest, highest)

    def changes(self) -> StoreChanges:
        return StoreChanges()

    def close(self) -> None:
        pass

    def discard_leftovers(self, result: ScanResult) -> None:
        pass

    def read_version(self, task: str, record: VersionRecord) -> tuple[bytes, bytes]:
        files = self._files.get((task, record.version))
        if files is None:
            raise StorageError(f"task {task!r} version {record.version} is not stored")
        return files

    def create_task(self, manifest: TaskManifest, config_bytes: bytes, model_bytes: bytes) -> None:
        self.write_version(manifest.task, manifest.active, config_bytes, model_bytes)
        self.commit(manifest)

    def write_version(self, task: str, record: VersionRecord, config_bytes: bytes, model_bytes: bytes) -> None:
        self._files[(task, record.version)] = (bytes(config_bytes), bytes(model_bytes))

    def commit(self, manifest: TaskManifest) -> None:
        self._manifests[manifest.task] = manifest

    def remove_versions(self, task: str, versions: list[int]) -> None:
        for version in versions:
            self._files.pop((task, version), None)

    def delete_task(self, task: str, highest_version: int) -> None:
        self._marks[task] = max(self._marks.get(task, 0), highest_version)
        self._manifests.pop(task, None)
        for key in [key for key in self._files if key[0] == task]:
            del self._files[key]

    def append_audit(self, entry: bytes) -> None:
        self.audit_entries.append(entry)

    def read_document(self, name: str) -> bytes | None:
        check_document_name(name)
        return self._documents.get(name)

    def write_document(self, name: str, data: bytes) -> None:
        check_document_name(name)
        self._documents[name] = bytes(data)
