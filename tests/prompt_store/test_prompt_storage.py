"""The durable store: layout, restart, crash at every step, damaged entries, and a 10,000-task scan. The tests
marked `on_both_backends` also run on S3 (tests/prompt_store/test_s3_storage.py has what is S3's own)."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace

import pytest
import torch

from prompt_store.errors import StorageError, UnknownTaskError
from prompt_store.peft_format import read_peft_files
from prompt_store.registry import PromptRegistry
from prompt_store.s3_storage import VERSION_FILES
from prompt_store.storage import PromptStorage
from server.config import StoreConfig
from tests.support.adapters import BASE_MODEL_ID
from tests.support.seaweedfs import on_both_backends
from tests.support.stored_files import BucketFiles
from tests.support.tiny_models import TINY_SHAPES


class Crash(BaseException):
    """A power cut: not an OSError, so no cleanup handler of ours runs."""


def _expected(adapter):
    return read_peft_files(adapter.config_bytes, adapter.model_bytes, adapter.shape, StoreConfig()).tensor


def _served_tensor(registry, task):
    ref = registry.pin(task)
    try:
        return ref.version, registry.spec(ref).tensor
    finally:
        registry.unpin(ref)


def _assert_no_leftovers(directory):
    assert {p.name for p in directory.iterdir()} <= {
        "tasks",
        "staging",
        "trash",
        "promptswap.lock",
        "version_marks.json",
    }
    assert list((directory / "staging").iterdir()) == []
    assert list((directory / "trash").iterdir()) == []
    for task_dir in (directory / "tasks").iterdir():
        manifest = json.loads((task_dir / "manifest.json").read_bytes())
        committed = {f"v{record['version']}" for record in manifest["versions"]}
        assert {p.name for p in task_dir.iterdir()} == committed | {"manifest.json"}


@on_both_backends
def test_layout_holds_the_uploaded_bytes(adapters, make_registry, stored_files):
    adapter = adapters["llama/prefix"]
    make_registry().upload("summarize", adapter.config_bytes, adapter.model_bytes)
    assert stored_files.names("summarize") == {"manifest.json", "v1"}
    assert stored_files.read("tasks/summarize/v1/adapter_config.json") == adapter.config_bytes
    assert stored_files.read("tasks/summarize/v1/adapter_model.safetensors") == adapter.model_bytes
    assert json.loads(stored_files.read("tasks/summarize/v1/meta.json"))["peft_type"] == "PREFIX_TUNING"
    assert json.loads(stored_files.read("tasks/summarize/manifest.json"))["active_version"] == 1


@on_both_backends
def test_restart_serves_everything(adapters, second_adapters, make_registry):
    first = make_registry()
    for kind in ("prompt_tuning_random", "p_tuning_lstm", "prefix_projection", "multitask"):
        first.upload(
            kind.replace("_", "-"), adapters[f"llama/{kind}"].config_bytes, adapters[f"llama/{kind}"].model_bytes
        )
    second = second_adapters["llama/prefix"]
    first.upload("two-versions", adapters["llama/prefix"].config_bytes, adapters["llama/prefix"].model_bytes)
    first.upload("two-versions", second.config_bytes, second.model_bytes)
    first.upload("rolled-back", adapters["llama/prefix"].config_bytes, adapters["llama/prefix"].model_bytes)
    first.upload("rolled-back", second.config_bytes, second.model_bytes)
    first.activate("rolled-back", 1)

    restarted = make_registry()
    assert restarted.list_tasks() == first.list_tasks()
    assert restarted.stats().num_host_cached == 0  # load() reads metadata only
    for info in restarted.list_tasks():
        version, tensor = _served_tensor(restarted, info.task)
        assert (version, torch.equal(tensor, _served_tensor(first, info.task)[1])) == (info.active_version, True)
    assert _served_tensor(restarted, "two-versions")[0] == 2
    assert torch.equal(_served_tensor(restarted, "rolled-back")[1], _expected(adapters["llama/prefix"]))
    assert restarted.stats().loads_by_tier["disk"] == len(restarted.list_tasks())


# ---- crash at every step ---------------------------------------------------------------------------------------
def _arm(monkeypatch, target, names, crash_at: int, after: bool, before_crash=None) -> list[int]:
    """Crash at the crash_at-th call of target.<name> for any of `names`, before it (calling before_crash(name,
    args) first) or after it returned; returns the call counter."""
    calls = [0]

    def wrap(name):
        real = getattr(target, name)

        def hooked(*args, **kwargs):
            calls[0] += 1
            if calls[0] != crash_at + 1:
                return real(*args, **kwargs)
            if after:
                real(*args, **kwargs)
            elif before_crash is not None:
                before_crash(name, args)
            raise Crash(name)

        monkeypatch.setattr(target, name, hooked)

    for name in names:
        wrap(name)
    return calls


def _arm_crash(monkeypatch, crash_at: int, after: bool) -> list[int]:
    """Crash at the crash_at-th fsync/rename/replace. A file whose fsync never finished keeps only half its bytes."""

    def truncate_unsynced(name, args):
        if name == "fsync" and os.path.isfile(f"/proc/self/fd/{args[0]}"):
            os.ftruncate(args[0], os.fstat(args[0]).st_size // 2)

    return _arm(monkeypatch, os, ("fsync", "rename", "replace"), crash_at, after, truncate_unsynced)


def _scenario(name, adapters, second_adapters):
    """(prepare(registry), act(registry), {acceptable (active version or None): expected tensor or None},
    the highest version `prepare` committed)."""
    one, two = adapters["llama/prefix"], second_adapters["llama/prefix"]

    def upload_one(r):
        return r.upload("task", one.config_bytes, one.model_bytes)

    def upload_two(r):
        return r.upload("task", two.config_bytes, two.model_bytes)

    old, new = _expected(one), _expected(two)
    return {
        "create": (lambda r: None, upload_one, {None: None, 1: old}, 0),
        "new version": (upload_one, upload_two, {1: old, 2: new}, 1),
        "new version prunes": (lambda r: (upload_one(r), upload_two(r)), upload_one, {2: new, 3: old}, 2),
        "activate": (lambda r: (upload_one(r), upload_two(r)), lambda r: r.activate("task", 1), {2: new, 1: old}, 2),
        "delete": (upload_one, lambda r: r.delete("task"), {1: old, None: None}, 1),
    }[name]


def _arm_s3_crash(monkeypatch, client, crash_at: int, after: bool) -> list[int]:
    """Crash at the crash_at-th PUT or DELETE: before it reached the server, or after it took effect (an object
    write is atomic, so nothing is half-written)."""
    return _arm(monkeypatch, client, ("put_object", "delete_object"), crash_at, after)


class _LocalPlace:
    """One crash run's store in a directory."""

    def __init__(self, directory):
        self.directory = directory

    def open(self):
        return PromptStorage(self.directory)

    def arm(self, monkeypatch, storage, crash_at: int, after: bool) -> list[int]:
        return _arm_crash(monkeypatch, crash_at, after)

    def assert_no_leftovers(self):
        _assert_no_leftovers(self.directory)


