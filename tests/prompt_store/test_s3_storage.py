"""S3Storage's own guarantees, on a real SeaweedFS: conditional writes between two processes sharing a bucket,
leftovers of interrupted writes, damaged objects, and errors users can act on. (The storage tests both backends
share are marked `on_both_backends` in test_prompt_storage.py and test_prompt_registry.py.)"""

from __future__ import annotations

import json
import socket
from dataclasses import replace

import pytest

from prompt_store.documents import TENANTS_DOCUMENT
from prompt_store.errors import StorageConflictError, StorageError, UnknownTaskError
from prompt_store.manifest import TaskManifest
from prompt_store.registry import PromptRegistry
from prompt_store.s3_storage import S3Storage
from prompt_store.store_config import S3Location
from tests.support.adapters import BASE_MODEL_ID
from tests.support.seaweedfs import CREDENTIALS
from tests.support.stored_files import BucketFiles


@pytest.fixture
def unused_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def files(seaweedfs, s3_bucket):
    return BucketFiles(seaweedfs.client(), s3_bucket, "store")


@pytest.fixture
def open_registry(seaweedfs, s3_bucket, store_config, llama_shape):
    """open_registry(): one more process's registry on the test's bucket (its own S3Storage), loaded."""

    def make(**storage_options) -> PromptRegistry:
        registry = PromptRegistry(
            llama_shape, store_config, BASE_MODEL_ID, seaweedfs.storage(s3_bucket, **storage_options)
        )
        registry.load()
        return registry

    return make


def _upload(registry, task, adapter):
    return registry.upload(task, adapter.config_bytes, adapter.model_bytes)


def _catalogue(registry) -> dict[str, list[int]]:
    return {info.task: [v.version for v in info.versions] for info in registry.list_tasks()}


# ---- two writers on one bucket --------------------------------------------------------------------------------
def test_two_writers_creating_one_task_both_succeed(open_registry, adapters, second_adapters, files):
    first, second = open_registry(), open_registry()
    one, two = adapters["llama/prefix"], second_adapters["llama/prefix"]
    assert _upload(first, "t", one).version == 1
    result = _upload(second, "t", two)  # numbered 1 too: refused by the version objects, re-read, renumbered
    assert (result.version, result.created) == (2, False)
    assert files.names("t") == {"manifest.json", "v1", "v2"}
    assert files.read("tasks/t/v1/adapter_model.safetensors") == one.model_bytes
    assert files.read("tasks/t/v2/adapter_model.safetensors") == two.model_bytes
    restarted = open_registry()
    assert _catalogue(restarted) == {"t": [1, 2]} and restarted.load() == []


def test_a_manifest_is_created_once(seaweedfs, s3_bucket, open_registry, adapters, files):
    """Distinct version numbers: both writers' version objects go in, but only one manifest can be created."""
    adapter = adapters["llama/prefix"]
    _upload(open_registry(), "t", adapter)
    manifest = files.read("tasks/t/manifest.json")
    record = replace(TaskManifest.from_json(manifest).active, version=2)
    other = seaweedfs.storage(s3_bucket)  # has not scanned: it believes the task is new
    with pytest.raises(StorageConflictError):
        other.create_task(TaskManifest("t", 2, (record,)), adapter.config_bytes, adapter.model_bytes)
    assert files.read("tasks/t/manifest.json") == manifest
    assert files.names("t") == {"manifest.json", "v1"}  # the loser removed the version objects it wrote


def test_a_change_with_a_stale_etag_is_redone_on_the_fresh_manifest(open_registry, adapters, second_adapters, files):
    first = open_registry()
    _upload(first, "t", adapters["llama/prefix"])
    _upload(first, "t", second_adapters["llama/prefix"])
    second = open_registry()  # both have read the manifest: versions 1 and 2, 2 active
    first.activate("t", 1)  # first's commit moves the ETag on
    assert second.activate("t", 2).active_version == 2  # refused, re-read, done again: 2 is still kept
    assert first.refresh() == 1 and first.get_task("t").active_version == 2

    _upload(first, "t", adapters["llama/prefix"])
    _upload(first, "t", adapters["llama/prefix"])  # versions_kept=2: version 1 is pruned
    with pytest.raises(UnknownTaskError, match="no version 1"):
        second.activate("t", 1)  # against the fresh manifest: the version it named is gone
    assert _catalogue(second) == {"t": [2, 3, 4]}

    first.activate("t", 3)
    second.delete("t")  # stale again: refused, re-read, deleted
    assert files.names("t") == set()
    assert first.refresh() == 1 and not first.has_task("t")
    assert _upload(first, "t", adapters["llama/prefix"]).version == 5  # the numbering continues


def test_version_marks_of_two_writers_are_merged(open_registry, adapters, files):
    first, second = open_registry(), open_registry()
    _upload(first, "a", adapters["llama/prefix"])
    _upload(first, "b", adapters["llama/prefix"])
    second.load()
    first.delete("a")  # writes the marks object; second's ETag of it is now stale
    second.delete("b")  # conflicts once, re-reads, merges and writes both marks
    assert json.loads(files.read("version_marks.json"))["highest_versions"] == {"a": 1, "b": 1}
    assert _upload(open_registry(), "a", adapters["llama/prefix"]).version == 2


