"""`serve-cluster` on a real local Ray and a real SeaweedFS: two engine replicas on one S3 store behind one ingress.

Uploads go through the ingress, routed by task to the replica that then holds it, and are queried through the same
routing; only the propagation test asks every replica directly (a broadcast), so only it depends on the store's
propagation between replicas (prompt_store's poller).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from server.cluster.cluster_app import APP_NAME, ClusterOptions, start_cluster
from server.cluster.forwarded import ForwardedRequest
from server.config import load_config
from tests.e2e.server_process import ADMIN_TOKEN, free_port, sse_payloads
from tests.e2e.store_client import adapter_bytes, generate, put_prompt

ADAPTERS = {"alpha": ("PROMPT_TUNING", {}), "beta": ("PREFIX_TUNING", {"prefix_projection": True})}
PROMPT = "two replicas share one bucket"
MAX_NEW_TOKENS = 6
NUM_REPLICAS = 2
REPLICA_HEADER = "X-Promptswap-Replica"
AFFINITY_TASKS = [f"zipf-{rank}" for rank in range(5)]
AFFINITY_REQUESTS = 40
# Replicas report the tasks they hold to Ray's routers every 0.1 s (through the controller): a task's first requests
# after its upload may go anywhere until then.
MULTIPLEX_PUSH_S = 1.0
READY_TIMEOUT_S = 240  # two replicas import torch and load the model on a busy 2-core machine
PROPAGATION_TIMEOUT_S = 10.0  # the contract is 2 s (p99); the margin is for a loaded 2-core machine
# Small engine queues, so that a flood of one task overflows its replica's waiting queue (429) in a few requests.
MAX_NUM_SEQS = 2
MAX_WAITING = 2
FLOOD_REQUESTS = 24
# A generation far longer than the test waits for: the cancelled stream must end long before it could finish.
LONG_MAX_NEW_TOKENS = 480  # the tiny model's context is 512
CANCEL_SETTLE_TIMEOUT_S = 5.0


@dataclass
class ClusterEndpoint:
    url: str
    admin_token: str

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


@pytest.fixture(scope="module")
def cluster(tiny_llama_dir, seaweedfs, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("cluster")
    saved_environ = dict(os.environ)
    os.environ.update(seaweedfs.env)  # the replicas' boto3 credentials: Ray's workers inherit this environment
    environ = seaweedfs.env | {
        "PROMPTSWAP_KV_BLOCKS": "256",
        "PROMPTSWAP_MAX_MODEL_LEN": "512",
        "PROMPTSWAP_MAX_NUM_SEQS": str(MAX_NUM_SEQS),
        "PROMPTSWAP_MAX_WAITING": str(MAX_WAITING),
    }
    port = free_port()
    flags = {
        "model": str(tiny_llama_dir),
        "host": "127.0.0.1",
        "port": port,
        "store": f"s3://{seaweedfs.new_bucket()}/prompts",
        "admin_token": ADMIN_TOKEN,
        "audit_log": work_dir / "audit.log",
    }
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)
    try:
        start_cluster(load_config(flags, environ), ClusterOptions(num_replicas=NUM_REPLICAS))
        endpoint = ClusterEndpoint(f"http://127.0.0.1:{port}", ADMIN_TOKEN)
        _wait_ready(endpoint)
        yield endpoint
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved_environ)


@pytest.fixture(scope="module")
def client(cluster):
    with httpx.Client(base_url=cluster.url, timeout=120) as client:
        yield client


def _wait_ready(endpoint: ClusterEndpoint) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while _num_ready(endpoint) < NUM_REPLICAS:
        assert time.monotonic() < deadline, f"{NUM_REPLICAS} replicas not ready in {READY_TIMEOUT_S} s"
        time.sleep(0.5)


def _num_ready(endpoint: ClusterEndpoint) -> int:
    try:
        response = httpx.get(f"{endpoint.url}/ready", timeout=5)
    except httpx.TransportError:
        return 0
    if response.status_code != 200:
        return 0
    return sum(status == "ready" for status in response.json()["replicas"].values())


def test_uploaded_tasks_give_peft_tokens_through_the_ingress(cluster, client, adapters, references):
    for task, path in adapters.items():
        upload = put_prompt(client, cluster, task, *adapter_bytes(path))
        assert upload.status_code == 201, upload.text
        assert upload.headers[REPLICA_HEADER]
        assert generate(client, task, PROMPT, MAX_NEW_TOKENS).token_ids == references[task]


def test_a_tasks_requests_stay_on_the_replica_that_holds_it(cluster, client, adapters):
    config_bytes, model_bytes = adapter_bytes(adapters["alpha"])
    home = {}
    for task in AFFINITY_TASKS:
        upload = put_prompt(client, cluster, task, config_bytes, model_bytes)
        assert upload.status_code == 201, upload.text
        home[task] = upload.headers[REPLICA_HEADER]
    time.sleep(MULTIPLEX_PUSH_S)
    mix = random.Random(17).choices(AFFINITY_TASKS, weights=[1 / (rank + 1) for rank in range(5)], k=AFFINITY_REQUESTS)
    served_by = []
    for task in mix:
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 2}}
        response = client.post("/v1/generate", params={"task": task}, json=body)
        served_by.append(response.headers[REPLICA_HEADER])
        if served_by[-1] == home[task]:
            assert response.status_code == 200, response.text
    hit_rate = sum(replica == home[task] for task, replica in zip(mix, served_by)) / len(mix)
    print(f"affinity: {hit_rate:.0%} of {len(mix)} requests on their task's replica; mix {Counter(mix)}")
    print(f"tasks per replica: {Counter(home.values())}")
    assert hit_rate >= 0.8, (hit_rate, home, list(zip(mix, served_by)))  # 1 / NUM_REPLICAS without affinity


def test_a_stream_comes_through_the_ingress_event_by_event(client, adapters, references):
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}, "stream": True}
    with client.stream("POST", "/v1/generate", params={"task": "alpha"}, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers[REPLICA_HEADER]
        events = sse_payloads(response.iter_lines())
    assert events[-1] == "[DONE]"
    tokens = [event["token"]["id"] for event in events[:-1]]
    assert tokens == references["alpha"] and len(tokens) > 1
    assert events[-2]["details"]["generated_tokens"] == len(tokens)


def test_metrics_through_the_ingress_label_every_replica(client):
    replica_ids = set(client.get("/ready").json()["replicas"])
    assert len(replica_ids) == NUM_REPLICAS
    for _ in range(2 * NUM_REPLICAS):  # base-model requests: Ray spreads them by queue length
        client.post("/v1/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 1}})
    response = client.get("/metrics")
    assert response.status_code == 200
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    requests = families["promptswap_requests"]
    assert {sample.labels["replica"] for sample in requests.samples} == replica_ids
    assert all("replica" in sample.labels for family in families.values() for sample in family.samples)


def test_health_answers_for_every_replica(client):
    response = client.get("/health")
    assert response.status_code == 200, response.text
    assert len(response.json()["replicas"]) == NUM_REPLICAS


def test_an_upload_through_the_ingress_is_served_by_every_replica(cluster, client, adapters, references):
    """The upload lands on one replica; the other learns of it from the store (prompt_store's poller)."""
    upload = put_prompt(client, cluster, "shared", *adapter_bytes(adapters["beta"]))
    assert upload.status_code == 201, upload.text
    uploaded_at = time.monotonic()
    assert generate(client, "shared", PROMPT, MAX_NEW_TOKENS).token_ids == references["beta"]
    expected = _generate_json(client, "shared")
    replicas = serve.get_deployment_handle("EngineReplica", app_name=APP_NAME)
    probe = ForwardedRequest(
        method="POST",
        path="/v1/generate",
        query_string=b"task=shared",
        headers=[(b"content-type", b"application/json")],
        body=json.dumps({"inputs": PROMPT, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}}).encode(),
        client=None,
    )
    while True:
        answers = replicas.broadcast("probe", probe).results(timeout_s=30)
        if len(answers) == NUM_REPLICAS and all(answer.status == 200 for answer in answers):
            break
        assert time.monotonic() - uploaded_at < PROPAGATION_TIMEOUT_S, [(a.replica_id, a.status) for a in answers]
        time.sleep(0.1)
    print(f"upload served by all {NUM_REPLICAS} replicas {time.monotonic() - uploaded_at:.2f} s after it returned")
    assert all(json.loads(answer.body)["generated_text"] == expected for answer in answers)