class _BucketPlace:
    """One crash run's store under its own prefix of the test's bucket."""

    def __init__(self, seaweedfs, bucket: str, prefix: str):
        self.seaweedfs, self.bucket, self.prefix = seaweedfs, bucket, prefix

    def open(self):
        return self.seaweedfs.storage(self.bucket, self.prefix)

    def arm(self, monkeypatch, storage, crash_at: int, after: bool) -> list[int]:
        return _arm_s3_crash(monkeypatch, storage._client, crash_at, after)

    def assert_no_leftovers(self):
        """Only the marks, the manifests and every object of the versions they name."""
        files = BucketFiles(self.seaweedfs.client(), self.bucket, self.prefix)
        keys = {key.removeprefix(f"{self.prefix}/") for key in files.keys("")}
        expected = keys & {"version_marks.json"}
        for manifest_key in (key for key in keys if key.endswith("/manifest.json")):
            task_root = manifest_key.removesuffix("manifest.json")
            records = json.loads(files.read(manifest_key))["versions"]
            expected |= {manifest_key} | {
                f"{task_root}v{record['version']}/{name}" for record in records for name in VERSION_FILES
            }
        assert keys == expected


def _crash_place(request, store_backend: str, tmp_path, name: str):
    if store_backend == "s3":
        return _BucketPlace(request.getfixturevalue("seaweedfs"), request.getfixturevalue("s3_bucket"), name)
    return _LocalPlace(tmp_path / name)


