"""kill -9 at random moments while a client uploads, activates and deletes: after each restart every task is at
the state of its last acknowledged change or of the one in flight, serves PEFT's tokens for that version, and no
version number ever names two different prompts (deleted tasks included, across restarts), and what it lists holds
exactly the uploaded bytes. On both durable stores: a directory, and a bucket of a real SeaweedFS."""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest

from tests.e2e.served_store import ServedStore, served_store
from tests.e2e.server_process import metric_value, start_server
from tests.e2e.store_client import adapter_bytes, generate, list_tasks, put_prompt
from tests.support.seaweedfs import BACKENDS

NUM_KILLS = 3
TASKS = ["crash-a", "crash-b", "crash-c"]
ADAPTERS = {  # name -> (peft_type, training options); the two tell apart by peft_type in the listing
    "prompt": ("PROMPT_TUNING", {}),
    "prefix": ("PREFIX_TUNING", {"prefix_projection": True}),
}
PROMPT = "The capital of France is"
MAX_NEW_TOKENS = 4
SEED = 20240611
VERSIONS_KEPT = 2
MIN_CHANGES_BEFORE_KILL = 5


@dataclass(frozen=True)
class Op:
    """One admin call; `version` is the activated one, or for an upload the number it must get."""

    kind: str  # "upload" | "activate" | "delete"
    task: str
    adapter: str | None = None
    version: int | None = None


@dataclass
class StoreModel:
    """What the client knows is committed: acknowledged changes, and states observed after restarts."""

    active: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(TASKS))
    kept: dict[str, set[int]] = field(default_factory=lambda: {task: set() for task in TASKS})
    contents: dict[tuple[str, int], str] = field(default_factory=dict)  # every (task, version) ever seen
    highest: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TASKS, 0))

    def next_op(self, rng: random.Random) -> Op:
        task = rng.choice(TASKS)
        others = sorted(self.kept[task] - {self.active[task]})
        roll = rng.random()
        if self.active[task] is not None and roll < 0.1:
            return Op("delete", task)
        if others and roll < 0.35:
            return Op("activate", task, version=rng.choice(others))
        return Op("upload", task, adapter=rng.choice(sorted(ADAPTERS)), version=self.highest[task] + 1)

    def apply(self, op: Op) -> None:
        if op.kind == "delete":
            self.active[op.task], self.kept[op.task] = None, set()
            return
        self.active[op.task] = op.version
        if op.kind == "upload":  # the server prunes as it uploads: the active version + VERSIONS_KEPT newest others
            self.contents[(op.task, op.version)] = op.adapter
            self.highest[op.task] = op.version
            others = sorted(self.kept[op.task])[-VERSIONS_KEPT:]
            self.kept[op.task] = {*others, op.version}


@pytest.mark.parametrize("store_backend", BACKENDS)
def test_kill_9_at_random_moments_leaves_every_task_old_or_new(
    request, store_backend, tiny_llama_dir, tmp_path, adapters, references
):
    rng = random.Random(SEED)
    files = {name: adapter_bytes(path) for name, path in adapters.items()}
    store = served_store(request, store_backend, tmp_path)
    model = StoreModel()
    in_flight = None  # the change the last kill interrupted
    env = {"PROMPTSWAP_VERSIONS_KEPT": str(VERSIONS_KEPT)} | store.env
    for round_index in range(NUM_KILLS):
        server = start_server(tiny_llama_dir, tmp_path, env=env)
        try:
            if round_index:
                _check_after_restart(server, store, model, in_flight, files, references)
            in_flight, num_acked = _change_until_killed(server, model, files, rng)
        finally:
            server.process.kill()  # already dead unless a check failed
        print(f"round {round_index}: {num_acked} changes acknowledged, killed during {in_flight}")
        assert num_acked >= MIN_CHANGES_BEFORE_KILL, "the server was killed before it took changes: nothing was tested"
    server = start_server(tiny_llama_dir, tmp_path, env=env)
    try:
        _check_after_restart(server, store, model, in_flight, files, references)
    finally:
        assert server.stop() == 0, server.log()


