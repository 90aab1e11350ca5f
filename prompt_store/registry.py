"""The catalogue of task versions that the engine thread and the HTTP threads share.

Locking: `_lock` guards every in-memory structure and is held only for dictionary work, never for file I/O or
parsing. Changes to one task (upload, activate, delete) are also serialized by a per-task lock (striped), taken
before `_lock` and held across the store's file writes, so two uploads to different tasks proceed in parallel.
A tenant's uploads and its deletion are serialized by a per-owner lock (striped), taken before the task lock, so a
quota check and the store it permits are one step, and a tenant is never deleted while an upload makes it an owner.

Ownership: every task has an owner (a tenant) or none (shared). Every call that names a task is made for a
`Caller`, and a task the caller may not see is, to it, exactly an unknown task: the same error, the same message.

Other processes (replicas on one S3 bucket): a change that loses a conditional write re-reads the task from the
store and is redone (conflicts.py); `refresh` applies what they changed, each task re-read under its task lock, and
versions that left a manifest go as on a local delete (pinned ones stay served to their refs).

Pin invariant: a pinned version's spec stays obtainable until unpinned. A version is newly pinned only under `_lock`
while the task's manifest still lists it (the active one, or a kept one named by `NAME@N`); pruning drops versions
from the manifest under the same lock and skips pinned ones, and `delete` first moves pinned versions' specs into
the host cache (which never evicts pinned entries) before removing the files.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import replace

from prompt_store.access import ANONYMOUS, OPERATOR, Caller
from prompt_store.conflicts import retry_on_conflict
from prompt_store.documents import TENANTS_DOCUMENT
from prompt_store.errors import (
    ConflictError,
    InvalidPromptError,
    InvalidSubtaskError,
    PromptStoreError,
    QuotaExceededError,
    StorageError,
    UnknownTaskError,
)
from prompt_store.host_cache import HostCache, VersionKey
from prompt_store.manifest import TaskManifest, VersionRecord
from prompt_store.memory_storage import MemoryStorage
from prompt_store.model_shape import ModelShape
from prompt_store.peft_format import read_peft_files
from prompt_store.registry_types import (
    OwnerUsage,
    RegistryStats,
    TaskInfo,
    TaskVersionRef,
    UploadResult,
    VersionInfo,
)
from prompt_store.spec import PromptSpec
from prompt_store.storage import sha256_hex
from prompt_store.storage_interface import StorageBackend
from prompt_store.store_config import StoreConfig
from prompt_store.task_names import validate_task_name
from prompt_store.tenant_directory import TenantDirectory

__all__ = [
    "OwnerUsage",
    "PromptRegistry",
    "RegistryStats",
    "TaskInfo",
    "TaskVersionRef",
    "UploadResult",
    "VersionInfo",
]

NUM_TASK_LOCKS = 64
UNLIMITED = 1 << 62

log = logging.getLogger("promptswap.prompt_store")


class PromptRegistry:
    """Task name -> versions -> the active one; pins, the host tier and the durable store behind it."""

    def __init__(
        self, shape: ModelShape, config: StoreConfig, base_model_id: str, storage: StorageBackend | None = None
    ):
        self.shape = shape
        self.config = config
        self.base_model_id = base_model_id
        self._storage = storage if storage is not None else MemoryStorage()
        # Stored versions passed the upload limits when they came in; lowering a limit later must not orphan them.
        self._stored_limits = replace(
            config, max_virtual_tokens=UNLIMITED, max_file_bytes=UNLIMITED, max_config_bytes=UNLIMITED
        )
        self._lock = threading.Lock()
        self._task_locks = [threading.Lock() for _ in range(NUM_TASK_LOCKS)]
        self._owner_locks = [threading.Lock() for _ in range(NUM_TASK_LOCKS)]
        self.tenants = TenantDirectory(self._storage)  # tenants and API keys, in the same store
        self._manifests: dict[str, TaskManifest] = {}  # the served catalogue
        self._pins: dict[VersionKey, int] = {}  # refs held per version
        self._detached: dict[VersionKey, VersionRecord] = {}  # pinned versions of deleted tasks
        # task -> the highest version it ever had (deleted tasks, skipped entries, pruned versions included, also
        # across restarts): new versions are numbered above it, so (task, version) never names two prompts.
        self._version_floor: dict[str, int] = {}
        self._num_damaged_entries = 0  # entries load() skipped and reported
        self._damaged_versions: set[VersionKey] = set()  # versions found damaged when read for a request
        self._cache = HostCache(config.host_cache_tasks, config.host_cache_bytes)
        self._counts: Counter[str] = Counter()

    # ---- start-up ------------------------------------------------------------------------------------------
    def load(self) -> list[str]:
        """Read the store's manifests (no tensors); returns one line per damaged or unfit entry skipped."""
        started_at = time.perf_counter()
        self.tenants.load()  # raises on a damaged tenants document: serving without it would drop every tenant
        result = self._storage.scan()
        self._storage.discard_leftovers(result)
        problems = list(result.problems)
        manifests = {}
        for task, manifest in result.manifests.items():
            fitting = self._fitting(manifest, problems)
            if fitting is not None:
                manifests[task] = fitting
        with self._lock:
            self._manifests.update(manifests)
            for task, version in result.highest_versions.items():
                self._version_floor[task] = max(self._version_floor.get(task, 0), version)
            self._num_damaged_entries = len(problems)
        elapsed = time.perf_counter() - started_at
        log.info("prompt store: %d tasks loaded in %.2f s, %d entries skipped", len(manifests), elapsed, len(problems))
        return problems

    def close(self) -> None:
        """Release the store directory (its lock) for another process; the registry is unusable afterwards."""
        self._storage.close()

    # ---- other processes' changes (a shared store) -----------------------------------------------------------
    @property
    def is_shared(self) -> bool:
        """Other processes change the store too (S3): `refresh` must run now and then (store_poller.py)."""
        return self._storage.is_shared

    def refresh(self) -> int:
        """Apply what other processes changed in the store since this one read it: new versions, activations,
        deletions, tenants and keys; returns how many tasks were re-read. Requests already admitted keep the
        versions they pinned (a version gone elsewhere stays served to them as after a local delete)."""
        changes = self._storage.changes()
        failures = []
        for task in sorted(changes.tasks):
            try:
                with self._task_lock(task):
                    self._reload_task(task)
            except StorageError as exc:  # its ETag is still the old one: the next refresh tries it again
                failures.append(exc)
        if TENANTS_DOCUMENT in changes.documents:
            self.tenants.load()
        if failures:
            raise StorageError(f"{len(failures)} of {len(changes.tasks)} changed tasks not re-read: {failures[0]}")
        return len(changes.tasks)

    def _reload_task(self, task: str) -> None:
        """Under the task's lock: serve the task as the store holds it now (another process may have changed it)."""
        stored = self._storage.reload_task(task)
        problems = [stored.problem] if stored.problem else []
        fresh = None if stored.manifest is None else self._fitting(stored.manifest, problems)
        for problem in problems:
            log.warning("prompt store: %s", problem)
        with self._lock:
            self._version_floor[task] = max(self._version_floor.get(task, 0), stored.highest_version)
            old = self._manifests.pop(task, None)
            if fresh is not None:
                self._manifests[task] = fresh
            kept = set() if fresh is None else {record.version for record in fresh.versions}
            gone = [] if old is None else [record for record in old.versions if record.version not in kept]
            pinned = self._detach_versions(task, gone)
        self._keep_pinned_in_cache(task, pinned)

    def _fitting(self, manifest: TaskManifest, problems: list[str]) -> TaskManifest | None:
        task = manifest.task
        if task == self.base_model_id:
            problems.append(f"task {task!r} has the base model's id; skipped")
            return None
        if not manifest.active.fits(self.shape):
            problems.append(f"task {task!r}: active version does not fit the served model's shape; skipped")
            return None
        unfit = {r.version for r in manifest.versions if not r.fits(self.shape)}
        problems += [f"task {task!r}: version {v} does not fit the served model's shape; skipped" for v in unfit]
        return manifest.without_versions(unfit)

    # ---- uploads -------------------------------------------------------------------------------------------
    def upload(self, task: str, config_bytes: bytes, model_bytes: bytes, caller: Caller = OPERATOR) -> UploadResult:
        """Validate, store durably, then activate; new pins get the new version once this returns.

        A new task belongs to the caller's tenant (shared when the operator uploads it); a new version keeps the
        task's owner. The ownership and quota check runs before the files are parsed, and again, under the locks,
        just before they are stored."""
        num_bytes = len(config_bytes) + len(model_bytes)
        try:
            validate_task_name(task, self.base_model_id)
            self._check_upload(task, caller, num_bytes)
            spec = read_peft_files(config_bytes, model_bytes, self.shape, self.config)
        except PromptStoreError:
            self._count("uploads_rejected")
            raise

        def store() -> UploadResult:
            self._check_upload(task, caller, num_bytes)
            return self._store_new_version(task, spec, config_bytes, model_bytes, caller)

        with self._owner_lock(caller), self._task_lock(task):
            try:  # another replica's write to the task won: re-read it, renumber above it, store again
                result = retry_on_conflict(store, lambda: self._reload_task(task))
            except StorageError:
                self._count("uploads_failed")
                raise
            except PromptStoreError:
                self._count("uploads_rejected")
                raise
            self._prune(task)
        self._count("uploads_accepted")
        return result

    def _check_upload(self, task: str, caller: Caller, num_bytes: int) -> None:
        """409 for a name the caller may not change; 403 past its tenant's `max_tasks` or `max_prompt_bytes`."""
        with self._lock:
            manifest = self._manifests.get(task)
        if manifest is not None and not caller.manages(manifest.owner):
            raise ConflictError(f"task name {task!r} is taken")
        if caller.is_operator:
            return
        if caller.tenant is None:
            raise ConflictError("anonymous callers cannot own tasks")  # the HTTP layer refuses them earlier
        quota = self.tenants.get_tenant(caller.tenant).quota
        usage = self.usage_of(caller.tenant)
        if manifest is None and quota.max_tasks is not None and usage.num_tasks >= quota.max_tasks:
            raise QuotaExceededError(
                f"tenant {caller.tenant!r} has reached its max_tasks quota ({quota.max_tasks} tasks)"
            )
        if quota.max_prompt_bytes is not None and usage.num_bytes + num_bytes > quota.max_prompt_bytes:
            raise QuotaExceededError(
                f"this upload ({num_bytes} bytes) would take tenant {caller.tenant!r} past its max_prompt_bytes "
                f"quota ({usage.num_bytes} of {quota.max_prompt_bytes} bytes stored, all versions kept counted)"
            )

    def _store_new_version(
        self, task: str, spec: PromptSpec, config_bytes: bytes, model_bytes: bytes, caller: Caller
    ) -> UploadResult:
        with self._lock:
            old = self._manifests.get(task)
            latest = old.latest_version if old is not None else 0
            version = max(latest, self._version_floor.get(task, 0)) + 1
        record = _new_record(version, spec, config_bytes, model_bytes)
        if old is None:
            manifest = TaskManifest(task, version, (record,), owner=None if caller.is_operator else caller.tenant)
            self._storage.create_task(manifest, config_bytes, model_bytes)
        else:
            manifest = old.with_version(record)
            self._add_version(manifest, config_bytes, model_bytes)
        with self._lock:
            self._manifests[task] = manifest
            self._cache_put((task, version), spec)  # the first request need not re-read what we just parsed
        return UploadResult(
            task,
            version,
            old is None,
            spec.peft_type,
            spec.kind,
            spec.num_virtual_tokens,
            record.num_bytes,
            manifest.owner,
            record.task_kind,
            record.num_labels,
            record.labels,
        )

    def _add_version(self, manifest: TaskManifest, config_bytes: bytes, model_bytes: bytes) -> None:
        record = manifest.active
        self._storage.write_version(manifest.task, record, config_bytes, model_bytes)
        try:
            self._storage.commit(manifest)
        except StorageError:
            self._storage.remove_versions(manifest.task, [record.version])
            raise

    def _prune(self, task: str) -> None:
        """Drop old versions beyond `versions_kept`, except pinned ones (a later upload drops those)."""
        with self._lock:
            manifest = self._manifests[task]
            old = [r.version for r in manifest.versions if r.version != manifest.active_version]
            kept = set(old[len(old) - self.config.versions_kept :]) if self.config.versions_kept else set()
            doomed = [v for v in old if v not in kept and (task, v) not in self._pins]
            if not doomed:
                return
            pruned = manifest.without_versions(set(doomed))
            self._manifests[task] = pruned
            for version in doomed:
                self._cache.pop((task, version))
        try:
            self._storage.commit(pruned)
        except StorageError:
            return  # still named by the old manifest on disk: keep the files; the next commit drops them
        self._storage.remove_versions(task, doomed)

    # ---- the engine's side: pins and specs -----------------------------------------------------------------
    def pin(
        self, task: str, subtask: int = 0, caller: Caller = ANONYMOUS, version: int | None = None
    ) -> TaskVersionRef:
        """Pin a version for one request, until `unpin`: the active one, or `version` if it is still kept."""
        with self._lock:
            manifest = self._visible(task, caller)
            record = manifest.active if version is None else _kept_version(manifest, version)
            if type(subtask) is not int or not 0 <= subtask < record.num_variants:
                last = record.num_variants - 1
                raise InvalidSubtaskError(
                    f"task {task!r} version {record.version} has sub-tasks 0..{last}; got {subtask!r}"
                )
            key = (task, record.version)
            self._pins[key] = self._pins.get(key, 0) + 1
        return TaskVersionRef(
            task,
            record.version,
            record.peft_type,
            record.kind,
            record.num_virtual_tokens,
            record.num_variants,
            subtask,
            manifest.owner,
            record.task_kind,
        )

    def unpin(self, ref: TaskVersionRef) -> None:
        with self._lock:
            count = self._pins.get(ref.key, 0)
            if count == 0:
                raise ValueError(f"task {ref.task!r} version {ref.version} is not pinned (unpinned twice?)")
            if count > 1:
                self._pins[ref.key] = count - 1
                return
            del self._pins[ref.key]
            if self._detached.pop(ref.key, None) is not None:
                self._cache.pop(ref.key)  # the task was deleted; this was the last user of its tensors
            elif self._cache.is_over_budget:  # pins had held it over its bounds
                self._counts["evictions"] += self._cache.trim(self._pins.__contains__)

    def spec(self, ref: TaskVersionRef) -> PromptSpec:
        """The pinned version's tensors: from the host cache, else read and parsed from the store."""
        with self._lock:
            spec = self._cache_get(ref.key)
            record = self._record_of(ref.key)
        if spec is not None:
            return spec
        if record is None:
            raise UnknownTaskError(f"task {ref.task!r} version {ref.version} is gone (was the ref unpinned?)")
        try:
            spec = self._load(ref.task, record)
        except StorageError as exc:
            with self._lock:  # a concurrent delete may have moved it to the cache before removing the files
                spec = self._cache_get(ref.key)
            if spec is None:
                self._report_damaged(ref.key, exc)
                raise
            return spec
        with self._lock:
            if self._record_of(ref.key) is not None:
                self._cache_put(ref.key, spec)
        return spec

    def is_in_host_tier(self, ref: TaskVersionRef) -> bool:
        """Whether `spec(ref)` would be a memory lookup, not a read from the store."""
        with self._lock:
            return ref.key in self._cache

    def _report_damaged(self, key: VersionKey, exc: StorageError) -> None:
        """Like a damaged entry at start-up: one warning line and the damaged-entries gauge (once per version)."""
        with self._lock:
            if key in self._damaged_versions:
                return
            self._damaged_versions.add(key)
        log.warning("damaged prompt store entry, its requests fail: %s", exc)

    # ---- admin ---------------------------------------------------------------------------------------------
    def activate(self, task: str, version: int, caller: Caller = OPERATOR) -> TaskInfo:
        """Serve a kept version (roll back or forward); durable before it returns."""
        with self._task_lock(task):
            retry_on_conflict(lambda: self._activate(task, version, caller), lambda: self._reload_task(task))
        return self.get_task(task, caller)

    def _activate(self, task: str, version: int, caller: Caller) -> None:
        with self._lock:
            manifest = self._managed(task, caller)
        _kept_version(manifest, version)
        # On a shared store the write is also the check that this view is current: another replica may have
        # activated another version since, so "already active here" proves nothing.
        if manifest.active_version != version or self._storage.is_shared:
            activated = replace(manifest, active_version=version)
            self._storage.commit(activated)
            with self._lock:
                self._manifests[task] = activated

    def delete(self, task: str, caller: Caller = OPERATOR) -> None:
        """Remove the task for good; requests holding refs to it keep working until they unpin them."""
        with self._task_lock(task):
            retry_on_conflict(lambda: self._delete(task, caller), lambda: self._reload_task(task))

    def _delete(self, task: str, caller: Caller) -> None:
        with self._lock:
            manifest = self._managed(task, caller)
            del self._manifests[task]
            highest = self._version_floor[task] = max(self._version_floor.get(task, 0), manifest.latest_version)
            pinned = self._detach_versions(task, manifest.versions)
        self._keep_pinned_in_cache(task, pinned)
        try:
            self._storage.delete_task(task, highest)
        except StorageError:
            with self._lock:
                self._manifests[task] = manifest
                for record in pinned:
                    self._detached.pop((task, record.version), None)
            raise

    def _detach_versions(self, task: str, records: Iterable[VersionRecord]) -> list[VersionRecord]:
        """Under the lock: versions no manifest names any more. Unpinned ones leave the cache, pinned ones become
        detached (returned: their specs must reach the cache before the store frees their objects)."""
        pinned = []
        for record in records:
            key = (task, record.version)
            if key in self._pins:
                self._detached[key] = record
                pinned.append(record)
            else:
                self._cache.pop(key)
        return pinned

    def _keep_pinned_in_cache(self, task: str, pinned: list[VersionRecord]) -> None:
        for record in pinned:
            key = (task, record.version)
            with self._lock:
                if key in self._cache or key not in self._detached:
                    continue
            try:
                spec = self._load(task, record)
            except StorageError:
                continue  # unreadable already: its requests fail either way, the delete must not
            with self._lock:
                if key in self._detached:
                    self._cache_put(key, spec)

    def list_tasks(self, caller: Caller = OPERATOR) -> list[TaskInfo]:
        """The tasks the caller may see, by name."""
        with self._lock:
            manifests = sorted((m for m in self._manifests.values() if caller.sees(m.owner)), key=lambda m: m.task)
        return [_task_info(manifest) for manifest in manifests]

    def get_task(self, task: str, caller: Caller = OPERATOR) -> TaskInfo:
        with self._lock:
            manifest = self._visible(task, caller)
        return _task_info(manifest)

    def has_task(self, task: str) -> bool:
        """Whether the task exists, whoever owns it (the operator's view)."""
        with self._lock:
            return task in self._manifests

    # ---- tenants: what their tasks take, and their deletion -------------------------------------------------
    def usage_of(self, tenant: str) -> OwnerUsage:
        with self._lock:
            owned = [m for m in self._manifests.values() if m.owner == tenant]
        return OwnerUsage(num_tasks=len(owned), num_bytes=sum(m.num_bytes for m in owned))

    def delete_tenant(self, tenant: str) -> None:
        """Delete a tenant and its keys; refused (409) while it owns tasks, whose owner would be gone."""
        with self._owner_lock(Caller(tenant=tenant)):
            usage = self.usage_of(tenant)
            if usage.num_tasks:
                raise ConflictError(f"tenant {tenant!r} still owns {usage.num_tasks} tasks; delete them first")
            self.tenants.delete_tenant(tenant)

    def append_audit(self, entry: bytes) -> None:
        """An admin request's audit entry into the store, where a shared store keeps every replica's (StorageError
        if it cannot be written; a store one process holds keeps none)."""
        self._storage.append_audit(entry)

    def stats(self) -> RegistryStats:
        with self._lock:
            return RegistryStats(
                num_tasks=len(self._manifests),
                num_host_cached=len(self._cache),
                num_pinned_versions=len(self._pins),
                loads_by_tier={"host": self._counts["load_host"], "disk": self._counts["load_disk"]},
                uploads_accepted=self._counts["uploads_accepted"],
                uploads_rejected=self._counts["uploads_rejected"],
                uploads_failed=self._counts["uploads_failed"],
                evictions=self._counts["evictions"],
                num_damaged_entries=self._num_damaged_entries + len(self._damaged_versions),
            )

    # ---- helpers -------------------------------------------------------------------------------------------
    def _load(self, task: str, record: VersionRecord) -> PromptSpec:
        config_bytes, model_bytes = self._storage.read_version(task, record)
        try:
            spec = read_peft_files(config_bytes, model_bytes, self.shape, self._stored_limits)
        except InvalidPromptError as exc:
            raise StorageError(f"task {task!r} version {record.version} no longer reads: {exc}") from None
        if not record.matches(spec):
            raise StorageError(f"task {task!r} version {record.version} does not match its manifest")
        self._count("load_disk")
        return spec

    def _record_of(self, key: VersionKey) -> VersionRecord | None:
        """Under the lock: the record of a version that is still served or still pinned."""
        manifest = self._manifests.get(key[0])
        record = manifest.version(key[1]) if manifest is not None else None
        return record if record is not None else self._detached.get(key)

    def _cache_get(self, key: VersionKey) -> PromptSpec | None:
        spec = self._cache.get(key)
        if spec is not None:
            self._counts["load_host"] += 1
        return spec

    def _cache_put(self, key: VersionKey, spec: PromptSpec) -> None:
        self._counts["evictions"] += self._cache.put(key, spec, self._pins.__contains__)

    def _visible(self, task: str, caller: Caller) -> TaskManifest:
        """Under the lock: the task's manifest, if the caller may see it; to anyone else it does not exist."""
        manifest = self._manifests.get(task)
        if manifest is None or not caller.sees(manifest.owner):
            raise UnknownTaskError(f"unknown task {task!r}")
        return manifest

    def _managed(self, task: str, caller: Caller) -> TaskManifest:
        """Under the lock: the task's manifest, if the caller may change it (409 for a shared task it only sees)."""
        manifest = self._visible(task, caller)
        if not caller.manages(manifest.owner):
            raise ConflictError(f"task {task!r} is shared: only the operator changes it")
        return manifest

    def _task_lock(self, task: str) -> threading.Lock:
        return self._task_locks[zlib.crc32(str(task).encode()) % NUM_TASK_LOCKS]

    def _owner_lock(self, caller: Caller):
        if caller.tenant is None:  # the operator's uploads make no tenant an owner: nothing to serialize
            return nullcontext()
        return self._owner_locks[zlib.crc32(caller.tenant.encode()) % NUM_TASK_LOCKS]

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1