@pytest.mark.parametrize("scenario", ["create", "new version", "new version prunes", "activate", "delete"])
@on_both_backends
def test_crash_at_any_step_leaves_old_or_new(
    adapters, second_adapters, tmp_path, monkeypatch, scenario, store_backend, request
):
    prepare, act, acceptable, prepared_highest = _scenario(scenario, adapters, second_adapters)
    seen = set()
    for crash_at in range(100):
        for after in (False, True):
            versions_kept = 0 if scenario == "new version prunes" else 2
            place = _crash_place(request, store_backend, tmp_path, f"{crash_at}-{after}")
            config = StoreConfig(directory=tmp_path / f"{crash_at}-{after}", versions_kept=versions_kept)
            registry = PromptRegistry(TINY_SHAPES["llama"], config, BASE_MODEL_ID, place.open())
            prepare(registry)
            with monkeypatch.context() as patch:
                calls = place.arm(patch, registry._storage, crash_at, after)
                try:
                    act(registry)
                    crashed = False
                except Crash:
                    crashed = True
            seen.add(_recovered_state(place, config, acceptable, prepared_highest, adapters["llama/prefix"]))
        if not crashed:
            break
    min_steps = 3 if store_backend == "local" else 1  # an activation is one PUT of the manifest
    assert not crashed and crash_at >= min_steps and calls[0] == crash_at, "every step crashed at, then it completed"
    assert seen == set(acceptable), f"{scenario}: states reached {seen}"


def _recovered_state(place, config, acceptable, prepared_highest, adapter):
    """The active version after a restart (None: no task), checked against `acceptable`; then an upload must be
    numbered above every version committed before (a deleted task's numbers included)."""
    restarted = PromptRegistry(TINY_SHAPES["llama"], config, BASE_MODEL_ID, place.open())
    assert restarted.load() == []
    place.assert_no_leftovers()
    version = None
    if restarted.has_task("task"):
        version, tensor = _served_tensor(restarted, "task")
        assert torch.equal(tensor, acceptable[version])
    assert None in acceptable or version is not None
    highest = max([prepared_highest, *(v.version for v in _versions(restarted, "task"))])
    assert restarted.upload("task", adapter.config_bytes, adapter.model_bytes).version == highest + 1
    return version


def _versions(registry, task):
    return registry.get_task(task).versions if registry.has_task(task) else ()


# ---- damage -------------------------------------------------------------------------------------------------------
def test_damaged_entries_are_skipped_and_reported(adapters, second_adapters, make_registry, store_config):
    registry = make_registry()
    one, two = adapters["llama/prefix"], second_adapters["llama/prefix"]
    for task in ("garbled", "no-active", "old-truncated", "renamed", "no-manifest", "intact"):
        registry.upload(task, one.config_bytes, one.model_bytes)
        registry.upload(task, two.config_bytes, two.model_bytes)
    tasks = store_config.directory / "tasks"
    (tasks / "garbled" / "manifest.json").write_bytes(b'{"format": 1, "task": "garb')
    shutil.rmtree(tasks / "no-active" / "v2")
    model = tasks / "old-truncated" / "v1" / "adapter_model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    manifest = json.loads((tasks / "renamed" / "manifest.json").read_bytes())
    (tasks / "renamed" / "manifest.json").write_text(json.dumps(manifest | {"task": "intact"}))
    (tasks / "no-manifest" / "manifest.json").unlink()
    (tasks / "junk.txt").write_text("x")
    (tasks / ".hidden").mkdir()

    restarted = PromptRegistry(TINY_SHAPES["llama"], store_config, BASE_MODEL_ID, PromptStorage(store_config.directory))
    problems = restarted.load()
    assert sorted(info.task for info in restarted.list_tasks()) == ["intact", "old-truncated"]
    assert [v.version for v in restarted.get_task("old-truncated").versions] == [2]
    for needle in (
        "'garbled'",
        "'no-active'",
        "'old-truncated': version 1",
        "'renamed'",
        "'no-manifest'",
        "junk.txt",
        ".hidden",
    ):
        assert any(needle in problem for problem in problems), (needle, problems)
    assert len(problems) == 7
    assert restarted.stats().num_damaged_entries == 7


