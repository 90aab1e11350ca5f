"""Changes a store's tenant directory as fast as it can until killed: the subject of the kill -9 test.

    python -m tests.support.tenant_churn STORE_DIR SEED ROUND

Prints one flushed JSON line before each change, {"intent": change}, and one once the call has returned,
{"ack": change + what it made}: a change is acknowledged exactly when its "ack" line exists.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
from dataclasses import asdict

from prompt_store.storage import PromptStorage
from prompt_store.tenant_directory import TenantDirectory
from prompt_store.tenants import SCOPES, TenantQuota

MAX_TENANTS = 6


def pick_change(rng: random.Random, directory: TenantDirectory, new_name: str) -> dict:
    names = [tenant.name for tenant in directory.list_tenants()]
    keys = [(name, info.id) for name in names for info in directory.list_keys(name)]
    choices = ["create_tenant"] * (3 if len(names) < MAX_TENANTS else 0)
    if names:
        choices += ["update_tenant"] * 3 + ["delete_tenant"] * (1 if len(names) < MAX_TENANTS else 3)
        choices += ["create_key"] * 4
    if keys:
        choices += ["revoke_key"] * 2
    op = rng.choice(choices)
    if op == "create_tenant":
        return {"op": op, "name": new_name, "weight": rng.choice([0.5, 1.0, 4.0]), "max_tasks": rng.choice([None, 9])}
    if op == "update_tenant":
        return {
            "op": op,
            "name": rng.choice(names),
            "weight": rng.uniform(0.1, 10),
            "max_concurrent": rng.randint(1, 9),
        }
    if op == "delete_tenant":
        return {"op": op, "name": rng.choice(names)}
    if op == "create_key":
        return {"op": op, "tenant": rng.choice(names), "scopes": rng.sample(SCOPES, rng.randint(1, len(SCOPES)))}
    tenant, key_id = rng.choice(keys)
    return {"op": op, "tenant": tenant, "id": key_id}


def apply_change(directory: TenantDirectory, change: dict) -> dict:
    """Make the change; return what the parent needs to know of its result."""
    op = change["op"]
    if op == "create_tenant":
        tenant = directory.create_tenant(change["name"], change["weight"], TenantQuota(max_tasks=change["max_tasks"]))
        return {"tenant": asdict(tenant)}
    if op == "update_tenant":
        changes = {"weight": change["weight"], "max_concurrent": change["max_concurrent"]}
        return {"tenant": asdict(directory.update_tenant(change["name"], changes))}
    if op == "delete_tenant":
        directory.delete_tenant(change["name"])
        return {}
    if op == "create_key":
        new_key = directory.create_key(change["tenant"], change["scopes"])
        return {"key": asdict(new_key.info), "secret": new_key.secret}
    directory.revoke_key(change["tenant"], change["id"])
    return {}


def main() -> None:
    store_dir, seed, round_id = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rng = random.Random(seed)
    directory = TenantDirectory(PromptStorage(store_dir))
    directory.load()
    for number in itertools.count():
        change = pick_change(rng, directory, new_name=f"r{round_id}-{number}")
        print(json.dumps({"intent": change}), flush=True)
        result = apply_change(directory, change)
        print(json.dumps({"ack": change | result}), flush=True)


if __name__ == "__main__":
    main()
