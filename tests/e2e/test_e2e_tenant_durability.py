"""Tenants and keys under kill -9, on a server that requires API keys: after each restart every acknowledged tenant,
weight and key is there, every acknowledged revocation holds, and the change in flight is either done or not."""

from __future__ import annotations

import json
import random
import threading
import time

import httpx
import openai

from tests.e2e.server_process import start_server
from tests.e2e.tenant_client import bearer, greedy

NUM_KILLS = 3
MIN_CHANGES_BEFORE_KILL = 5
SEED = 20261201


class Churn:
    """Admin changes in a loop; what the server acknowledged is the truth a restart must keep."""

    def __init__(self, server, rng: random.Random):
        self.server = server
        self.rng = rng
        self.weights: dict[str, float] = {}  # tenant -> acknowledged weight
        self.in_flight_weight: tuple[str, float] | None = None
        self.live_keys: dict[str, tuple[str, str]] = {}  # secret -> (tenant, key id)
        self.revoked: set[str] = set()
        self.in_flight_revoke: str | None = None
        self.num_acknowledged = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None  # what ended the worker, other than the kill

    def run(self) -> None:
        with httpx.Client(base_url=self.server.url, headers=self.server.admin_headers, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    self._one_change(client)
                except httpx.TransportError:
                    return  # killed
                except BaseException as exc:  # a failed assertion: the main thread raises it
                    self.error = exc
                    return

    def _one_change(self, client: httpx.Client) -> None:
        roll = self.rng.random()
        if roll < 0.3 or not self.weights:
            name = f"t{len(self.weights)}-{self.rng.randrange(10**6)}"
            response = client.post("/v1/admin/tenants", json={"name": name, "weight": 1})
            assert response.status_code == 201, response.text
            self.weights[name] = 1.0
        elif roll < 0.6:
            tenant = self.rng.choice(sorted(self.weights))
            response = client.post(f"/v1/admin/tenants/{tenant}/keys", json={"scopes": ["generate"]})
            assert response.status_code == 201, response.text
            self.live_keys[response.json()["key"]] = (tenant, response.json()["id"])
        elif roll < 0.8 and self.live_keys:
            secret = self.rng.choice(sorted(self.live_keys))
            tenant, key_id = self.live_keys[secret]
            self.in_flight_revoke = secret
            assert client.delete(f"/v1/admin/tenants/{tenant}/keys/{key_id}").status_code == 204
            del self.live_keys[secret]
            self.revoked.add(secret)
            self.in_flight_revoke = None
        else:
            tenant, weight = self.rng.choice(sorted(self.weights)), float(self.rng.randrange(1, 9))
            self.in_flight_weight = (tenant, weight)
            assert client.patch(f"/v1/admin/tenants/{tenant}", json={"weight": weight}).status_code == 200
            self.weights[tenant] = weight
            self.in_flight_weight = None
        self.num_acknowledged += 1


def test_tenants_and_keys_survive_kill_9(tiny_llama_dir, tmp_path):
    env = {"PROMPTSWAP_REQUIRE_API_KEY": "1"}
    rng = random.Random(SEED)
    server = start_server(tiny_llama_dir, tmp_path, env=env)
    churn = Churn(server, rng)
    try:
        for _ in range(NUM_KILLS):
            churn.stop.clear()
            start = churn.num_acknowledged
            worker = threading.Thread(target=churn.run)
            worker.start()
            while churn.num_acknowledged < start + MIN_CHANGES_BEFORE_KILL:
                assert worker.is_alive(), f"the admin churn stopped: {churn.error!r}"
                time.sleep(0.01)
            time.sleep(rng.random() * 0.05)
            server.process.kill()  # SIGKILL: no drain, no flush
            server.process.wait()
            churn.stop.set()
            worker.join(30)
            assert churn.error is None, f"the admin churn failed: {churn.error!r}"
            server = start_server(tiny_llama_dir, tmp_path, env=env)
            churn.server = server
            _check(server, churn)
        _check_keys_are_required(server, churn, tiny_llama_dir.name)
    finally:
        server.stop()


def _check(server, churn: Churn) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        listed = client.get("/v1/admin/tenants", headers=server.admin_headers).json()["tenants"]
        weights = {tenant["name"]: tenant["weight"] for tenant in listed}
        for name, weight in churn.weights.items():
            in_flight = churn.in_flight_weight
            allowed = {weight} | ({in_flight[1]} if in_flight and in_flight[0] == name else set())
            assert weights.get(name) in allowed, (name, weights.get(name), allowed)
        churn.weights = weights  # a tenant created in flight may now exist: it is part of the truth from here on
        for secret in list(churn.live_keys):
            status = greedy(client, secret, None, "Hello", 1).status_code
            assert status == 200 or (status == 401 and secret == churn.in_flight_revoke), status
            if status == 401:  # the revocation in flight was done: it is part of the truth from here on
                del churn.live_keys[secret]
                churn.revoked.add(secret)
        churn.in_flight_revoke = None
        for secret in churn.revoked:
            assert greedy(client, secret, None, "Hello", 1).status_code == 401
    document = json.loads((server.log_path.parent / "store" / "tenants.json").read_bytes())
    assert document["format"] == 1


def _check_keys_are_required(server, churn: Churn, base_model_id: str) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        anonymous = greedy(client, None, None, "Hello", 1)
        assert anonymous.status_code == 401 and anonymous.json()["error_type"] == "unauthorized"
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers=bearer("not-a-key")).status_code == 401
        assert greedy(client, server.admin_token, None, "Hello", 1).status_code == 200  # the operator may
    secret = next(iter(churn.live_keys))
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0)
    assert (
        api.completions.create(model=base_model_id, prompt="Hello", max_tokens=2).choices[0].finish_reason == "length"
    )
    anonymous_api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", max_retries=0)
    try:
        anonymous_api.completions.create(model=base_model_id, prompt="Hello", max_tokens=2)
    except openai.AuthenticationError:
        return
    raise AssertionError("an anonymous caller was served on a server that requires API keys")
