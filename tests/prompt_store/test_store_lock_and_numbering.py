"""One process per store directory; version numbers never repeat, across restarts too; nothing unpickles uploads."""

from __future__ import annotations

import ast
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prompt_store.errors import InvalidPromptError
from prompt_store.peft_format import read_peft_files
from prompt_store.safetensors_reader import PICKLE_MESSAGE
from prompt_store.storage import PromptStorage
from prompt_store.store_lock import LOCK_FILE, StoreLock, StoreLockedError
from server.config import StoreConfig
from tests.support.tiny_models import TINY_SHAPES

ROOT = Path(__file__).resolve().parents[2]
TAKE_LOCK = (
    "import sys; from prompt_store.store_lock import StoreLock; StoreLock(sys.argv[1]); print('locked', flush=True)"
)
HOLD_LOCK = TAKE_LOCK + "; import time; time.sleep(120)"


def _upload(registry, task, adapter):
    return registry.upload(task, adapter.config_bytes, adapter.model_bytes)


# ---- version numbers ---------------------------------------------------------------------------------------------
def test_versions_continue_after_delete_restart_and_recreate(adapters, make_registry, store_config):
    one, two = adapters["llama/prefix"], adapters["llama/prompt_tuning_random"]
    registry = make_registry()
    assert [_upload(registry, "task", adapter).version for adapter in (one, two, one)] == [1, 2, 3]
    registry.delete("task")
    assert _upload(registry, "task", two).version == 4  # within the process
    registry.delete("task")

    restarted = make_registry()
    assert not restarted.has_task("task")
    assert _upload(restarted, "task", one).version == 5  # and across a restart
    marks = json.loads((store_config.directory / "version_marks.json").read_bytes())
    assert marks == {"format": 1, "highest_versions": {"task": 4}}


def test_in_memory_registry_numbers_never_repeat_either(adapters, make_registry):
    registry = make_registry(durable=False)
    _upload(registry, "task", adapters["llama/prefix"])
    registry.delete("task")
    assert _upload(registry, "task", adapters["llama/prefix"]).version == 2


def test_versions_of_skipped_entries_and_dropped_versions_are_not_reused(adapters, make_registry, store_config):
    one = adapters["llama/prompt_tuning_random"]
    registry = make_registry()
    for _ in range(3):
        _upload(registry, "garbled", one)
        _upload(registry, "truncated-latest", one)
    registry.activate("truncated-latest", 1)
    tasks = store_config.directory / "tasks"
    (tasks / "garbled" / "manifest.json").write_bytes(b"{")
    (tasks / "truncated-latest" / "v3" / "adapter_model.safetensors").write_bytes(b"")

    restarted = make_registry()
    assert [v.version for v in restarted.get_task("truncated-latest").versions] == [1, 2]
    assert _upload(restarted, "truncated-latest", one).version == 4
    assert _upload(restarted, "garbled", one).version == 4  # replaces the skipped directory
    assert restarted.stats().num_damaged_entries == 2


def test_damaged_marks_file_is_reported_not_fatal(adapters, make_registry, store_config):
    registry = make_registry()
    _upload(registry, "kept", adapters["llama/prefix"])
    (store_config.directory / "version_marks.json").write_text('{"format": 1, "highest_versions": {"../x": 1}}')
    restarted = make_registry()
    problems = restarted.load()
    assert any("version_marks.json is damaged" in problem for problem in problems), problems
    assert restarted.has_task("kept")
    _upload(restarted, "gone", adapters["llama/prefix"])
    restarted.delete("gone")  # rewrites the file whole
    assert json.loads((store_config.directory / "version_marks.json").read_bytes())["highest_versions"] == {"gone": 1}


# ---- one process per store ---------------------------------------------------------------------------------------
def _hold_lock_in_another_process(directory: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(directory)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_process_cannot_open_the_store_until_the_first_dies(tmp_path):
    directory = tmp_path / "store"
    holder = _hold_lock_in_another_process(directory)
    try:
        with pytest.raises(StoreLockedError, match=rf"in use by another promptswap process \(pid {holder.pid}\)"):
            PromptStorage(directory)
        assert not (directory / "tasks").exists()  # refused before touching anything
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel drops the lock with the process
        holder.wait()
    storage = PromptStorage(directory)  # the stale lock file does not block
    assert (directory / LOCK_FILE).read_text().strip() == str(os.getpid())
    storage.close()


def test_stores_in_one_process_share_the_lock_until_the_last_closes(tmp_path):
    directory = tmp_path / "store"
    first, second = PromptStorage(directory), PromptStorage(directory)  # a restart simulated in one process
    first.close()
    first.close()  # idempotent
    probe = [sys.executable, "-c", TAKE_LOCK, str(directory)]
    refused = subprocess.run(probe, check=False, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode != 0 and "StoreLockedError" in refused.stderr  # still held by `second`
    second.close()
    with StoreLock(directory):
        pass
    taken = subprocess.run(probe, check=False, cwd=ROOT, capture_output=True, text=True)
    assert taken.returncode == 0, taken.stderr


# ---- nothing unpickles user data ---------------------------------------------------------------------------------
UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "copyreg"}


def _unpickling_uses(path: Path) -> list[str]:
    """Imports of pickle-like modules and calls of torch.load / numpy.load in one source file."""
    uses = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            uses += [alias.name for alias in node.names if alias.name.split(".")[0] in UNPICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in UNPICKLING_MODULES or (
                node.module in ("torch", "numpy") and any(alias.name == "load" for alias in node.names)
            ):
                uses.append(node.module)
        elif _is_module_load_call(node):
            uses.append(f"{node.func.value.id}.load")
    return [f"{path.relative_to(ROOT)}: {use}" for use in uses]


def _is_module_load_call(node: ast.AST) -> bool:
    """`torch.load(...)`, `np.load(...)`, `numpy.load(...)`."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in ("torch", "np", "numpy")
    )


def test_no_server_code_can_unpickle():
    sources = [*ROOT.glob("prompt_store/**/*.py"), *ROOT.glob("server/**/*.py")]
    assert len(sources) > 20
    assert [use for path in sources for use in _unpickling_uses(path)] == []


class _Tripwire:
    """Unpickling this writes nothing and returns a marker, but only if something unpickles it."""

    def __reduce__(self):
        return (print, ("UNPICKLED",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_readers_refuse_pickles_without_calling_the_unpickler(adapters, monkeypatch, tmp_path, protocol):
    def forbidden(*args, **kwargs):
        raise AssertionError("user data reached an unpickler")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    adapter = adapters["llama/prompt_tuning_random"]
    payloads = [pickle.dumps({"prompt_embeddings": _Tripwire()}, protocol=protocol)]
    if protocol == pickle.DEFAULT_PROTOCOL:
        torch.save({"prompt_embeddings": torch.zeros(4, 64)}, tmp_path / "saved.pt")
        payloads.append((tmp_path / "saved.pt").read_bytes())
    for payload in payloads:
        with pytest.raises(InvalidPromptError) as refused:
            read_peft_files(adapter.config_bytes, payload, TINY_SHAPES["llama"], StoreConfig())
        assert str(refused.value) == PICKLE_MESSAGE or "adapter_model.safetensors" in str(refused.value)
