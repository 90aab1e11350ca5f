"""The prompt store on S3-compatible object storage: the directory layout as object keys under a prefix.

    PREFIX/tasks/<task>/manifest.json          which versions exist, which is active (the commit point)
    PREFIX/tasks/<task>/v<N>/adapter_config.json, adapter_model.safetensors, meta.json
    PREFIX/version_marks.json                  the highest version each deleted task reached
    PREFIX/tenants.json                        the tenant directory (documents.py: whole documents)

Every write is conditional, so several processes can share one bucket without losing a change: version objects are
created with `If-None-Match: *` (immutable; a refusal means another writer took that number), and the manifest, the
version marks and the documents are replaced with `If-Match: <the ETag this process last read or wrote>` (created
with `If-None-Match: *`). A refused write raises StorageConflictError and changes nothing.

Invariant: a version's objects are written before a manifest names them, and a manifest is written (or deleted)
last, in one PUT (DELETE). Objects no committed manifest names are leftovers: `scan` ignores them and
`discard_leftovers` removes those older than `leftover_min_age_s` (younger ones may be another process's write in
flight). A task without a manifest is such a leftover too: an interrupted create (objects first, manifest last) or
delete (manifest first, objects after).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from prompt_store.documents import DOCUMENT_NAMES, check_document_name
from prompt_store.errors import StorageConflictError, StorageError
from prompt_store.manifest import TaskManifest, VersionRecord, record_to_dict
from prompt_store.peft_file_names import CONFIG_FILE, MODEL_FILE
from prompt_store.storage import (
    MANIFEST_FILE,
    MARKS_FILE,
    MARKS_FORMAT,
    META_FILE,
    ScanResult,
    StoreChanges,
    StoredTask,
    checked_version,
    parse_manifest,
)
from prompt_store.store_config import S3Location
from prompt_store.task_names import is_valid_task_name

MANIFEST_KEY = re.compile(r"tasks/([^/]+)/manifest\.json")  # a task's manifest, below the prefix
VERSION_KEY = re.compile(r"v([1-9][0-9]{0,9})/(.+)")  # a version object's key below tasks/<task>/
VERSION_FILES = (CONFIG_FILE, MODEL_FILE, META_FILE)
MARK_ATTEMPTS = 5  # version marks merged with another writer's and rewritten, at most this often
DEFAULT_REGION = "us-east-1"
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}  # 412, and 409 for a racing conditional PUT
_T = TypeVar("_T")
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class S3Storage:
    """Task versions as objects under `s3://BUCKET/PREFIX`, shared by every process that serves it.

    Not locked per task: the registry serializes one process's writes to a task; other processes are excluded by
    the conditional writes. `_etags` holds, per task, the manifest's ETag as this process last read or wrote it.
    """

    is_shared = True  # every replica on the bucket writes it: the server polls `changes`

    def __init__(self, location: S3Location, leftover_min_age_s: float = 3600.0, client=None):
        self.location = location
        self._leftover_min_age_s = leftover_min_age_s
        self._client = client if client is not None else _make_client(location.endpoint_url)
        self._etags: dict[str, str] = {}  # task -> ETag of its manifest (also of a damaged one scan skipped)
        self._document_etags: dict[str, str | None] = {}  # document -> ETag as last read/written (None: absent)
        self._marks_lock = threading.Lock()
        self._request(
            f"cannot open the prompt store {location.url}", lambda: self._client.head_bucket(Bucket=location.bucket)
        )
        self._marks, self._marks_etag, self._marks_problem = self._read_marks()

    def close(self) -> None:
        self._client.close()

    # ---- reading the catalogue -------------------------------------------------------------------------------
    def scan(self) -> ScanResult:
        """Every committed task from one listing and one GET of each manifest; damaged entries are reported."""
        result = ScanResult()
        with self._marks_lock:
            self._marks, self._marks_etag, self._marks_problem = self._read_marks()
            result.highest_versions.update(self._marks)
        if self._marks_problem:
            result.problems.append(self._marks_problem)
        tasks: dict[str, dict[str, dict]] = {}  # task -> {key below tasks/<task>/: its listing entry}
        tasks_root = self._key("tasks/")
        for entry in self._list(tasks_root):
            task, _, name = entry["Key"][len(tasks_root) :].partition("/")
            tasks.setdefault(task, {})[name] = entry
        for task in sorted(tasks):
            if not is_valid_task_name(task):
                result.problems.append(f"{task!r} in tasks/ is not a task name; ignored")
                continue
            self._scan_task(task, tasks[task], result)
        return result

    def reload_task(self, task: str) -> StoredTask:
        """GET the manifest (and its ETag), then list the task's objects and re-read the marks.

        In that order: a listing made after the manifest's commit holds every version it names, and the version
        objects of writers still in flight, so a retried upload is numbered above all of them."""
        found = self._get(self._manifest_key(task), f"task {task!r}")
        if found is None:
            self._etags.pop(task, None)
        else:
            self._etags[task] = found[1]  # kept for a damaged one too: a create replaces it if nobody else did
        task_root = self._key(f"tasks/{task}/")
        listed = [_version_of(entry["Key"][len(task_root) :]) or 0 for entry in self._list(task_root)]
        with self._marks_lock:
            self._marks, self._marks_etag, _ = self._read_marks()
            highest = max([self._marks.get(task, 0), *listed])
        result = ScanResult()
        manifest = None if found is None else parse_manifest(task, found[0], result)
        if manifest is not None:
            highest = max(highest, manifest.latest_version)
        return StoredTask(manifest, highest, result.problems[0] if result.problems else None)

    def changes(self) -> StoreChanges:
        """One listing of the prefix, its ETags compared with those this process holds; nothing is read."""
        root = self._key("")
        manifests: dict[str, str] = {}  # task -> its manifest's ETag, as listed
        documents: dict[str, str] = {}
        # The tasks and the documents beside them, not audit/: its entries only grow, and no replica reads them.
        for entry in self._list(self._key("tasks/")) + self._list(root, top_level_only=True):
            name = entry["Key"][len(root) :]
            match = MANIFEST_KEY.fullmatch(name)
            if match and is_valid_task_name(match[1]):
                manifests[match[1]] = entry["ETag"]
            elif name in DOCUMENT_NAMES:
                documents[name] = entry["ETag"]
        held, held_documents = dict(self._etags), dict(self._document_etags)  # other threads may change them
        tasks = {task for task, etag in manifests.items() if held.get(task) != etag} | (held.keys() - manifests.keys())
        changed_documents = {name for name, etag in held_documents.items() if documents.get(name) != etag}
        return StoreChanges(frozenset(tasks), frozenset(changed_documents))

    def discard_leftovers(self, result: ScanResult) -> None:
        """Best effort: a leftover that stays is found again by the next scan."""
        for key in result.leftovers:
            with contextlib.suppress(StorageError):
                self._delete(str(key))

    def read_version(self, task: str, record: VersionRecord) -> tuple[bytes, bytes]:
        what = f"task {task!r} version {record.version}"
        config_found = self._get(self._version_key(task, record.version, CONFIG_FILE), what)
        model_found = self._get(self._version_key(task, record.version, MODEL_FILE), what)
        if config_found is None or model_found is None:
            raise StorageError(f"{what} cannot be read: its objects are missing from {self.location.url}")
        return checked_version(task, record, config_found[0], model_found[0], f"in {self.location.url}")

    def read_document(self, name: str) -> bytes | None:
        check_document_name(name)
        found = self._get(self._key(name), name)
        self._document_etags[name] = None if found is None else found[1]
        return None if found is None else found[0]

    # ---- writing -------------------------------------------------------------------------------------------
    def append_audit(self, entry: bytes) -> None:
        """One admin request's audit entry as its own object, `audit/<UTC time>-<random>.json`: every replica
        writes beside the others, nothing is ever rewritten, and the keys list in time order."""
        name = f"audit/{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:12]}.json"
        self._put(self._key(name), entry, None, "an audit entry")

    def write_document(self, name: str, data: bytes) -> None:
        """Replace the document if nobody changed it since this process read it (StorageConflictError otherwise)."""
        check_document_name(name)
        self._document_etags[name] = self._put(self._key(name), data, self._document_etags.get(name), name)

    def create_task(self, manifest: TaskManifest, config_bytes: bytes, model_bytes: bytes) -> None:
        """The version's objects, then the manifest (created, or replacing the damaged one scan skipped)."""
        task, record = manifest.task, manifest.active
        written = self._put_version(task, record, config_bytes, model_bytes)
        try:
            self._etags[task] = self._put(self._manifest_key(task), manifest.to_json(), self._etags.get(task), task)
        except StorageError:
            self._delete_quietly(written)
            raise

    def write_version(self, task: str, record: VersionRecord, config_bytes: bytes, model_bytes: bytes) -> None:
        self._put_version(task, record, config_bytes, model_bytes)

    def commit(self, manifest: TaskManifest) -> None:
        """Replace the manifest if it is still the one this process last read or wrote."""
        task = manifest.task
        etag = self._etags.get(task)
        if etag is None:
            raise StorageError(f"could not update task {task!r}: its manifest was never read from {self.location.url}")
        self._etags[task] = self._put(self._manifest_key(task), manifest.to_json(), etag, f"task {task!r}")

    def remove_versions(self, task: str, versions: list[int]) -> None:
        self._delete_quietly([self._version_key(task, v, name) for v in versions for name in VERSION_FILES])

    def delete_task(self, task: str, highest_version: int) -> None:
        """Record the mark, delete the manifest (the commit point, conditional), then free the version objects."""
        self._record_mark(task, highest_version)
        etag = self._etags.get(task)
        if etag is not None:
            self._delete(self._manifest_key(task), etag, f"task {task!r}")
            del self._etags[task]
        with contextlib.suppress(StorageError):  # what stays is a leftover of the next scan
            self._delete_quietly([entry["Key"] for entry in self._list(self._key(f"tasks/{task}/"))])

    # ---- scanning one task ---------------------------------------------------------------------------------
    def _scan_task(self, task: str, entries: dict[str, dict], result: ScanResult) -> None:
        versions: dict[int, dict[str, dict]] = {}  # version -> {file name: listing entry}
        for name, entry in entries.items():
            match = VERSION_KEY.fullmatch(name)
            if match:
                versions.setdefault(int(match[1]), {})[match[2]] = entry
        found = self._get(self._manifest_key(task), f"task {task!r}") if MANIFEST_FILE in entries else None
        if found is None:  # an interrupted create or delete: nothing here was committed
            self._add_leftovers(task, entries, result)
            return
        data, self._etags[task] = found  # kept for a damaged one too: an upload replaces it if nobody else did
        manifest = parse_manifest(task, data, result)
        if manifest is None:  # skipped and left for a human; an upload that replaces it is numbered above it all
            _raise_highest(result, task, max(versions, default=0))
            return
        _raise_highest(result, task, manifest.latest_version)
        committed = {record.version for record in manifest.versions}
        self._add_leftovers(
            task, {n: e for n, e in entries.items() if _version_of(n) not in committed | {None}}, result
        )
        damaged = {r.version for r in manifest.versions if not _version_intact(versions.get(r.version, {}), r)}
        if manifest.active_version in damaged:
            result.problems.append(
                f"task {task!r}: active version {manifest.active_version} objects are missing or truncated; "
                "task skipped"
            )
            return
        result.problems += [
            f"task {task!r}: version {v} objects are missing or truncated; skipped" for v in sorted(damaged)
        ]
        result.manifests[task] = manifest.without_versions(damaged)

    def _add_leftovers(self, task: str, uncommitted: dict[str, dict], result: ScanResult) -> None:
        """Old enough: leftovers to remove. Younger: kept, and new versions numbered above them, since they may be
        another writer's, still in flight."""
        now = datetime.now(UTC)
        for name, entry in uncommitted.items():
            age_s = (now - entry["LastModified"]).total_seconds()
            if self._leftover_min_age_s <= 0 or age_s >= self._leftover_min_age_s:
                result.leftovers.append(PurePosixPath(entry["Key"]))
            else:
                _raise_highest(result, task, _version_of(name) or 0)

    # ---- version marks -------------------------------------------------------------------------------------
    def _read_marks(self) -> tuple[dict[str, int], str | None, str | None]:
        """({task: highest version}, the object's ETag (None: absent), why its content was ignored)."""
        found = self._get(self._key(MARKS_FILE), MARKS_FILE)
        if found is None:
            return {}, None, None
        data, etag = found
        try:
            body = json.loads(data)
        except ValueError as exc:
            return {}, etag, f"{MARKS_FILE} is damaged ({str(exc)[:100]}); ignored"
        is_known_format = isinstance(body, dict) and body.get("format") == MARKS_FORMAT
        marks = body.get("highest_versions") if is_known_format else None
        if not isinstance(marks, dict) or not all(is_valid_task_name(k) and type(v) is int for k, v in marks.items()):
            return {}, etag, f"{MARKS_FILE} is damaged (unexpected content); ignored"
        return marks, etag, None

    def _record_mark(self, task: str, version: int) -> None:
        """Marks only ever rise, so a conflicting writer's marks are merged in (maximum per task) and written again."""
        with self._marks_lock:
            for _ in range(MARK_ATTEMPTS):
                if self._marks.get(task, 0) >= version:
                    return
                marks = self._marks | {task: version}
                body = json.dumps({"format": MARKS_FORMAT, "highest_versions": dict(sorted(marks.items()))}, indent=1)
                try:
                    self._marks_etag = self._put(self._key(MARKS_FILE), body.encode(), self._marks_etag, MARKS_FILE)
                except StorageConflictError:
                    self._marks, self._marks_etag, _ = self._read_marks()
                    continue
                self._marks = marks
                return
        raise StorageConflictError(f"could not delete task {task!r}: {MARKS_FILE} kept changing under this server")

    # ---- objects -------------------------------------------------------------------------------------------
    def _put_version(self, task: str, record: VersionRecord, config_bytes: bytes, model_bytes: bytes) -> list[str]:
        """Create the version's objects (never overwriting one); on failure removes those it wrote, and raises."""
        what = f"task {task!r} version {record.version}"
        meta = json.dumps(record_to_dict(record), indent=1).encode()
        written: list[str] = []
        try:
            for name, data in ((CONFIG_FILE, config_bytes), (MODEL_FILE, model_bytes), (META_FILE, meta)):
                key = self._version_key(task, record.version, name)
                self._put(key, data, None, what)
                written.append(key)
        except StorageError:
            self._delete_quietly(written)
            raise
        return written

    def _put(self, key: str, data: bytes, expected_etag: str | None, what: str) -> str:
        """Write `key` only if it still has `expected_etag` (None: only if it does not exist); returns its ETag."""
        condition = {"IfNoneMatch": "*"} if expected_etag is None else {"IfMatch": expected_etag}
        put = functools.partial(self._client.put_object, Bucket=self.location.bucket, Key=key, Body=data, **condition)
        return self._request(f"could not write {what} to {self.location.url}", lambda: put()["ETag"])

    def _get(self, key: str, what: str) -> tuple[bytes, str] | None:
        """(content, ETag), or None if there is no such object."""

        def fetch() -> tuple[bytes, str] | None:
            try:
                response = self._client.get_object(Bucket=self.location.bucket, Key=key)
            except ClientError as exc:
                if _error_code(exc) in _MISSING_CODES:
                    return None
                raise
            return response["Body"].read(), response["ETag"]

        return self._request(f"cannot read {what} from {self.location.url}", fetch)

    def _delete(self, key: str, expected_etag: str | None = None, what: str = "") -> None:
        condition = {} if expected_etag is None else {"IfMatch": expected_etag}
        delete = functools.partial(self._client.delete_object, Bucket=self.location.bucket, Key=key, **condition)
        self._request(f"could not delete {what or key} in {self.location.url}", delete)

    @staticmethod
    def _request(action: str, call: Callable[[], _T]) -> _T:
        """One S3 request; botocore's errors become StorageError, a failed condition StorageConflictError."""
        try:
            return call()
        except ClientError as exc:
            if _error_code(exc) in _CONFLICT_CODES:
                raise StorageConflictError(
                    f"{action}: another writer changed it since this server read it; nothing was changed"
                ) from None
            raise StorageError(f"{action}: {_reason(exc)}") from None
        except BotoCoreError as exc:
            raise StorageError(f"{action}: {_reason(exc)}") from None

    def _delete_quietly(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(StorageError):
                self._delete(key)

    def _list(self, prefix: str, top_level_only: bool = False) -> list[dict]:
        """Every object below `prefix`, or with `top_level_only` those directly in it (no deeper "folders")."""

        def list_all() -> list[dict]:
            extra = {"Delimiter": "/"} if top_level_only else {}
            paginator = self._client.get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=self.location.bucket, Prefix=prefix, **extra)
            return [entry for page in pages for entry in page.get("Contents", [])]

        return self._request(f"cannot list {self.location.url}", list_all)

    def _key(self, name: str) -> str:
        return f"{self.location.prefix}/{name}" if self.location.prefix else name

    def _manifest_key(self, task: str) -> str:
        return self._key(f"tasks/{task}/{MANIFEST_FILE}")

    def _version_key(self, task: str, version: int, name: str) -> str:
        return self._key(f"tasks/{task}/v{version}/{name}")