@on_both_backends
def test_checksum_mismatch_is_found_when_loaded(adapters, make_registry, stored_files):
    adapter = adapters["llama/prompt_tuning_random"]
    make_registry().upload("flipped", adapter.config_bytes, adapter.model_bytes)
    model = "tasks/flipped/v1/adapter_model.safetensors"
    data = bytearray(stored_files.read(model))
    data[-1] ^= 0xFF
    stored_files.write(model, bytes(data))
    restarted = make_registry()
    ref = restarted.pin("flipped")  # metadata is fine; the tensors are not
    with pytest.raises(StorageError, match="checksum"):
        restarted.spec(ref)


@on_both_backends
def test_tasks_that_no_longer_fit_the_model_are_skipped(adapters, make_registry):
    registry = make_registry()
    registry.upload("prefix", adapters["llama/prefix"].config_bytes, adapters["llama/prefix"].model_bytes)
    registry.upload("rows", adapters["llama/multitask"].config_bytes, adapters["llama/multitask"].model_bytes)
    deeper = replace(TINY_SHAPES["llama"], num_layers=3)
    restarted = make_registry(shape=deeper)
    assert [info.task for info in restarted.list_tasks()] == ["rows"]
    with pytest.raises(UnknownTaskError):
        restarted.pin("prefix")


@on_both_backends
def test_upload_replaces_a_skipped_task(adapters, make_registry, stored_files):
    adapter = adapters["llama/prompt_tuning_random"]
    make_registry().upload("broken", adapter.config_bytes, adapter.model_bytes)
    stored_files.write("tasks/broken/manifest.json", b"{")
    registry = make_registry()
    assert not registry.has_task("broken")
    result = registry.upload("broken", adapter.config_bytes, adapter.model_bytes)
    assert (result.created, result.version) == (True, 2)  # numbered above the damaged entry's v1
    assert make_registry().has_task("broken")


def test_leftovers_of_interrupted_writes_are_removed(adapters, make_registry, store_config):
    adapter = adapters["llama/prompt_tuning_random"]
    make_registry().upload("task", adapter.config_bytes, adapter.model_bytes)
    root = store_config.directory
    (root / "staging" / "abc").mkdir()
    (root / "staging" / "abc" / "adapter_model.safetensors").write_bytes(b"half")
    (root / "trash" / "old").mkdir()
    shutil.copytree(root / "tasks" / "task" / "v1", root / "tasks" / "task" / "v7")  # never committed
    (root / "tasks" / "task" / "manifest.json.tmp-123").write_bytes(b'{"trunc')
    registry = make_registry()
    assert registry.load() == []
    _assert_no_leftovers(root)
    assert [v.version for v in registry.get_task("task").versions] == [1]


# ---- scale ------------------------------------------------------------------------------------------------------
def test_ten_thousand_tasks_scan_without_reading_tensors(adapters, make_registry, store_config):
    adapter = adapters["llama/prompt_tuning_random"]
    make_registry().upload("template", adapter.config_bytes, adapter.model_bytes)
    tasks = store_config.directory / "tasks"
    template = (tasks / "template" / "manifest.json").read_text()
    for index in range(9_999):
        task_dir = tasks / f"task-{index:05d}"
        (task_dir / "v1").mkdir(parents=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            os.link(tasks / "template" / "v1" / name, task_dir / "v1" / name)  # fast to make, same to scan
        (task_dir / "manifest.json").write_text(template.replace('"template"', f'"task-{index:05d}"'))

    started = time.perf_counter()
    registry = PromptRegistry(TINY_SHAPES["llama"], store_config, BASE_MODEL_ID, PromptStorage(store_config.directory))
    problems = registry.load()
    elapsed = time.perf_counter() - started
    print(f"\nscan + load of 10,000 tasks: {elapsed:.2f} s")
    assert problems == []
    assert registry.stats().num_tasks == 10_000 and registry.stats().num_host_cached == 0
    assert torch.equal(_served_tensor(registry, "task-09998")[1], _expected(adapter))
