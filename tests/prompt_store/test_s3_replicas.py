"""Replicas on one bucket (a real SeaweedFS) stay consistent: what one registry changes, another applies at its
next `refresh()`; concurrent uploads of one task from both all succeed with distinct versions; pins survive."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from prompt_store.errors import UnknownTaskError
from prompt_store.registry import PromptRegistry
from prompt_store.storage import StoredTask
from prompt_store.store_poller import StorePoller
from tests.support.adapters import BASE_MODEL_ID

NUM_THREADS_PER_REPLICA = 3
UPLOADS_PER_THREAD = 3


@pytest.fixture
def open_registry(seaweedfs, s3_bucket, store_config, llama_shape):
    """open_registry(): one more replica's registry on the test's bucket (its own S3Storage), loaded."""
    registries = []

    def make() -> PromptRegistry:
        registry = PromptRegistry(llama_shape, store_config, BASE_MODEL_ID, seaweedfs.storage(s3_bucket))
        registry.load()
        registries.append(registry)
        return registry

    yield make
    for registry in registries:
        registry.close()


def _upload(registry, task, adapter):
    return registry.upload(task, adapter.config_bytes, adapter.model_bytes)


def _catalogue(registry) -> dict[str, tuple[int, list[int]]]:
    return {info.task: (info.active_version, [v.version for v in info.versions]) for info in registry.list_tasks()}


def test_uploads_activations_and_deletions_propagate(open_registry, adapters, second_adapters):
    a, b = open_registry(), open_registry()
    one, two = adapters["llama/prompt_tuning_random"], second_adapters["llama/prompt_tuning_random"]
    assert b.refresh() == 0  # nothing changed: one listing, nothing read
    _upload(a, "t", one)
    assert b.refresh() == 1 and _catalogue(b) == {"t": (1, [1])}
    ref = b.pin("t")
    assert torch.equal(b.spec(ref).tensor, a.spec(a.pin("t")).tensor)  # read from the bucket by b
    b.unpin(ref)

    _upload(a, "t", two)
    assert b.refresh() == 1 and _catalogue(b) == {"t": (2, [1, 2])}
    a.activate("t", 1)
    assert b.refresh() == 1 and b.pin("t").version == 1
    a.delete("t")
    assert b.refresh() == 1 and not b.has_task("t") and b.list_tasks() == []
    assert _upload(b, "t", one).version == 3  # b continues the numbering a's delete recorded
    assert a.refresh() == 1 and _catalogue(a) == {"t": (3, [3])}
    assert a.refresh() == 0 and b.refresh() == 0


def test_a_version_pinned_on_one_replica_survives_a_delete_on_the_other(open_registry, adapters):
    a, b = open_registry(), open_registry()
    _upload(a, "t", adapters["llama/prefix"])
    b.refresh()
    ref = b.pin("t")  # a request admitted on b
    spec = b.spec(ref)
    a.delete("t")  # its objects are gone from the bucket
    b.refresh()
    with pytest.raises(UnknownTaskError):
        b.pin("t")  # new requests: 404
    assert b.spec(ref) is spec  # the admitted one keeps its version
    b.unpin(ref)
    with pytest.raises(UnknownTaskError):
        b.spec(ref)


def test_a_version_pruned_elsewhere_stays_served_to_its_pins(open_registry, adapters):
    a, b = open_registry(), open_registry()
    adapter = adapters["llama/prefix"]
    _upload(a, "t", adapter)
    b.refresh()
    ref = b.pin("t")
    spec = b.spec(ref)
    for _ in range(3):  # versions_kept=2: version 1 is pruned by a
        _upload(a, "t", adapter)
    b.refresh()
    assert _catalogue(b) == {"t": (4, [2, 3, 4])}
    assert b.spec(ref) is spec
    b.unpin(ref)


def test_tenants_and_keys_propagate_and_concurrent_changes_merge(open_registry):
    a, b = open_registry(), open_registry()
    a.tenants.create_tenant("acme")
    b.tenants.create_tenant("globex")  # b's copy is stale: refused, re-read, created beside acme
    key = b.tenants.create_key("acme", ["generate"])
    a.refresh()
    assert [t.name for t in a.tenants.list_tenants()] == ["acme", "globex"]
    assert a.tenants.authenticate(key.secret) == key.info
    a.tenants.revoke_key("acme", key.info.id)
    b.refresh()
    assert b.tenants.authenticate(key.secret) is None


def test_concurrent_uploads_on_two_replicas_all_succeed(open_registry, store_config, adapters, second_adapters):
    replicas = [open_registry(), open_registry()]
    choices = [adapters["llama/prefix"], second_adapters["llama/prefix"]]
    versions: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(replicas) * NUM_THREADS_PER_REPLICA)

    def upload_some(registry: PromptRegistry, index: int) -> None:
        start.wait()
        for attempt in range(UPLOADS_PER_THREAD):
            try:
                versions.append(_upload(registry, "t", choices[(index + attempt) % 2]).version)
            except BaseException as exc:
                errors.append(exc)

    threads = [
        threading.Thread(target=upload_some, args=(registry, index))
        for registry in replicas
        for index in range(NUM_THREADS_PER_REPLICA)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    num_uploads = len(replicas) * NUM_THREADS_PER_REPLICA * UPLOADS_PER_THREAD
    assert len(versions) == len(set(versions)) == num_uploads
    for registry in replicas:
        registry.refresh()
    catalogue = _catalogue(open_registry())  # the bucket as a new replica reads it
    active, kept = catalogue["t"]
    newest = sorted(versions)[-(store_config.versions_kept + 1) :]
    assert active == max(versions) and set(newest) <= set(kept) <= set(versions)
    assert [_catalogue(registry) for registry in replicas] == [catalogue, catalogue]  # both converged


def test_the_poller_applies_changes_and_outlives_failures(open_registry, adapters, monkeypatch):
    a, b = open_registry(), open_registry()
    failures = iter([OSError("the store is unreachable")])
    refresh = b.refresh

    def flaky_refresh() -> int:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return refresh()

    monkeypatch.setattr(b, "refresh", flaky_refresh)
    poller = StorePoller(b, interval_s=0.05)
    poller.start()
    try:
        _upload(a, "t", adapters["llama/prefix"])
        deadline = time.monotonic() + 5
        while not b.has_task("t"):
            assert time.monotonic() < deadline, "the poller did not apply the upload"
            time.sleep(0.02)
    finally:
        poller.stop()


def test_single_writer_stores_report_no_changes(make_registry, make_storage, adapters):
    registry = make_registry()
    _upload(registry, "t", adapters["llama/prefix"])
    _upload(registry, "t", adapters["llama/prefix"])
    assert not registry.is_shared and registry.refresh() == 0
    storage = make_storage()  # the same directory (one process may open it more than once)
    stored = storage.reload_task("t")  # what is on disk, which is what the registry holds
    assert (stored.manifest.active_version, stored.highest_version, stored.problem) == (2, 2, None)
    assert storage.reload_task("none") == StoredTask(None, 0)
    in_memory = make_registry(durable=False)
    assert not in_memory.is_shared and in_memory.refresh() == 0