def test_a_document_changed_elsewhere_is_not_overwritten(seaweedfs, s3_bucket, files):
    first, second = seaweedfs.storage(s3_bucket), seaweedfs.storage(s3_bucket)
    assert first.read_document(TENANTS_DOCUMENT) is None and second.read_document(TENANTS_DOCUMENT) is None
    first.write_document(TENANTS_DOCUMENT, b'{"format": 1, "tenants": [], "keys": []}')
    first.write_document(TENANTS_DOCUMENT, b'{"format": 1, "tenants": [], "keys": [] }')  # its own ETag: fine
    with pytest.raises(StorageConflictError):
        second.write_document(TENANTS_DOCUMENT, b"{}")
    assert files.read(TENANTS_DOCUMENT) == b'{"format": 1, "tenants": [], "keys": [] }'


def test_audit_entries_of_every_writer_are_kept_beside_the_tasks_and_change_nothing_replicas_read(
    seaweedfs, s3_bucket, open_registry, adapters
):
    first, second = open_registry(), open_registry()
    _upload(first, "audited", adapters["llama/prompt_tuning_random"])
    second.refresh()
    for registry, n in [(first, 0), (second, 1), (first, 2)]:
        registry.append_audit(json.dumps({"action": "prompt.upload", "n": n}).encode() + b"\n")
    listed = seaweedfs.client().list_objects_v2(Bucket=s3_bucket, Prefix="store/audit/")["Contents"]
    keys = [entry["Key"] for entry in listed]
    assert keys == sorted(keys) and len(keys) == 3  # time-ordered names, one object each, nobody's lost
    bodies = [seaweedfs.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read() for key in keys]
    assert [json.loads(body)["n"] for body in bodies] == [0, 1, 2]
    scanned = seaweedfs.storage(s3_bucket).scan()
    assert not scanned.problems and not scanned.leftovers and set(scanned.manifests) == {"audited"}
    second.refresh()  # audit entries are no change a replica must apply
    assert not second._storage.changes().tasks and not second._storage.changes().documents


# ---- interrupted writes and damage ------------------------------------------------------------------------------
def test_leftovers_of_writes_that_stopped_before_the_manifest(open_registry, adapters, files):
    adapter = adapters["llama/prompt_tuning_random"]
    _upload(open_registry(), "task", adapter)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        files.write(f"tasks/task/v7/{name}", files.read(f"tasks/task/v1/{name}"))  # a new version, never committed
        files.write(f"tasks/unborn/v1/{name}", files.read(f"tasks/task/v1/{name}"))  # a create, never committed

    young = open_registry(leftover_min_age_s=3600)  # they may be another process's writes in flight: kept
    assert young.load() == [] and _catalogue(young) == {"task": [1]}
    assert files.names("task") == {"manifest.json", "v1", "v7"} and files.names("unborn") == {"v1"}
    assert _upload(young, "task", adapter).version == 8  # never a number another writer may be using

    registry = open_registry()  # old enough (the tests' storage: any age): removed
    assert registry.load() == [] and _catalogue(registry) == {"task": [1, 8]}
    assert files.names("task") == {"manifest.json", "v1", "v8"} and files.names("unborn") == set()


def test_damaged_objects_are_skipped_and_reported(open_registry, adapters, second_adapters, files):
    registry = open_registry()
    one, two = adapters["llama/prefix"], second_adapters["llama/prefix"]
    for task in ("garbled", "no-active", "old-truncated", "renamed", "intact"):
        _upload(registry, task, one)
        _upload(registry, task, two)
    files.write("tasks/garbled/manifest.json", b'{"format": 1, "task": "garb')
    files.remove("tasks/no-active/v2/adapter_model.safetensors")
    model = "tasks/old-truncated/v1/adapter_model.safetensors"
    files.write(model, files.read(model)[:100])
    manifest = json.loads(files.read("tasks/renamed/manifest.json"))
    files.write("tasks/renamed/manifest.json", json.dumps(manifest | {"task": "intact"}).encode())
    files.write("tasks/bad name/manifest.json", b"{}")

    restarted = open_registry()
    problems = restarted.load()
    assert _catalogue(restarted) == {"intact": [1, 2], "old-truncated": [2]}
    needles = ("'garbled'", "'no-active': active version 2", "'old-truncated': version 1", "'renamed'", "'bad name'")
    for needle in needles:
        assert sum(needle in problem for problem in problems) == 1, (needle, problems)
    assert len(problems) == len(needles) == restarted.stats().num_damaged_entries
    assert files.names("garbled") == {"manifest.json", "v1", "v2"}  # left for a human, as on disk
    assert _upload(restarted, "garbled", one).version == 3  # replaces it, numbered above what it held


# ---- errors -------------------------------------------------------------------------------------------------
def test_an_unreachable_or_missing_store_is_a_storage_error(seaweedfs, unused_tcp_port, monkeypatch, tmp_path):
    for name in (*CREDENTIALS, "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(name, str(tmp_path / "none"))  # nothing from this machine's ~/.aws
    with pytest.raises(
        StorageError, match="cannot open the prompt store s3://promptswap-x: Unable to locate credentials"
    ):
        S3Storage(S3Location("promptswap-x", "", seaweedfs.endpoint_url))
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StorageError, match=r"cannot open the prompt store s3://promptswap-nowhere/p: .*127\.0\.0\.1"):
        S3Storage(S3Location("promptswap-nowhere", "p", f"http://127.0.0.1:{unused_tcp_port}"))
    with pytest.raises(StorageError, match="cannot open the prompt store s3://promptswap-no-such-bucket"):
        S3Storage(S3Location("promptswap-no-such-bucket", "", seaweedfs.endpoint_url), client=seaweedfs.client())