def _kept_version(manifest: TaskManifest, version: int) -> VersionRecord:
    """The record of a version still kept; else not found, naming the kept versions."""
    record = manifest.version(version) if type(version) is int else None
    if record is None:
        kept = [r.version for r in manifest.versions]
        raise UnknownTaskError(f"task {manifest.task!r} has no version {version!r}; kept versions: {kept}")
    return record


def _new_record(version: int, spec: PromptSpec, config_bytes: bytes, model_bytes: bytes) -> VersionRecord:
    return VersionRecord(
        version=version,
        peft_type=spec.peft_type,
        kind=spec.kind,
        num_virtual_tokens=spec.num_virtual_tokens,
        num_variants=spec.num_variants,
        prompt_shape=tuple(spec.tensor.shape),
        config_bytes=len(config_bytes),
        model_bytes=len(model_bytes),
        config_sha256=sha256_hex(config_bytes),
        model_sha256=sha256_hex(model_bytes),
        created_at=time.time(),
        task_kind=spec.task_kind,
        head_shape=None if spec.head is None else tuple(spec.head.weight.shape),
        labels=() if spec.head is None else spec.head.labels,
    )


def _task_info(manifest: TaskManifest) -> TaskInfo:
    versions = tuple(
        VersionInfo(
            version=r.version,
            peft_type=r.peft_type,
            kind=r.kind,
            num_virtual_tokens=r.num_virtual_tokens,
            num_variants=r.num_variants,
            bytes=r.num_bytes,
            created_at=r.created_at,
            is_active=r.version == manifest.active_version,
            task_kind=r.task_kind,
            num_labels=r.num_labels,
            labels=r.labels,
        )
        for r in manifest.versions
    )
    return TaskInfo(manifest.task, manifest.active_version, versions, manifest.owner)