def test_429_back_pressure_comes_through_the_ingress_unchanged(cluster, client, adapters):
    """A flood of one task, TGI and OpenAI routes mixed: the overflow is refused by the replica's engine (429 with
    Retry-After and the route's error body), passed through as it is; the cluster serves normally afterwards."""
    upload = put_prompt(client, cluster, "flood", *adapter_bytes(adapters["alpha"]))
    assert upload.status_code == 201, upload.text
    time.sleep(MULTIPLEX_PUSH_S)
    start = threading.Barrier(FLOOD_REQUESTS)
    answers: dict[int, tuple[bool, httpx.Response]] = {}

    def one_request(index: int) -> None:
        is_openai = index % 2 == 1
        with httpx.Client(base_url=cluster.url, timeout=120) as flood:
            start.wait()
            if is_openai:
                body = {"model": "flood", "prompt": PROMPT, "max_tokens": 64, "ignore_eos": True}
                answers[index] = (True, flood.post("/v1/completions", json=body))
            else:
                body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 64}}
                answers[index] = (False, flood.post("/v1/generate", params={"task": "flood"}, json=body))

    threads = [threading.Thread(target=one_request, args=(index,)) for index in range(FLOOD_REQUESTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == FLOOD_REQUESTS
    statuses = Counter(response.status_code for _, response in answers.values())
    print(f"flood of {FLOOD_REQUESTS} requests for one task: {dict(statuses)}")
    assert set(statuses) <= {200, 429} and statuses[200] > 0 and statuses[429] > 0, statuses
    for is_openai, response in answers.values():
        assert response.headers[REPLICA_HEADER]
        if response.status_code != 429:
            continue
        assert int(response.headers["Retry-After"]) >= 1
        assert response.headers["content-type"].startswith("application/json")
        if is_openai:
            error = response.json()["error"]
            assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded", error
            assert error["message"]
        else:
            assert response.json()["error_type"] == "overloaded" and response.json()["error"], response.text
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 2}}
    after = client.post("/v1/generate", params={"task": "flood"}, json=body)
    assert after.status_code == 200, after.text
    waiting = _replica_samples(client, "promptswap_num_requests_waiting")
    assert set(waiting.values()) == {0.0}, waiting


