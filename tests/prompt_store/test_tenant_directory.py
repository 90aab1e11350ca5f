"""The tenant directory: field rules, lifecycle, keys stored as hashes only, reload, damage, failed writes, threads,
and kill -9 of a process in the middle of changes."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from prompt_store.documents import TENANTS_DOCUMENT
from prompt_store.errors import ConflictError, InvalidTenantError, StorageError, UnknownTenantError
from prompt_store.memory_storage import MemoryStorage
from prompt_store.storage import PromptStorage
from prompt_store.tenant_directory import TenantDirectory
from prompt_store.tenants import KEY_PREFIX, SCOPE_GENERATE, SCOPE_PROMPTS_WRITE, KeyInfo, Tenant, TenantQuota

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000.0


@pytest.fixture
def store_dir(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def storage(store_dir):
    storage = PromptStorage(store_dir)
    yield storage
    storage.close()


@pytest.fixture
def directory(storage):
    directory = TenantDirectory(storage)
    directory.load()
    return directory


def _reopened(store_dir: Path, previous: PromptStorage) -> TenantDirectory:
    """A restart: the old store unlocked, a new one opened on the same directory, its leftovers discarded."""
    previous.close()
    storage = PromptStorage(store_dir)
    storage.discard_leftovers(storage.scan())
    directory = TenantDirectory(storage)
    directory.load()
    return directory


def _snapshot(directory: TenantDirectory) -> tuple[dict[str, Tenant], dict[str, KeyInfo]]:
    tenants = {tenant.name: tenant for tenant in directory.list_tenants()}
    return tenants, {info.id: info for name in tenants for info in directory.list_keys(name)}


# ---- the document in the stores ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_documents_round_trip_and_names_are_a_fixed_set(kind, storage):
    storage = MemoryStorage() if kind == "memory" else storage
    assert storage.read_document(TENANTS_DOCUMENT) is None
    storage.write_document(TENANTS_DOCUMENT, b"one")
    storage.write_document(TENANTS_DOCUMENT, b"two")
    assert storage.read_document(TENANTS_DOCUMENT) == b"two"
    for name in ("other.json", "../tenants.json", "tasks", "tenants.json/x", ""):
        with pytest.raises(ValueError, match="not a store document"):
            storage.write_document(name, b"x")
        with pytest.raises(ValueError, match="not a store document"):
            storage.read_document(name)


def test_write_document_failure_is_a_storage_error(storage, store_dir, monkeypatch):
    def no_space(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("prompt_store.storage.replace_file_atomically", no_space)
    with pytest.raises(StorageError, match="could not write .*tenants.json: No space left on device"):
        storage.write_document(TENANTS_DOCUMENT, b"{}")
    assert not (store_dir / TENANTS_DOCUMENT).exists()


def test_scan_reports_temp_files_of_interrupted_document_writes(storage, store_dir):
    storage.write_document(TENANTS_DOCUMENT, b"kept")
    temp = store_dir / f"{TENANTS_DOCUMENT}.tmp-0123abcd"
    temp.write_bytes(b"half")
    result = storage.scan()
    assert temp in result.leftovers and store_dir / TENANTS_DOCUMENT not in result.leftovers
    storage.discard_leftovers(result)
    assert not temp.exists() and storage.read_document(TENANTS_DOCUMENT) == b"kept"


# ---- field rules ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "0", "team-a", "a" * 32, "9-lives", "a-"])
def test_valid_names(directory, name):
    assert directory.create_tenant(name).name == name


@pytest.mark.parametrize(
    "name", ["", "-a", "A", "team_a", "a" * 33, "a.b", "a/b", "..", "a\n", " a", "é", None, 7, "anonymous", "other"]
)
def test_invalid_names(directory, name):
    with pytest.raises(InvalidTenantError, match="^name: "):
        directory.create_tenant(name)
    assert directory.list_tenants() == []


@pytest.mark.parametrize("weight", [1, 0.001, 1000, 1000.0, 2.5])
def test_valid_weights(directory, weight):
    assert directory.create_tenant("t", weight=weight).weight == float(weight)


@pytest.mark.parametrize(
    "weight", [0, 0.0, -1, -0.0, 1000.0001, 1001, math.nan, math.inf, -math.inf, True, False, "1", None, 10**400]
)
def test_invalid_weights(directory, weight):
    with pytest.raises(InvalidTenantError, match="^weight: "):
        directory.create_tenant("t", weight=weight)
    directory.create_tenant("t")
    with pytest.raises(InvalidTenantError, match="^weight: "):
        directory.update_tenant("t", {"weight": weight})
    assert directory.get_tenant("t").weight == 1.0


@pytest.mark.parametrize("field", ["max_concurrent", "tokens_per_minute", "max_tasks", "max_prompt_bytes"])
def test_quota_fields(directory, field):
    assert getattr(directory.create_tenant("t", quota=TenantQuota(**{field: 5})).quota, field) == 5
    assert getattr(directory.update_tenant("t", {field: 2**63 - 1}).quota, field) == 2**63 - 1
    for bad in (0, -1, True, 1.0, 1.5, "5", 2**63, 10**5000):
        with pytest.raises(InvalidTenantError, match=f"^{field}: "):
            directory.update_tenant("t", {field: bad})
        with pytest.raises(InvalidTenantError, match=f"^{field}: "):
            directory.create_tenant("u", quota=TenantQuota(**{field: bad}))
    assert getattr(directory.get_tenant("t").quota, field) == 2**63 - 1
    assert getattr(directory.update_tenant("t", {field: None}).quota, field) is None  # None lifts the limit
    assert [t.name for t in directory.list_tenants()] == ["t"]


def test_update_refuses_unknown_fields_and_changes_nothing(directory):
    directory.create_tenant("t", weight=2)
    with pytest.raises(InvalidTenantError, match="^'name': not a tenant field"):
        directory.update_tenant("t", {"weight": 3, "name": "u"})
    with pytest.raises(InvalidTenantError, match="^'created_at': not a tenant field"):
        directory.update_tenant("t", {"created_at": 0})
    with pytest.raises(InvalidTenantError, match="^max_tasks: "):  # a bad field anywhere: no field changes
        directory.update_tenant("t", {"weight": 3, "max_tasks": 0})
    assert directory.get_tenant("t").weight == 2.0


@pytest.mark.parametrize(
    "scopes",
    [[], ["admin"], ["generate", "generate"], "generate", None, [None], ["GENERATE"], ("generate", "x")],
)
def test_invalid_scopes(directory, scopes):
    directory.create_tenant("t")
    with pytest.raises(InvalidTenantError, match="^scopes: "):
        directory.create_key("t", scopes)
    assert directory.list_keys("t") == []


@pytest.mark.parametrize("expires_at", [NOW, NOW - 1, math.nan, math.inf, True, "tomorrow", 10**400])
def test_invalid_expiry(directory, expires_at):
    directory.create_tenant("t")
    with pytest.raises(InvalidTenantError, match="^expires_at: "):
        directory.create_key("t", [SCOPE_GENERATE], expires_at=expires_at, now=NOW)


# ---- lifecycle -----------------------------------------------------------------------------------------------
def test_tenant_lifecycle(directory):
    before = time.time()
    quota = TenantQuota(max_concurrent=4, tokens_per_minute=10_000)
    created = directory.create_tenant("beta", weight=2, quota=quota)
    assert created == Tenant("beta", 2.0, quota, created.created_at)
    assert before <= created.created_at <= time.time()
    directory.create_tenant("alpha")
    with pytest.raises(ConflictError, match="tenant 'beta' exists"):
        directory.create_tenant("beta", weight=9)
    assert [t.name for t in directory.list_tenants()] == ["alpha", "beta"]

    updated = directory.update_tenant("beta", {"weight": 0.5, "max_concurrent": None, "max_tasks": 3})
    assert updated == replace(created, weight=0.5, quota=TenantQuota(tokens_per_minute=10_000, max_tasks=3))
    assert directory.get_tenant("beta") == updated
    assert directory.update_tenant("beta", {}) == updated

    directory.delete_tenant("beta")
    for call in (
        lambda: directory.get_tenant("beta"),
        lambda: directory.update_tenant("beta", {"weight": 1}),
        lambda: directory.delete_tenant("beta"),
        lambda: directory.list_keys("beta"),
        lambda: directory.create_key("beta", [SCOPE_GENERATE]),
    ):
        with pytest.raises(UnknownTenantError, match="no tenant 'beta'"):
            call()
    assert [t.name for t in directory.list_tenants()] == ["alpha"]


def test_key_lifecycle(directory):
    directory.create_tenant("t")
    directory.create_tenant("u")
    forever = directory.create_key("t", [SCOPE_PROMPTS_WRITE, SCOPE_GENERATE], now=NOW)
    expiring = directory.create_key("t", [SCOPE_GENERATE], expires_at=NOW + 60, now=NOW + 1)
    other = directory.create_key("u", [SCOPE_GENERATE], now=NOW)
    assert forever.info == KeyInfo(forever.info.id, "t", (SCOPE_GENERATE, SCOPE_PROMPTS_WRITE), NOW, None)
    assert forever.secret.startswith(KEY_PREFIX) and len(forever.secret) == len(KEY_PREFIX) + 43  # 256 bits
    assert len(base64.urlsafe_b64decode(forever.secret[len(KEY_PREFIX) :] + "=")) == 32
    assert forever.info.id.startswith("key-") and len(forever.info.id) == 20
    assert directory.list_keys("t") == [forever.info, expiring.info]
    assert directory.list_keys("u") == [other.info]

    assert directory.authenticate(forever.secret, now=NOW) == forever.info
    assert directory.authenticate(expiring.secret, now=NOW + 59.9) == expiring.info
    assert directory.authenticate(expiring.secret, now=NOW + 60) is None  # expired
    assert directory.list_keys("t") == [forever.info, expiring.info]  # listed until revoked

    with pytest.raises(UnknownTenantError, match="tenant 't' has no such key"):
        directory.revoke_key("t", other.info.id)  # another tenant's key is no such key
    with pytest.raises(UnknownTenantError, match="tenant 't' has no such key"):
        directory.revoke_key("t", "key-0000000000000000")
    directory.revoke_key("t", forever.info.id)
    assert directory.authenticate(forever.secret, now=NOW) is None
    with pytest.raises(UnknownTenantError):
        directory.revoke_key("t", forever.info.id)
    assert directory.list_keys("t") == [expiring.info]

    directory.delete_tenant("u")  # its keys go with it
    assert directory.authenticate(other.secret, now=NOW) is None
    directory.create_tenant("u")
    assert directory.list_keys("u") == [] and directory.authenticate(other.secret, now=NOW) is None


def test_authenticate_refuses_what_is_not_a_live_key(directory):
    directory.create_tenant("t")
    secret = directory.create_key("t", [SCOPE_GENERATE]).secret
    body = secret[len(KEY_PREFIX) :]
    for candidate in (
        "",
        body,
        "Bearer " + secret,
        secret + "x",
        secret[:-1],
        secret.upper(),
        "ps-" + "a" * 300,
        secret + "\n",
        "ps-é",
        "ps-\udc80",
        f"sk-{body}",
    ):
        assert directory.authenticate(candidate) is None
    assert directory.authenticate(secret).tenant == "t"


def test_errors_never_echo_a_secret(directory):
    directory.create_tenant("t")
    secret = directory.create_key("t", [SCOPE_GENERATE]).secret
    body = secret[len(KEY_PREFIX) :]
    calls = (
        lambda: directory.revoke_key("t", secret),
        lambda: directory.get_tenant(secret),
        lambda: directory.create_tenant(secret),
        lambda: directory.update_tenant("t", {secret: 1}),
        lambda: directory.create_key(secret, [SCOPE_GENERATE]),
    )
    for call in calls:
        with pytest.raises((UnknownTenantError, InvalidTenantError)) as raised:
            call()
        assert body[:8] not in str(raised.value) and body[-8:] not in str(raised.value)
        assert len(str(raised.value)) < 150


# ---- what is stored ------------------------------------------------------------------------------------------
def test_secrets_are_never_stored(directory, store_dir):
    directory.create_tenant("t")
    new_keys = [directory.create_key("t", [SCOPE_GENERATE]) for _ in range(3)]
    stored = (store_dir / TENANTS_DOCUMENT).read_bytes()
    for new_key in new_keys:
        body = new_key.secret[len(KEY_PREFIX) :]
        raw = base64.urlsafe_b64decode(body + "=")
        for leak in (new_key.secret, body, body[:16], raw.hex(), base64.b64encode(raw).decode()):
            assert leak.encode() not in stored
        assert raw not in stored
        assert hashlib.sha256(new_key.secret.encode()).hexdigest().encode() in stored
    document = json.loads(stored)
    assert document["format"] == 1
    assert set(document["keys"][0]) == {"id", "tenant", "scopes", "created_at", "expires_at", "secret_sha256"}


def test_reload_from_disk(directory, storage, store_dir):
    directory.create_tenant("a", weight=3.25, quota=TenantQuota(max_tasks=2, max_prompt_bytes=10**12))
    directory.create_tenant("b")
    directory.create_tenant("gone")
    live = directory.create_key("a", [SCOPE_GENERATE], expires_at=NOW + 3600, now=NOW)
    revoked = directory.create_key("b", [SCOPE_PROMPTS_WRITE], now=NOW)
    directory.create_key("gone", [SCOPE_GENERATE])
    directory.revoke_key("b", revoked.info.id)
    directory.delete_tenant("gone")
    directory.update_tenant("b", {"tokens_per_minute": 500})

    restarted = _reopened(store_dir, storage)
    assert _snapshot(restarted) == _snapshot(directory)
    assert restarted.authenticate(live.secret, now=NOW) == live.info
    assert restarted.authenticate(revoked.secret, now=NOW) is None
    restarted.create_key("b", [SCOPE_GENERATE])  # a reloaded directory takes changes
    assert len(restarted.list_keys("b")) == 1


# ---- damage and failures -------------------------------------------------------------------------------------
def _valid_document() -> dict:
    storage = MemoryStorage()
    directory = TenantDirectory(storage)
    directory.load()
    directory.create_tenant("t")
    directory.create_key("t", [SCOPE_GENERATE])
    return json.loads(storage.read_document(TENANTS_DOCUMENT))


def _damaged(edit) -> bytes:
    document = _valid_document()
    edit(document)
    return json.dumps(document).encode()


DAMAGED_DOCUMENTS = {
    "truncated": json.dumps(_valid_document()).encode()[:-9],
    "empty": b"",
    "not utf-8": b"\xff\xfe{}",
    "a list": b"[]",
    "other format": _damaged(lambda d: d.update(format=2)),
    "no tenants": _damaged(lambda d: d.pop("tenants")),
    "tenant not an object": _damaged(lambda d: d["tenants"].append("t2")),
    "bad name": _damaged(lambda d: d["tenants"][0].update(name="T")),
    "NaN weight": json.dumps(_valid_document()).replace('"weight": 1.0', '"weight": NaN').encode(),
    "bool quota": _damaged(lambda d: d["tenants"][0].update(max_tasks=True)),
    "missing quota": _damaged(lambda d: d["tenants"][0].pop("max_concurrent")),
    "duplicate tenant": _damaged(lambda d: d["tenants"].append(dict(d["tenants"][0]))),
    "key of no tenant": _damaged(lambda d: d["keys"][0].update(tenant="nobody")),
    "bad hash": _damaged(lambda d: d["keys"][0].update(secret_sha256="00")),
    "bad scope": _damaged(lambda d: d["keys"][0].update(scopes=["root"])),
    "bad key id": _damaged(lambda d: d["keys"][0].update(id="../x")),
    "duplicate key": _damaged(lambda d: d["keys"].append(dict(d["keys"][0]))),
    "same hash twice": _damaged(lambda d: d["keys"].append(dict(d["keys"][0], id="key-" + "0" * 16))),
}


@pytest.mark.parametrize("data", DAMAGED_DOCUMENTS.values(), ids=DAMAGED_DOCUMENTS.keys())
def test_damaged_document_refuses_to_load_and_is_left_alone(storage, store_dir, data):
    (store_dir / TENANTS_DOCUMENT).write_bytes(data)
    directory = TenantDirectory(storage)
    with pytest.raises(StorageError, match="^tenants.json is damaged .*refuses to start rather than overwrite it"):
        directory.load()
    with pytest.raises(RuntimeError, match="load"):  # nothing can overwrite it either
        directory.create_tenant("new")
    assert (store_dir / TENANTS_DOCUMENT).read_bytes() == data
    assert directory.authenticate(KEY_PREFIX + "x") is None


def test_the_valid_document_of_the_damage_table_loads():
    storage = MemoryStorage()
    storage.write_document(TENANTS_DOCUMENT, json.dumps(_valid_document()).encode())
    directory = TenantDirectory(storage)
    directory.load()
    assert [t.name for t in directory.list_tenants()] == ["t"] and len(directory.list_keys("t")) == 1


def test_a_failed_write_changes_nothing(directory, storage, store_dir, monkeypatch):
    directory.create_tenant("t", weight=2)
    key = directory.create_key("t", [SCOPE_GENERATE])
    before, stored = _snapshot(directory), (store_dir / TENANTS_DOCUMENT).read_bytes()

    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("prompt_store.storage.replace_file_atomically", full_disk)
    for change in (
        lambda: directory.create_tenant("u"),
        lambda: directory.update_tenant("t", {"weight": 5, "max_tasks": 1}),
        lambda: directory.delete_tenant("t"),
        lambda: directory.create_key("t", [SCOPE_PROMPTS_WRITE]),
        lambda: directory.revoke_key("t", key.info.id),
    ):
        with pytest.raises(StorageError, match="No space left on device"):
            change()
        assert _snapshot(directory) == before
    assert directory.authenticate(key.secret) == key.info
    assert (store_dir / TENANTS_DOCUMENT).read_bytes() == stored
    monkeypatch.undo()
    assert _snapshot(_reopened(store_dir, storage)) == before


# ---- threads -------------------------------------------------------------------------------------------------
def test_concurrent_key_creation(directory, storage, store_dir):
    for name in ("t", "u"):
        directory.create_tenant(name)
    num_threads, keys_per_thread = 8, 10
    created: list = []
    barrier = threading.Barrier(num_threads)

    def create_keys(tenant):
        barrier.wait()
        new_keys = [directory.create_key(tenant, [SCOPE_GENERATE]) for _ in range(keys_per_thread)]
        created.extend(new_keys)

    threads = [threading.Thread(target=create_keys, args=("tu"[i % 2],)) for i in range(num_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(created) == num_threads * keys_per_thread
    assert len({k.info.id for k in created}) == len({k.secret for k in created}) == len(created)

    restarted = _reopened(store_dir, storage)
    assert len(restarted.list_keys("t")) == len(restarted.list_keys("u")) == len(created) // 2
    assert all(restarted.authenticate(k.secret) == k.info for k in created)


# ---- kill -9 -------------------------------------------------------------------------------------------------
def _apply_ack(model: tuple[dict, dict], ack: dict, secrets_by_id: dict[str, str]) -> None:
    tenants, keys = model
    if ack["op"] in ("create_tenant", "update_tenant"):  # the ack holds the record the call returned
        record = ack["tenant"]
        tenants[record["name"]] = Tenant(**(record | {"quota": TenantQuota(**record["quota"])}))
    elif ack["op"] == "delete_tenant":
        del tenants[ack["name"]]
        for key_id in [key_id for key_id, info in keys.items() if info.tenant == ack["name"]]:
            del keys[key_id]
    elif ack["op"] == "create_key":
        keys[ack["key"]["id"]] = KeyInfo(**(ack["key"] | {"scopes": tuple(ack["key"]["scopes"])}))
        secrets_by_id[ack["key"]["id"]] = ack["secret"]
    else:
        del keys[ack["id"]]


def _with_in_flight(model: tuple[dict, dict], intent: dict, loaded: tuple[dict, dict]) -> tuple[dict, dict]:
    """The model after the change in flight, taking from `loaded` only what the child generated (time, key id)."""
    tenants, keys = dict(model[0]), dict(model[1])
    op = intent["op"]
    if op == "create_tenant" and intent["name"] in loaded[0]:
        quota = TenantQuota(max_tasks=intent["max_tasks"])
        tenants[intent["name"]] = Tenant(intent["name"], intent["weight"], quota, loaded[0][intent["name"]].created_at)
    elif op == "update_tenant":
        tenant = tenants[intent["name"]]
        quota = replace(tenant.quota, max_concurrent=intent["max_concurrent"])
        tenants[intent["name"]] = replace(tenant, weight=intent["weight"], quota=quota)
    elif op == "delete_tenant":
        del tenants[intent["name"]]
        keys = {key_id: info for key_id, info in keys.items() if info.tenant != intent["name"]}
    elif op == "create_key" and len(new_ids := set(loaded[1]) - set(keys)) == 1:
        new = loaded[1][new_ids.pop()]
        scopes = tuple(s for s in (SCOPE_GENERATE, SCOPE_PROMPTS_WRITE) if s in intent["scopes"])
        keys[new.id] = KeyInfo(new.id, intent["tenant"], scopes, new.created_at, None)
    elif op == "revoke_key":
        del keys[intent["id"]]
    return tenants, keys


def _churn_until_killed(store_dir: Path, rng: random.Random, round_id: int) -> list[dict]:
    """Run the churn process, kill -9 it at a random moment after >= 5 acknowledged changes; its complete lines."""
    command = [
        sys.executable,
        "-m",
        "tests.support.tenant_churn",
        str(store_dir),
        str(rng.randrange(2**32)),
        str(round_id),
    ]
    lines, num_acks, kill_after = [], 0, rng.randint(5, 15)
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        try:
            while num_acks < kill_after:
                line = child.stdout.readline()
                assert line.endswith("\n"), f"the churn process exited early: {child.stderr.read()[-2000:]}"
                lines.append(line)
                num_acks += line.startswith('{"ack"')
            time.sleep(rng.uniform(0, 0.004))
        finally:
            os.kill(child.pid, signal.SIGKILL)
        # Not communicate(): it reads the pipe's descriptor and would miss lines readline() has buffered.
        rest, errors = child.stdout.read(), child.stderr.read()
    assert child.returncode == -signal.SIGKILL, errors[-2000:]
    # A torn last line was never seen by the parent: a change not acknowledged, or one not yet begun.
    lines += [line for line in rest.splitlines(keepends=True) if line.endswith("\n")]
    return [json.loads(line) for line in lines]


def test_kill_9_keeps_every_acknowledged_change(store_dir):
    """Four rounds of: a process changes the directory, is killed -9 mid-way, and the store is reopened."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    model: tuple[dict, dict] = ({}, {})
    secrets_by_id: dict[str, str] = {}
    for round_id in range(4):
        in_flight = None
        for message in _churn_until_killed(store_dir, rng, round_id):
            if "intent" in message:
                in_flight = message["intent"]
            else:
                _apply_ack(model, message["ack"], secrets_by_id)
                in_flight = None

        storage = PromptStorage(store_dir)
        storage.discard_leftovers(storage.scan())
        assert not list(store_dir.glob(f"{TENANTS_DOCUMENT}.tmp-*")), f"seed {seed}"
        json.loads((store_dir / TENANTS_DOCUMENT).read_bytes())  # whole, never half-written
        directory = TenantDirectory(storage)
        directory.load()
        loaded = _snapshot(directory)
        allowed = [model] + ([_with_in_flight(model, in_flight, loaded)] if in_flight else [])
        assert loaded in allowed, f"seed {seed}, round {round_id}, change in flight {in_flight}"
        for key_id, secret in secrets_by_id.items():
            assert directory.authenticate(secret) == loaded[1].get(key_id), f"seed {seed}"
        model = (dict(loaded[0]), dict(loaded[1]))  # the change in flight is settled now
        storage.close()
    assert len(secrets_by_id) >= 1, f"seed {seed}: the churn never created a key"
