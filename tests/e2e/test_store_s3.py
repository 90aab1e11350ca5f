"""A real `promptswap serve` on a prompt store in S3 (a real SeaweedFS): an uploaded PEFT adapter generates PEFT's
tokens, and a restarted server on the same bucket serves the task again, the same tokens, from the objects alone."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.e2e.server_process import start_server
from tests.e2e.store_client import adapter_bytes, generate, list_tasks, put_prompt

ADAPTERS = {"prompt": ("PROMPT_TUNING", {}), "prefix": ("PREFIX_TUNING", {"prefix_projection": True})}
PROMPT = "the store lives in a bucket"
MAX_NEW_TOKENS = 6


@pytest.fixture
def s3_env(seaweedfs, tmp_path) -> dict[str, str]:
    # An S3 store's audit log defaults to the cache directory: kept out of the user's own here.
    store = {
        "PROMPTSWAP_STORE": f"s3://{seaweedfs.new_bucket()}/prompts",
        "PROMPTSWAP_AUDIT_LOG": str(tmp_path / "audit"),
    }
    return store | seaweedfs.env


def test_a_restarted_server_serves_the_bucket_again(tiny_llama_dir, tmp_path, adapters, references, s3_env, seaweedfs):
    bucket = s3_env["PROMPTSWAP_STORE"].removeprefix("s3://").partition("/")[0]
    served = {}
    server = start_server(tiny_llama_dir, tmp_path, env=s3_env)
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for name, path in adapters.items():
                assert put_prompt(client, server, name, *adapter_bytes(path)).status_code == 201
                served[name] = generate(client, name, PROMPT, MAX_NEW_TOKENS)
                assert served[name].token_ids == references[name] and served[name].task_version == 1
    finally:
        assert server.stop() == 0, server.log()
    keys = {entry["Key"] for entry in seaweedfs.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert "prompts/tasks/prefix/manifest.json" in keys and "prompts/tasks/prompt/v1/adapter_model.safetensors" in keys
    # the admin requests' audit entries are in the bucket too, where every replica's go
    audit = [key for key in keys if key.startswith("prompts/audit/")]
    entries = [json.loads(seaweedfs.client().get_object(Bucket=bucket, Key=key)["Body"].read()) for key in audit]
    assert sorted((e["action"], e["target"]["task"], e["result"]) for e in entries) == [
        ("prompt.upload", "prefix", 201),
        ("prompt.upload", "prompt", 201),
    ]
    assert not (tmp_path / "store").exists()  # nothing went to a local directory

    restarted = start_server(tiny_llama_dir, tmp_path, env=s3_env)
    try:
        with httpx.Client(base_url=restarted.url, timeout=120) as client:
            assert {task: info["active_version"] for task, info in list_tasks(client, restarted).items()} == {
                "prefix": 1,
                "prompt": 1,
            }
            for name in adapters:
                assert generate(client, name, PROMPT, MAX_NEW_TOKENS) == served[name]
    finally:
        assert restarted.stop() == 0, restarted.log()
    assert "0 entries skipped" in restarted.log(20_000)