def _make_client(endpoint_url: str | None):
    """Credentials and region as every AWS tool finds them (AWS_* variables, ~/.aws); retries: botocore's."""
    session = boto3.session.Session()
    config = Config(
        connect_timeout=10,
        read_timeout=60,
        # Path-style keys: S3-compatible servers (SeaweedFS, MinIO) on an IP or localhost have no bucket subdomains.
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return session.client(
        "s3", endpoint_url=endpoint_url, region_name=session.region_name or DEFAULT_REGION, config=config
    )


def _version_of(name: str) -> int | None:
    match = VERSION_KEY.fullmatch(name)
    return int(match[1]) if match else None


def _version_intact(files: dict[str, dict], record: VersionRecord) -> bool:
    # Sizes from the listing (no extra request); checksums only when the version is loaded, as in the local store.
    sizes = tuple(files[name]["Size"] if name in files else None for name in (CONFIG_FILE, MODEL_FILE))
    return sizes == (record.config_bytes, record.model_bytes)


def _raise_highest(result: ScanResult, task: str, version: int) -> None:
    if version > result.highest_versions.get(task, 0):
        result.highest_versions[task] = version


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _reason(exc: ClientError | BotoCoreError) -> str:
    """The server's error code and message, or botocore's one-line description (never a traceback)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    return str(exc)
