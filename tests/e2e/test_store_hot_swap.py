"""Hot swap under load: clients keep generating on one task while its versions are re-uploaded and re-activated
many times. No request fails, each one gets exactly the PEFT output of one version (the one it reports, which was
active at some moment while it was in flight), and once an upload or activate returns new requests get it. Also:
a delete lets an admitted request finish on its version. The server runs on a local directory, then on a bucket of a
real SeaweedFS."""

from __future__ import annotations

import json
import random
import threading
import time
from bisect import bisect_right
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.server_process import metric_value
from tests.e2e.store_client import Generation, adapter_bytes, generate, list_tasks, put_prompt
from tests.support.reference import peft_greedy
from tests.support.seaweedfs import BACKENDS

ADAPTERS = {  # the same training arguments as test_e2e_generation, so the session trains each once
    "prompt": ("PROMPT_TUNING", {}),
    "ptuning": ("P_TUNING", {}),
    "prefix": ("PREFIX_TUNING", {"prefix_projection": True}),
}
TASK = "hot"
PROMPT = "The capital of France is"
MAX_NEW_TOKENS = 5
NUM_CLIENTS = 4
NUM_SWAPS = 24
LONG_NEW_TOKENS = 120  # a request long enough to be still running when its task is deleted
SEED = 7


@pytest.fixture(scope="module", params=BACKENDS)
def store_backend(request) -> str:
    return request.param


@dataclass(frozen=True)
class Swap:
    started_at: float
    finished_at: float
    active_version: int  # what the swap made active


@dataclass(frozen=True)
class Served:
    sent_at: float
    received_at: float
    generation: Generation


def test_swaps_under_load_fail_nothing_and_serve_exactly_one_version(server, client, adapters, references):
    files = {name: adapter_bytes(path) for name, path in adapters.items()}
    contents: dict[int, str] = {}  # version -> adapter name
    first = put_prompt(client, server, TASK, *files["prompt"])
    assert first.status_code == 201, first.text
    contents[first.json()["version"]] = "prompt"
    swaps = [Swap(float("-inf"), float("-inf"), first.json()["version"])]
    served, failures = _run_clients(server, lambda: _swap_many(server, client, files, contents, swaps, references))

    assert failures == [], failures[:3]
    assert len(served) >= 2 * NUM_SWAPS, f"only {len(served)} requests ran during the swaps: not much load"
    for request in served:
        version = request.generation.task_version
        assert request.generation.token_ids == references[contents[version]], version
        assert version in _active_while_in_flight(swaps, request), (version, request)
    versions_seen = {request.generation.task_version for request in served}
    print(f"\n{len(served)} requests during {NUM_SWAPS} swaps; versions served: {sorted(versions_seen)}")
    assert len(versions_seen) >= NUM_SWAPS // 3, "the clients hardly saw the swaps"


def _swap_many(server, client, files, contents, swaps, references) -> None:
    """Alternate uploads (cycling the adapters) and activations of kept versions; after each, a new request must
    be served by what it made active."""
    rng = random.Random(SEED)
    names = sorted(files)
    for index in range(NUM_SWAPS):
        started_at = time.monotonic()
        kept = [v["version"] for v in list_tasks(client, server)[TASK]["versions"] if not v["is_active"]]
        if index % 3 == 2 and kept:
            version = rng.choice(kept)
            response = client.post(
                f"/v1/admin/prompts/{TASK}/activate", headers=server.admin_headers, json={"version": version}
            )
            assert response.status_code == 200 and response.json()["active_version"] == version, response.text
        else:
            name = names[index % len(names)]
            response = put_prompt(client, server, TASK, *files[name])
            assert response.status_code == 200, response.text
            version = response.json()["version"]
            contents[version] = name
        swaps.append(Swap(started_at, time.monotonic(), version))
        after = generate(client, TASK, PROMPT, MAX_NEW_TOKENS)
        assert (after.task_version, after.token_ids) == (version, references[contents[version]])


def _run_clients(server, swap_all) -> tuple[list[Served], list[str]]:
    """NUM_CLIENTS threads generating on TASK until `swap_all` returns."""
    served: list[Served] = []
    failures: list[str] = []
    done = threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not done.is_set():
                sent_at = time.monotonic()
                try:
                    generation = generate(client, TASK, PROMPT, MAX_NEW_TOKENS)
                except Exception as exc:  # noqa: BLE001 - every failure is the finding
                    failures.append(repr(exc))
                    continue
                served.append(Served(sent_at, time.monotonic(), generation))

    with ThreadPoolExecutor(NUM_CLIENTS) as pool:
        futures = [pool.submit(client_loop) for _ in range(NUM_CLIENTS)]
        try:
            time.sleep(0.2)  # the clients are under way before the first swap
            swap_all()
        finally:
            done.set()
        for future in futures:
            future.result()
    return served, failures


def _active_while_in_flight(swaps: list[Swap], request: Served) -> set[int]:
    """Versions active at some moment the request may have been admitted: from the last swap that had returned
    before it was sent, to the last swap that had started before its response arrived."""
    first = bisect_right([swap.finished_at for swap in swaps], request.sent_at) - 1
    last = bisect_right([swap.started_at for swap in swaps], request.received_at) - 1
    return {swap.active_version for swap in swaps[first : last + 1]}


@pytest.fixture(scope="module")
def long_reference(adapters, tiny_llama_dir, tokenizer) -> list[int]:
    """PEFT's LONG_NEW_TOKENS for the prefix adapter: computed once for both backends (it takes seconds)."""
    return peft_greedy(tiny_llama_dir, adapters["prefix"], tokenizer(PROMPT).input_ids, LONG_NEW_TOKENS)


def test_delete_lets_an_admitted_request_finish_on_its_version(server, client, adapters, long_reference):
    task = "doomed"
    created = put_prompt(client, server, task, *adapter_bytes(adapters["prefix"]))
    assert created.status_code == 201, created.text
    first_token = threading.Event()
    result: list[Generation] = []

    def long_request() -> None:
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": LONG_NEW_TOKENS}, "stream": True}
        token_ids, last = [], None
        with httpx.stream("POST", f"{server.url}/v1/generate", params={"task": task}, json=body, timeout=120) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: {"):
                    last = json.loads(line[len("data: ") :])
                    token_ids.append(last["token"]["id"])
                    first_token.set()
        result.append(Generation(token_ids, last["details"]["task_version"]))

    thread = threading.Thread(target=long_request)
    thread.start()
    assert first_token.wait(60)
    assert client.delete(f"/v1/admin/prompts/{task}", headers=server.admin_headers).status_code == 204
    running = metric_value(client.get("/metrics").text, "promptswap_num_requests_running")
    refused = client.post("/v1/generate", params={"task": task}, json={"inputs": PROMPT})
    assert (refused.status_code, refused.json()["error_type"]) == (404, "not_found")
    thread.join(120)
    assert running >= 1, "the request finished before the delete: nothing was tested"
    assert result == [Generation(long_reference, 1)]
    recreated = put_prompt(client, server, task, *adapter_bytes(adapters["prompt"]))
    assert (recreated.status_code, recreated.json()["version"]) == (201, 2)  # numbers are never reused