def _change_until_killed(server, model: StoreModel, files, rng: random.Random) -> tuple[Op | None, int]:
    """Send changes one after another from a thread, SIGKILL the server at a random moment; returns the change
    in flight at the kill (None if between two) and how many were acknowledged."""
    in_flight: list[Op | None] = [None]
    num_acked = [0]
    errors: list[BaseException] = []

    def change_loop() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while True:
                op = in_flight[0] = model.next_op(rng)
                try:
                    response = _send(client, server, op, files)
                except httpx.TransportError:
                    return  # killed: `op` stays in flight
                try:
                    assert response.status_code in (200, 201, 204), response.text
                    if op.kind == "upload":
                        assert response.json()["version"] == op.version, "a version number was reused or skipped"
                except AssertionError as exc:
                    errors.append(exc)
                    return
                model.apply(op)
                num_acked[0] += 1
                in_flight[0] = None

    thread = threading.Thread(target=change_loop)
    thread.start()
    deadline = time.monotonic() + 60
    while num_acked[0] < MIN_CHANGES_BEFORE_KILL and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.6))  # then a random moment: mid-upload, mid-prune, mid-delete, between requests
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    thread.join(60)
    assert not thread.is_alive()
    if errors:
        raise errors[0]
    return in_flight[0], num_acked[0]


def _send(client: httpx.Client, server, op: Op, files) -> httpx.Response:
    path = f"/v1/admin/prompts/{op.task}"
    if op.kind == "upload":
        return put_prompt(client, server, op.task, *files[op.adapter])
    if op.kind == "activate":
        return client.post(f"{path}/activate", headers=server.admin_headers, json={"version": op.version})
    return client.delete(path, headers=server.admin_headers)


def _check_after_restart(
    server, store: ServedStore, model: StoreModel, in_flight: Op | None, files, references
) -> None:
    """Every task at its acknowledged state or the in-flight change's, each listed version stored as uploaded; then
    the model adopts what is served."""
    peft_types = {name: peft_type for name, (peft_type, _) in ADAPTERS.items()}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        listed = list_tasks(client, server)
        assert set(listed) <= set(TASKS)
        for task in TASKS:
            entry = listed.get(task)
            active = entry["active_version"] if entry else None
            allowed = {model.active[task]}
            if in_flight is not None and in_flight.task == task:
                allowed.add(None if in_flight.kind == "delete" else in_flight.version)
            assert active in allowed, (task, active, allowed, in_flight)
            for version in entry["versions"] if entry else []:
                key = (task, version["version"])
                if key not in model.contents:  # only the in-flight upload may have committed unacknowledged
                    assert in_flight == Op("upload", task, in_flight.adapter, version["version"]), (key, in_flight)
                    model.contents[key] = in_flight.adapter
                assert version["peft_type"] == peft_types[model.contents[key]], ("version number reused", key)
                assert store.stored_files(*key) == files[model.contents[key]], ("not the uploaded bytes", key)
            _adopt(model, task, entry, store.version_numbers(task))
            if active is not None:
                served = generate(client, task, PROMPT, MAX_NEW_TOKENS)
                assert served.task_version == active
                assert served.token_ids == references[model.contents[(task, active)]], (task, active)
        metrics = client.get("/metrics").text
        assert metric_value(metrics, "promptswap_registry_damaged_entries") == 0, server.log()
        assert metric_value(metrics, "promptswap_registry_tasks") == len(listed)
    log = server.log_path.read_text(errors="replace")
    assert "prompt store: " in log and ", 0 entries skipped" in log, log[-4000:]
    store.assert_no_work_in_progress()


def _adopt(model: StoreModel, task: str, entry: dict | None, stored_versions: set[int]) -> None:
    """`stored_versions` may hold leftovers of the interrupted upload (a bucket keeps young ones, as another
    replica's write may be in flight): the next upload is numbered above them."""
    versions = {version["version"] for version in entry["versions"]} if entry else set()
    model.active[task] = entry["active_version"] if entry else None
    model.kept[task] = versions
    model.highest[task] = max([model.highest[task], *versions, *stored_versions])
