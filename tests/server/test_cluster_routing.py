"""What the cluster ingress routes by and how it merges replicas' metrics, without Ray (server/cluster/)."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from server.cluster.metrics_merge import merge_expositions
from server.cluster.task_routing import routing_task

BASE = "tiny-llama"


@pytest.mark.parametrize(
    ("path", "query", "body", "task"),
    [
        ("/v1/generate", b"task=geo", b"{}", "geo"),
        ("/v1/generate", b"task=geo%402", b"{}", "geo"),  # NAME@N routes as NAME: a task's versions share a replica
        ("/v1/generate", b"", b'{"inputs": "x"}', None),
        ("/v1/generate", b"task=" + BASE.encode(), b"{}", None),
        ("/v1/generate", b"task=%402", b"{}", None),  # malformed: base routing, the replica answers the 4xx
        ("/v1/chat/completions", b"", json.dumps({"model": "geo@3", "messages": []}).encode(), "geo"),
        ("/v1/completions", b"", json.dumps({"model": BASE}).encode(), None),
        ("/v1/completions", b"", b"not json", None),
        ("/v1/admin/prompts/geo", b"", b"--multipart--", "geo"),
        ("/v1/admin/prompts/geo/activate", b"", b"{}", "geo"),
        ("/v1/admin/prompts", b"", b"", None),
    ],
)
def test_the_routing_task(path, query, body, task):
    assert routing_task(path, query, body, BASE) == task


def test_merged_metrics_have_one_family_each_and_a_replica_label_on_every_sample():
    registry = CollectorRegistry()
    Counter("promptswap_requests", "HTTP requests", ["route"], registry=registry).labels("/v1/generate").inc(3)
    exposition = generate_latest(registry).decode()
    merged = merge_expositions({"r1": exposition, "r2": exposition}).decode()
    assert merged.count("# TYPE promptswap_requests_total counter") == 1
    (family,) = [f for f in text_string_to_metric_families(merged) if f.name == "promptswap_requests"]
    totals = {s.labels["replica"]: s.value for s in family.samples if s.name == "promptswap_requests_total"}
    assert totals == {"r1": 3.0, "r2": 3.0}
