"""Ownership in the registry: what each caller sees, pins, changes and uploads, and the tenant storage quotas.
One place decides it (prompt_store/access.py); these tests hold every registry entry point to it."""

from __future__ import annotations

import threading

import pytest

from prompt_store.access import ANONYMOUS, OPERATOR, Caller
from prompt_store.errors import ConflictError, QuotaExceededError, UnknownTaskError
from prompt_store.model_shape import ModelShape
from prompt_store.registry import PromptRegistry
from prompt_store.storage import PromptStorage
from prompt_store.tenants import TenantQuota
from server.config import StoreConfig
from tests.support.adapters import adapter_files

SHAPE = ModelShape(hidden_size=32, num_layers=2, num_kv_heads=2, head_dim=8, vocab_size=100)
ACME, GLOBEX = Caller(tenant="acme"), Caller(tenant="globex")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    return [adapter_files(root / f"a{seed}", SHAPE, "PROMPT_TUNING", 4, seed) for seed in range(3)]


@pytest.fixture
def registry(files):
    registry = PromptRegistry(SHAPE, StoreConfig(), "base", None)
    registry.load()
    registry.tenants.create_tenant("acme")
    registry.tenants.create_tenant("globex")
    registry.upload("acme-task", *files[0], caller=ACME)
    registry.upload("shared", *files[1])  # the operator's: shared
    return registry


def test_owners_are_recorded(registry):
    assert registry.get_task("acme-task").owner == "acme"
    assert registry.get_task("shared").owner is None


@pytest.mark.parametrize("caller", [GLOBEX, ANONYMOUS])
def test_a_task_the_caller_may_not_see_is_an_unknown_task(registry, caller):
    def message(call, *args):
        with pytest.raises(UnknownTaskError) as error:
            call(*args)
        return str(error.value)

    for call, args in [
        (registry.pin, ("{}", 0, caller)),
        (registry.pin, ("{}", 0, caller, 1)),  # a kept version
        (registry.pin, ("{}", 0, caller, 7)),  # a version that never existed: no list of kept ones either
        (registry.get_task, ("{}", caller)),
        (registry.delete, ("{}", caller)),
        (registry.activate, ("{}", 1, caller)),
    ]:
        hidden = message(call, *(arg.format("acme-task") if isinstance(arg, str) else arg for arg in args))
        unknown = message(call, *(arg.format("nope") if isinstance(arg, str) else arg for arg in args))
        assert hidden.replace("acme-task", "X") == unknown.replace("nope", "X")
    assert [task.task for task in registry.list_tasks(caller)] == ["shared"]
    assert registry.has_task("acme-task")  # untouched


def test_the_owner_and_the_operator_see_and_pin(registry):
    for caller in (ACME, OPERATOR):
        assert [task.task for task in registry.list_tasks(caller)] == ["acme-task", "shared"]
        ref = registry.pin("acme-task", 0, caller)
        assert ref.owner == "acme"
        registry.unpin(ref)


def test_uploads_to_a_name_owned_by_someone_else_are_409_and_change_nothing(registry, files):
    with pytest.raises(ConflictError, match="taken"):
        registry.upload("acme-task", *files[2], caller=GLOBEX)
    with pytest.raises(ConflictError, match="taken"):
        registry.upload("shared", *files[2], caller=ACME)
    assert registry.get_task("acme-task").active_version == 1 and registry.get_task("shared").active_version == 1
    assert registry.upload("acme-task", *files[2], caller=ACME).version == 2
    assert registry.upload("acme-task", *files[1]).owner == "acme"  # the operator's new version keeps the owner


def test_a_tenant_cannot_change_a_shared_task(registry):
    with pytest.raises(ConflictError, match="shared"):
        registry.delete("shared", ACME)
    with pytest.raises(ConflictError, match="shared"):
        registry.activate("shared", 1, ACME)


def test_max_tasks_and_max_prompt_bytes(registry, files):
    registry.tenants.update_tenant("globex", {"max_tasks": 1})
    registry.upload("g1", *files[0], caller=GLOBEX)
    with pytest.raises(QuotaExceededError, match="max_tasks"):
        registry.upload("g2", *files[1], caller=GLOBEX)
    registry.upload("g1", *files[1], caller=GLOBEX)  # a new version is not a new task
    used = registry.usage_of("globex").num_bytes
    size = len(files[2][0]) + len(files[2][1])
    registry.tenants.update_tenant("globex", {"max_tasks": None, "max_prompt_bytes": used + size - 1})
    with pytest.raises(QuotaExceededError, match="max_prompt_bytes"):
        registry.upload("g1", *files[2], caller=GLOBEX)
    assert registry.usage_of("globex").num_bytes == used and not registry.has_task("g2")
    registry.upload("g1", *files[2])  # the operator is not held to a tenant's quota


def test_concurrent_uploads_never_pass_max_tasks(registry, files):
    registry.tenants.update_tenant("globex", {"max_tasks": 3})
    outcomes = []

    def upload(index):
        try:
            registry.upload(f"race-{index}", *files[index % 3], caller=GLOBEX)
            outcomes.append("ok")
        except QuotaExceededError:
            outcomes.append("quota")

    threads = [threading.Thread(target=upload, args=(index,)) for index in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == 3 and registry.usage_of("globex").num_tasks == 3


def test_a_tenant_owning_tasks_cannot_be_deleted(registry):
    with pytest.raises(ConflictError, match="owns 1"):
        registry.delete_tenant("acme")
    registry.delete("acme-task", ACME)
    registry.delete_tenant("acme")
    assert [tenant.name for tenant in registry.tenants.list_tenants()] == ["globex"]


def test_owners_survive_a_restart(files, tmp_path):
    registry = PromptRegistry(SHAPE, StoreConfig(), "base", PromptStorage(tmp_path))
    registry.load()
    registry.tenants.create_tenant("acme", 2.0, TenantQuota(max_tasks=4))
    registry.upload("mine", *files[0], caller=ACME)
    registry.upload("ours", *files[1])
    registry.close()
    restarted = PromptRegistry(SHAPE, StoreConfig(), "base", PromptStorage(tmp_path))
    assert restarted.load() == []
    assert {task.task: task.owner for task in restarted.list_tasks()} == {"mine": "acme", "ours": None}
    assert restarted.tenants.get_tenant("acme").quota.max_tasks == 4
    restarted.close()