def test_a_disconnected_stream_stops_its_generation_on_the_replica(client):
    """The caller closes a long stream after two events: the replica's engine drops it within a few seconds, and
    its steps and generated tokens stop growing (nothing else runs meanwhile)."""
    tokens_before = _replica_samples(client, "promptswap_generation_tokens_total")
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": LONG_MAX_NEW_TOKENS}, "stream": True}
    with client.stream("POST", "/v1/generate", json=body) as response:
        assert response.status_code == 200
        replica = response.headers[REPLICA_HEADER]
        lines = response.iter_lines()  # kept open: closing this iterator (a `break` out of it) closes the connection
        events: list[dict] = []
        while len(events) < 2:
            line = next(lines)
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:")))
        assert all(isinstance(event["token"]["id"], int) for event in events)
        running_while_open = _replica_samples(client, "promptswap_num_requests_running")
        assert running_while_open[replica] == 1, running_while_open
    closed_at = time.monotonic()  # leaving the block closes the connection mid-stream
    while (running := _replica_samples(client, "promptswap_num_requests_running"))[replica] != 0:
        assert time.monotonic() - closed_at < CANCEL_SETTLE_TIMEOUT_S, running
        time.sleep(0.1)
    settled_s = time.monotonic() - closed_at
    steps = _replica_samples(client, "promptswap_batch_size_count")[replica]
    tokens = _replica_samples(client, "promptswap_generation_tokens_total")[replica] - tokens_before[replica]
    time.sleep(1.0)
    assert _replica_samples(client, "promptswap_batch_size_count")[replica] == steps  # the engine is idle
    later_tokens = _replica_samples(client, "promptswap_generation_tokens_total")[replica] - tokens_before[replica]
    assert tokens == later_tokens < LONG_MAX_NEW_TOKENS, (tokens, later_tokens)
    print(f"stream closed after 2 events: replica {replica} idle {settled_s:.2f} s later, {tokens:.0f} tokens counted")


def _replica_samples(client: httpx.Client, sample_name: str) -> dict[str, float]:
    """replica -> the sample's value (summed over its other labels), from the ingress's merged /metrics."""
    response = client.get("/metrics")
    assert response.status_code == 200
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == sample_name:
                replica = sample.labels["replica"]
                totals[replica] = totals.get(replica, 0.0) + sample.value
    return totals


def _generate_json(client: httpx.Client, task: str) -> str:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}}
    response = client.post("/v1/generate", params={"task": task}, json=body)
    assert response.status_code == 200, response.text
    return response.json()["generated_text"]


def test_a_killed_replica_is_restarted_and_the_other_keeps_serving(cluster, client, adapters):
    upload = put_prompt(client, cluster, "steady", *adapter_bytes(adapters["beta"]))
    assert upload.status_code == 201, upload.text
    survivor = upload.headers[REPLICA_HEADER]
    replica_ids = set(client.get("/ready").json()["replicas"])
    (victim,) = replica_ids - {survivor}
    time.sleep(MULTIPLEX_PUSH_S)

    answers: list[tuple[int, str]] = []
    is_done = threading.Event()

    def steady_traffic() -> None:
        with httpx.Client(base_url=cluster.url, timeout=120) as traffic:
            while not is_done.is_set():
                body = {"inputs": PROMPT, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}}
                response = traffic.post("/v1/generate", params={"task": "steady"}, json=body)
                answers.append((response.status_code, response.headers.get(REPLICA_HEADER, "")))

    traffic_thread = threading.Thread(target=steady_traffic)
    traffic_thread.start()
    try:
        time.sleep(1.0)
        ray.kill(_replica_actor(victim))
        _wait_ready(cluster)  # Ray Serve has started a new replica in the killed one's place
        restarted = set(client.get("/ready").json()["replicas"])
    finally:
        is_done.set()
        traffic_thread.join()
    assert victim not in restarted and survivor in restarted and len(restarted) == NUM_REPLICAS
    assert answers and all(answer == (200, survivor) for answer in answers), Counter(answers)
    print(f"replica {victim} killed and replaced; {len(answers)} requests on {survivor} meanwhile, all 200")


def _replica_actor(replica_id: str):
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].endswith(f"#{replica_id}"):
            return ray.get_actor(actor["name"], namespace=actor["namespace"])
    raise AssertionError(f"no actor for replica {replica_id}")
