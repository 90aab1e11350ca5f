"""PromptRegistry: versions, pins, the host tier, delete/prune/activate, names, stats; on a local directory, on S3
(a real SeaweedFS) and in memory."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from prompt_store.errors import (
    InvalidPromptError,
    InvalidSubtaskError,
    InvalidTaskNameError,
    StorageError,
    UnknownTaskError,
)
from prompt_store.peft_format import read_peft_files
from prompt_store.spec import PromptKind
from server.config import StoreConfig
from tests.support.adapters import BASE_MODEL_ID
from tests.support.seaweedfs import on_both_backends


def _expected(adapter):
    return read_peft_files(adapter.config_bytes, adapter.model_bytes, adapter.shape, StoreConfig()).tensor


def _upload(registry, task, adapter):
    return registry.upload(task, adapter.config_bytes, adapter.model_bytes)


@pytest.fixture(params=["local", "s3", "in-memory"])
def registry(request, make_registry):
    if request.param == "in-memory":
        return make_registry(durable=False)
    return make_registry(backend=request.param)


def test_upload_creates_then_adds_versions(registry, adapters, second_adapters):
    first = _upload(registry, "qa", adapters["llama/prefix"])
    assert first == type(first)(
        "qa",
        1,
        True,
        "PREFIX_TUNING",
        PromptKind.PREFIX_KV,
        4,
        len(adapters["llama/prefix"].config_bytes) + len(adapters["llama/prefix"].model_bytes),
    )
    second = _upload(registry, "qa", second_adapters["llama/prefix"])
    assert (second.version, second.created) == (2, False)
    info = registry.get_task("qa")
    assert [(v.version, v.is_active) for v in info.versions] == [(1, False), (2, True)]
    assert info.active_version == 2 and info.active.peft_type == "PREFIX_TUNING" and info.active.created_at > 0


def test_pin_holds_the_active_version_until_unpinned(registry, adapters, second_adapters):
    _upload(registry, "qa", adapters["llama/prefix"])
    old_ref = registry.pin("qa")
    _upload(registry, "qa", second_adapters["llama/prefix"])
    new_ref = registry.pin("qa")
    assert (old_ref.version, new_ref.version, old_ref.key) == (1, 2, ("qa", 1))
    assert torch.equal(registry.spec(old_ref).tensor, _expected(adapters["llama/prefix"]))
    assert torch.equal(registry.spec(new_ref).tensor, _expected(second_adapters["llama/prefix"]))
    assert registry.stats().num_pinned_versions == 2
    registry.unpin(old_ref)
    registry.unpin(new_ref)
    assert registry.stats().num_pinned_versions == 0
    with pytest.raises(ValueError, match="not pinned"):
        registry.unpin(new_ref)


def test_unknown_task(registry):
    for task in ("nope", BASE_MODEL_ID):
        with pytest.raises(UnknownTaskError, match="unknown task"):
            registry.pin(task)
    with pytest.raises(UnknownTaskError):
        registry.get_task("nope")


def test_multitask_subtasks_are_variants(registry, adapters):
    adapter = adapters["llama/multitask"]
    _upload(registry, "mt", adapter)
    expected = _expected(adapter)
    for subtask in range(3):
        ref = registry.pin("mt", subtask)
        assert (ref.subtask, ref.num_variants) == (subtask, 3)
        assert torch.equal(registry.spec(ref).tensor[ref.subtask], expected[subtask])
        registry.unpin(ref)
    for bad in (3, -1, True, "0", None):
        with pytest.raises(InvalidSubtaskError, match="sub-tasks 0..2") as caught:
            registry.pin("mt", bad)
        assert isinstance(caught.value, InvalidPromptError)
    assert registry.stats().num_pinned_versions == 0


def test_single_prompt_has_only_subtask_zero(registry, adapters):
    _upload(registry, "pt", adapters["llama/prompt_tuning_random"])
    with pytest.raises(InvalidSubtaskError, match="sub-tasks 0..0"):
        registry.pin("pt", 1)


@on_both_backends
def test_host_tier_hits_loads_and_evictions(make_registry, store_config, adapters):
    registry = make_registry(replace(store_config, host_cache_tasks=2))
    names = ["llama/prompt_tuning_random", "llama/prefix", "llama/multitask"]
    for index, name in enumerate(names):
        _upload(registry, f"t{index}", adapters[name])  # an upload leaves its spec in the host tier
    stats = registry.stats()
    assert (stats.num_host_cached, stats.evictions) == (2, 1)
    ref = registry.pin("t0")  # evicted: read back from disk
    assert torch.equal(registry.spec(ref).tensor, _expected(adapters[names[0]]))
    assert torch.equal(registry.spec(ref).tensor, _expected(adapters[names[0]]))
    registry.unpin(ref)
    stats = registry.stats()
    assert stats.loads_by_tier == {"host": 1, "disk": 1}
    assert (stats.num_host_cached, stats.evictions) == (2, 2)


@on_both_backends
def test_pinned_versions_are_never_evicted(make_registry, store_config, adapters):
    registry = make_registry(replace(store_config, host_cache_tasks=1))
    _upload(registry, "a", adapters["llama/prefix"])
    _upload(registry, "b", adapters["llama/multitask"])
    refs = [registry.pin("a"), registry.pin("b")]
    for ref in refs:
        registry.spec(ref)
    assert registry.stats().num_host_cached == 2  # over capacity while both are pinned
    for ref in refs:
        registry.unpin(ref)
    _upload(registry, "c", adapters["llama/prompt_tuning_random"])
    assert registry.stats().num_host_cached == 1


@on_both_backends
def test_delete_keeps_pinned_refs_working(make_registry, store_config, adapters, second_adapters, stored_files):
    registry = make_registry(replace(store_config, host_cache_tasks=1))
    _upload(registry, "gone", adapters["llama/prefix"])
    _upload(registry, "other", adapters["llama/multitask"])  # evicts "gone" from the host tier
    ref = registry.pin("gone")
    registry.delete("gone")  # reads the pinned version into memory before removing its files
    assert registry.stats().loads_by_tier["disk"] == 1
    assert stored_files.names("gone") == set()
    with pytest.raises(UnknownTaskError):
        registry.pin("gone")
    with pytest.raises(UnknownTaskError):
        registry.delete("gone")
    assert torch.equal(registry.spec(ref).tensor, _expected(adapters["llama/prefix"]))
    recreated = _upload(registry, "gone", second_adapters["llama/prefix"])
    assert recreated.created and recreated.version == 2  # never the number a live ref still holds
    assert torch.equal(registry.spec(ref).tensor, _expected(adapters["llama/prefix"]))
    cached = registry.stats().num_host_cached
    registry.unpin(ref)
    assert registry.stats().num_host_cached == cached - 1
    assert [info.task for info in registry.list_tasks()] == ["gone", "other"]


@on_both_backends
def test_prune_keeps_versions_kept_and_pinned(make_registry, store_config, adapters, second_adapters, stored_files):
    registry = make_registry(replace(store_config, versions_kept=1))
    one, two = adapters["llama/prefix"], second_adapters["llama/prefix"]
    _upload(registry, "t", one)
    pinned = registry.pin("t")
    for adapter in (two, one, two):
        _upload(registry, "t", adapter)
    assert [v.version for v in registry.get_task("t").versions] == [1, 3, 4]
    assert torch.equal(registry.spec(pinned).tensor, _expected(one))
    registry.unpin(pinned)
    _upload(registry, "t", one)
    assert [v.version for v in registry.get_task("t").versions] == [4, 5]
    assert stored_files.names("t") == {"manifest.json", "v4", "v5"}


@on_both_backends
def test_activate_rolls_back_durably(make_registry, adapters, second_adapters):
    registry = make_registry()
    _upload(registry, "t", adapters["llama/multitask"])
    _upload(registry, "t", second_adapters["llama/multitask"])
    info = registry.activate("t", 1)
    assert info.active_version == 1
    ref = registry.pin("t")
    assert torch.equal(registry.spec(ref).tensor, _expected(adapters["llama/multitask"]))
    assert make_registry().get_task("t").active_version == 1
    for bad in (3, 0, True, "1"):
        with pytest.raises(UnknownTaskError, match="kept versions: \\[1, 2\\]"):
            registry.activate("t", bad)
    with pytest.raises(UnknownTaskError):
        registry.activate("nope", 1)


@pytest.mark.parametrize(
    "name", ["", "-a", ".hidden", "..", "a/b", "a\\b", "a b", "x" * 65, "ok\n", "é", BASE_MODEL_ID]
)
def test_bad_task_names_store_nothing(registry, adapters, name):
    with pytest.raises(InvalidTaskNameError):
        _upload(registry, name, adapters["llama/prefix"])
    assert registry.list_tasks() == [] and registry.stats().uploads_rejected == 1


@on_both_backends
def test_lowering_limits_does_not_orphan_stored_versions(make_registry, store_config, adapters):
    _upload(make_registry(), "t", adapters["llama/prefix"])
    strict = make_registry(replace(store_config, max_virtual_tokens=2, max_file_bytes=100))
    ref = strict.pin("t")
    assert torch.equal(strict.spec(ref).tensor, _expected(adapters["llama/prefix"]))


@on_both_backends
def test_store_write_failure_changes_nothing(make_registry, adapters, monkeypatch):
    registry = make_registry()
    _upload(registry, "t", adapters["llama/prefix"])

    def fail(*args, **kwargs):
        raise StorageError("disk full")

    monkeypatch.setattr(registry._storage, "commit", fail)
    before = registry.list_tasks()
    with pytest.raises(StorageError):
        _upload(registry, "t", adapters["llama/multitask"])
    assert registry.list_tasks() == before and registry.stats().uploads_failed == 1
    monkeypatch.undo()
    assert make_registry().list_tasks() == before


def test_stats_count_uploads(registry, adapters):
    _upload(registry, "a", adapters["llama/prefix"])
    with pytest.raises(InvalidPromptError):
        registry.upload("b", b"{}", b"")
    stats = registry.stats()
    assert (stats.num_tasks, stats.uploads_accepted, stats.uploads_rejected, stats.uploads_failed) == (1, 1, 1, 0)


def test_in_memory_registry_writes_nothing(make_registry, store_config, adapters):
    registry = make_registry(durable=False)
    _upload(registry, "t", adapters["llama/prefix"])
    assert registry.load() == []
    assert not store_config.directory.exists()


@on_both_backends
def test_pin_of_a_kept_version_holds_that_version(make_registry, store_config, adapters, second_adapters):
    registry = make_registry()
    one, two = adapters["llama/prefix"], second_adapters["llama/prefix"]
    _upload(registry, "t", one)
    _upload(registry, "t", two)
    old, active = registry.pin("t", version=1), registry.pin("t", version=2)
    assert (old.version, active.version, registry.pin("t").version) == (1, 2, 2)
    assert torch.equal(registry.spec(old).tensor, _expected(one))
    assert torch.equal(registry.spec(active).tensor, _expected(two))


def test_pin_of_a_pruned_or_unknown_version_is_not_found(make_registry, store_config, adapters, second_adapters):
    registry = make_registry(replace(store_config, versions_kept=1))
    for adapter in (adapters["llama/prefix"], second_adapters["llama/prefix"], adapters["llama/prefix"]):
        _upload(registry, "t", adapter)  # version 1 is pruned
    for version in (1, 4, 0, True):
        with pytest.raises(UnknownTaskError, match=f"task 't' has no version {version!r}; kept versions: \\[2, 3\\]"):
            registry.pin("t", version=version)
    assert registry.stats().num_pinned_versions == 0


@on_both_backends
def test_a_pinned_kept_version_is_not_pruned(make_registry, store_config, adapters, second_adapters):
    registry = make_registry(replace(store_config, versions_kept=1))
    one, two = adapters["llama/prefix"], second_adapters["llama/prefix"]
    _upload(registry, "t", one)
    _upload(registry, "t", two)
    pinned = registry.pin("t", version=1)
    _upload(registry, "t", two)  # would prune version 1, but it is pinned
    assert [v.version for v in registry.get_task("t").versions] == [1, 2, 3]
    assert torch.equal(registry.spec(pinned).tensor, _expected(one))


def test_pin_checks_the_subtask_against_the_pinned_version(make_registry, adapters):
    registry = make_registry()
    _upload(registry, "t", adapters["llama/multitask"])
    _upload(registry, "t", adapters["llama/prefix"])
    assert registry.pin("t", 2, version=1).subtask == 2  # the multitask version has sub-tasks 0..2
    with pytest.raises(InvalidSubtaskError, match="task 't' version 2 has sub-tasks 0..0"):
        registry.pin("t", 2)
