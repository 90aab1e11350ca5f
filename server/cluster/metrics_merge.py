"""`/metrics` of the cluster: every replica's Prometheus exposition in one, each sample labelled by its replica.

Families are merged by name (one HELP/TYPE each, as the text format requires), not concatenated.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

REPLICA_LABEL = "replica"


def merge_expositions(expositions: dict[str, str]) -> bytes:
    """replica id -> its /metrics text  ->  one exposition with a `replica` label on every sample."""
    families: dict[str, Metric] = {}
    for replica_id, text in sorted(expositions.items()):
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            merged.samples += [
                sample._replace(labels={**sample.labels, REPLICA_LABEL: replica_id}) for sample in family.samples
            ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families.values()))
    return generate_latest(registry)


class _Families:
    """A collector that yields families already collected elsewhere."""

    def __init__(self, families: Iterable[Metric]):
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families
