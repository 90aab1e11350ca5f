"""The durable on-disk store of task versions (layout and crash-safety argument: docs/prompt_store.md).

    <directory>/tasks/<task>/manifest.json          which versions exist, which is active (the commit point)
    <directory>/tasks/<task>/v<N>/adapter_config.json, adapter_model.safetensors, meta.json
    <directory>/staging/<random>/                   a version being written; never read
    <directory>/trash/<random>/                     removed versions and deleted tasks on their way out
    <directory>/version_marks.json                  the highest version each deleted task reached
    <directory>/tenants.json                        the tenant directory (documents.py: whole-file documents)
    <directory>/promptswap.lock                     flock'd by the one process serving the store

Invariant: a version directory is complete before its name appears under tasks/, and a version is served only once
a manifest naming it has atomically replaced the old manifest. Everything else is a leftover that scan() ignores.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from prompt_store.documents import DOCUMENT_NAMES, check_document_name
from prompt_store.durable_io import fsync_dir, remove_tree, rename_synced, replace_file_atomically, write_file_synced
from prompt_store.errors import StorageError
from prompt_store.manifest import TaskManifest, VersionRecord, record_to_dict
from prompt_store.peft_file_names import CONFIG_FILE, MODEL_FILE
from prompt_store.store_lock import StoreLock
from prompt_store.task_names import is_valid_task_name

MANIFEST_FILE = "manifest.json"
META_FILE = "meta.json"  # the version's record, so a version directory describes itself to a human
MARKS_FILE = "version_marks.json"
MARKS_FORMAT = 1
VERSION_DIR = re.compile(r"v([1-9][0-9]{0,9})")


@dataclass
class ScanResult:
    manifests: dict[str, TaskManifest] = field(default_factory=dict)  # task -> committed, undamaged versions
    problems: list[str] = field(default_factory=list)  # one line per damaged entry skipped
    # uncommitted entries discard_leftovers() removes: paths in a directory, object keys in a bucket
    leftovers: list[PurePath] = field(default_factory=list)
    # task -> the highest version number the store has used for it: deleted tasks, skipped (damaged or unfit)
    # entries and dropped versions included. New versions are numbered above it, so a number never names two prompts.
    highest_versions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredTask:
    """One task as the store holds it now (`reload_task`): what a writer that lost a conditional write retries on."""

    manifest: TaskManifest | None  # None: no committed manifest (never created, deleted, or damaged)
    highest_version: int  # the highest number the store has used for the task (manifest, marks, objects in flight)
    problem: str | None = None  # why a manifest that is there was not usable (damaged), else None


@dataclass(frozen=True)
class StoreChanges:
    """What other processes changed in a shared store since this one last read or wrote it (`changes`)."""

    tasks: frozenset[str] = frozenset()  # tasks whose manifest appeared, changed or went
    documents: frozenset[str] = frozenset()  # documents (documents.py) that changed


class PromptStorage:
    """Files of task versions under one directory, which this process locks (one process per store).

    Not locked per task: the registry serializes writes to one task. Deletes of different tasks may run at once;
    `_marks_lock` orders their updates of the version marks file.
    """

    is_shared = False  # locked to this process: nothing changes it elsewhere, so there is nothing to poll

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        self._store_lock = StoreLock(self.directory)  # raises StoreLockedError if another process has the store
        self.tasks_dir = self.directory / "tasks"
        self.staging_dir = self.directory / "staging"
        self.trash_dir = self.directory / "trash"
        try:
            for path in (self.tasks_dir, self.staging_dir, self.trash_dir):
                path.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.directory)
        except OSError as exc:
            self._store_lock.release()
            raise StorageError(f"cannot open the prompt store {self.directory}: {exc.strerror or exc}") from None
        self._marks_lock = threading.Lock()
        self._marks, self._marks_problem = self._read_marks()

    def close(self) -> None:
        """Unlock the directory (the last store of this process on it); the object is unusable afterwards."""
        self._store_lock.release()

    # ---- reading the catalogue -------------------------------------------------------------------------------
    def scan(self) -> ScanResult:
        """Every committed task from its manifest alone (plus one stat per file); damaged entries are reported."""
        result = ScanResult()
        result.leftovers += [*self._entries(self.staging_dir), *self._entries(self.trash_dir)]
        temp_prefixes = tuple(f"{name}.tmp-" for name in (MARKS_FILE, *sorted(DOCUMENT_NAMES)))
        result.leftovers += [p for p in self._entries(self.directory) if p.name.startswith(temp_prefixes)]
        if self._marks_problem:
            result.problems.append(self._marks_problem)
        with self._marks_lock:
            result.highest_versions.update(self._marks)
        for entry in sorted(os.scandir(self.tasks_dir), key=lambda e: e.name):
            if not entry.is_dir(follow_symlinks=False) or not is_valid_task_name(entry.name):
                result.problems.append(f"{entry.name!r} in tasks/ is not a task directory; ignored")
                continue
            self._scan_task(Path(entry.path), result)
        return result

    def reload_task(self, task: str) -> StoredTask:
        """The task's manifest as on disk (this process is its only writer, so it is what the registry holds)."""
        result = ScanResult()
        with self._marks_lock:
            result.highest_versions.update(self._marks)
        if (self.tasks_dir / task).is_dir():
            self._scan_task(self.tasks_dir / task, result)
        problem = result.problems[0] if result.problems else None
        return StoredTask(result.manifests.get(task), result.highest_versions.get(task, 0), problem)

    def changes(self) -> StoreChanges:
        """Nothing: no other process writes this directory (it is locked)."""
        return StoreChanges()

    def discard_leftovers(self, result: ScanResult) -> None:
        """Remove what interrupted writes left behind; nothing in `leftovers` is committed."""
        for path in map(Path, result.leftovers):
            if path.is_dir() and not path.is_symlink():
                remove_tree(path)
            else:
                path.unlink(missing_ok=True)

    def read_version(self, task: str, record: VersionRecord) -> tuple[bytes, bytes]:
        """(adapter_config.json, adapter_model.safetensors) bytes, checked against the record's checksums."""
        version_dir = self._version_dir(task, record.version)
        try:
            config_bytes = (version_dir / CONFIG_FILE).read_bytes()
            model_bytes = (version_dir / MODEL_FILE).read_bytes()
        except OSError as exc:
            raise StorageError(
                f"task {task!r} version {record.version} cannot be read: {exc.strerror or exc}"
            ) from None
        return checked_version(task, record, config_bytes, model_bytes, "on disk")

    def append_audit(self, entry: bytes) -> None:
        """Nothing: one process serves this store, and its audit log file (beside the store by default) is it."""

    def read_document(self, name: str) -> bytes | None:
        """A whole-file document beside tasks/ (documents.py), or None if it was never written."""
        check_document_name(name)
        try:
            return (self.directory / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {self.directory / name}: {exc.strerror or exc}") from None

    # ---- writing -------------------------------------------------------------------------------------------
    def write_document(self, name: str, data: bytes) -> None:
        """Replace the document atomically and durably: once this returns, a crash leaves `data` in place."""
        check_document_name(name)
        try:
            replace_file_atomically(self.directory / name, data)
        except OSError as exc:
            raise StorageError(f"could not write {self.directory / name}: {exc.strerror or exc}") from None

    def create_task(self, manifest: TaskManifest, config_bytes: bytes, model_bytes: bytes) -> None:
        """A new task appears whole: its directory (manifest and first version) is renamed into tasks/ at once."""
        task, record = manifest.task, manifest.active
        staging = self.staging_dir / uuid.uuid4().hex
        try:
            staging.mkdir()
            self._write_version_files(staging / f"v{record.version}", record, config_bytes, model_bytes)
            write_file_synced(staging / MANIFEST_FILE, manifest.to_json())
            fsync_dir(staging)
            target = self.tasks_dir / task
            if target.exists():  # a task the registry skipped as damaged or unfit: the new upload replaces it
                self._move_to_trash(target)
            rename_synced(staging, target)
        except OSError as exc:
            remove_tree(staging)
            raise StorageError(f"could not store task {task!r}: {exc.strerror or exc}") from None

    def write_version(self, task: str, record: VersionRecord, config_bytes: bytes, model_bytes: bytes) -> None:
        """Put a complete version directory in place; it is served only after commit() names it."""
        staging = self.staging_dir / uuid.uuid4().hex
        try:
            self._write_version_files(staging, record, config_bytes, model_bytes)
            target = self._version_dir(task, record.version)
            if target.exists():  # an uncommitted leftover: the registry never writes a committed number twice
                self._move_to_trash(target)
            rename_synced(staging, target)
        except OSError as exc:
            remove_tree(staging)
            raise StorageError(
                f"could not store task {task!r} version {record.version}: {exc.strerror or exc}"
            ) from None

    def commit(self, manifest: TaskManifest) -> None:
        """Atomically replace the task's manifest: the moment a change becomes durable."""
        try:
            replace_file_atomically(self.tasks_dir / manifest.task / MANIFEST_FILE, manifest.to_json())
        except OSError as exc:
            raise StorageError(f"could not update task {manifest.task!r}: {exc.strerror or exc}") from None

    def remove_versions(self, task: str, versions: list[int]) -> None:
        """Remove version directories that a committed manifest no longer names (best effort: leftovers otherwise)."""
        for version in versions:
            with contextlib.suppress(OSError):  # scan() finds it as an uncommitted leftover next start
                self._move_to_trash(self._version_dir(task, version))

    def delete_task(self, task: str, highest_version: int) -> None:
        """Remove the task for good; the rename is the commit point, the rmtree only frees space.

        `highest_version` is recorded first, so a task re-created after a restart continues the numbering.
        """
        try:
            self._record_mark(task, highest_version)
            if (self.tasks_dir / task).exists():
                self._move_to_trash(self.tasks_dir / task)
        except OSError as exc:
            raise StorageError(f"could not delete task {task!r}: {exc.strerror or exc}") from None

    # ---- helpers -------------------------------------------------------------------------------------------
    def _scan_task(self, task_dir: Path, result: ScanResult) -> None:
        task = task_dir.name
        names = set(os.listdir(task_dir))
        manifest = self._read_manifest(task_dir, names, result)
        if manifest is None:
            # Skipped, and left for a human: nothing here is provably uncommitted. An upload that replaces it is
            # numbered above every version directory it holds.
            numbers = [int(match[1]) for match in map(VERSION_DIR.fullmatch, names) if match]
            self._raise_highest(result, task, max(numbers, default=0))
            return
        self._raise_highest(result, task, manifest.latest_version)  # damaged versions dropped below still count
        result.leftovers += [task_dir / name for name in _uncommitted_names(names, manifest)]
        damaged = {r.version for r in manifest.versions if not self._version_intact(task_dir, r)}
        if manifest.active_version in damaged:
            result.problems.append(
                f"task {task!r}: active version {manifest.active_version} files are missing or truncated; task skipped"
            )
            return
        result.problems += [
            f"task {task!r}: version {v} files are missing or truncated; skipped" for v in sorted(damaged)
        ]
        result.manifests[task] = manifest.without_versions(damaged)

    def _read_manifest(self, task_dir: Path, names: set[str], result: ScanResult) -> TaskManifest | None:
        task = task_dir.name
        if MANIFEST_FILE not in names:
            # never true of a task we wrote (it appears with its manifest, which is only ever replaced): damage
            result.problems.append(f"task {task!r}: no {MANIFEST_FILE}; skipped")
            return None
        try:
            data = (task_dir / MANIFEST_FILE).read_bytes()
        except OSError as exc:
            result.problems.append(f"task {task!r}: {MANIFEST_FILE} is damaged ({str(exc)[:100]}); skipped")
            return None
        return parse_manifest(task, data, result)

    @staticmethod
    def _version_intact(task_dir: Path, record: VersionRecord) -> bool:
        # Sizes are checked with a stat (cheap); checksums only when the version is loaded.
        version_dir = task_dir / f"v{record.version}"
        try:
            sizes = ((version_dir / CONFIG_FILE).stat().st_size, (version_dir / MODEL_FILE).stat().st_size)
        except OSError:
            return False
        return sizes == (record.config_bytes, record.model_bytes)

    @staticmethod
    def _write_version_files(version_dir: Path, record: VersionRecord, config_bytes: bytes, model_bytes: bytes) -> None:
        version_dir.mkdir()
        write_file_synced(version_dir / CONFIG_FILE, config_bytes)
        write_file_synced(version_dir / MODEL_FILE, model_bytes)
        write_file_synced(version_dir / META_FILE, json.dumps(record_to_dict(record), indent=1).encode())
        fsync_dir(version_dir)

    @staticmethod
    def _raise_highest(result: ScanResult, task: str, version: int) -> None:
        if version > result.highest_versions.get(task, 0):
            result.highest_versions[task] = version

    def _read_marks(self) -> tuple[dict[str, int], str | None]:
        """The version marks file: ({task: highest version}, None), or ({}, why it was ignored)."""
        try:
            body = json.loads((self.directory / MARKS_FILE).read_bytes())
        except FileNotFoundError:
            return {}, None
        except (OSError, ValueError) as exc:
            return {}, f"{MARKS_FILE} is damaged ({str(exc)[:100]}); ignored"
        is_known_format = isinstance(body, dict) and body.get("format") == MARKS_FORMAT
        marks = body.get("highest_versions") if is_known_format else None
        if not isinstance(marks, dict) or not all(is_valid_task_name(k) and type(v) is int for k, v in marks.items()):
            return {}, f"{MARKS_FILE} is damaged (unexpected content); ignored"
        return marks, None

    def _record_mark(self, task: str, version: int) -> None:
        with self._marks_lock:
            if self._marks.get(task, 0) >= version:
                return
            marks = self._marks | {task: version}
            body = {"format": MARKS_FORMAT, "highest_versions": dict(sorted(marks.items()))}
            replace_file_atomically(self.directory / MARKS_FILE, json.dumps(body, indent=1).encode())
            self._marks = marks

    def _version_dir(self, task: str, version: int) -> Path:
        return self.tasks_dir / task / f"v{version}"

    def _move_to_trash(self, path: Path) -> None:
        target = self.trash_dir / uuid.uuid4().hex
        rename_synced(path, target)
        remove_tree(target)

    @staticmethod
    def _entries(directory: Path) -> list[Path]:
        return [Path(entry.path) for entry in os.scandir(directory)]


def _uncommitted_names(names: set[str], manifest: TaskManifest) -> list[str]:
    """Version directories the manifest does not name, and temp files of interrupted manifest writes."""
    committed = {f"v{record.version}" for record in manifest.versions}
    return [
        name
        for name in names
        if (VERSION_DIR.fullmatch(name) and name not in committed) or name.startswith(f"{MANIFEST_FILE}.tmp-")
    ]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checked_version(
    task: str, record: VersionRecord, config_bytes: bytes, model_bytes: bytes, where: str
) -> tuple[bytes, bytes]:
    """The version's bytes as read back, if they still have the checksums its record holds (else StorageError)."""
    is_intact = sha256_hex(config_bytes) == record.config_sha256 and sha256_hex(model_bytes) == record.model_sha256
    if not is_intact:
        raise StorageError(f"task {task!r} version {record.version} is damaged {where} (checksum mismatch)")
    return config_bytes, model_bytes


def parse_manifest(task: str, data: bytes, result: ScanResult) -> TaskManifest | None:
    """The task's manifest from its bytes; None if it is damaged or names another task (reported in `result`)."""
    try:
        manifest = TaskManifest.from_json(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        result.problems.append(f"task {task!r}: {MANIFEST_FILE} is damaged ({str(exc)[:100]}); skipped")
        return None
    if manifest.task != task:
        result.problems.append(f"task {task!r}: {MANIFEST_FILE} names task {manifest.task!r}; skipped")
        return None
    return manifest
