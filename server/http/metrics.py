"""Prometheus metrics; every name in the API contract's Metrics section, prefixed `promptswap_`.

Request-side metrics are observed as requests finish; engine and registry state (the engine's batch-size histogram
included) is read when /metrics is scraped, without changing it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from server.engine import histogram as engine_histogram
from server.engine.request import EngineStats, FinishReason, RequestOutput

disable_created_metrics()  # `*_created` series double the output and no dashboard reads them

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_TASK_LABELS = 20  # distinct `task` label values; later tasks are counted as "other"
MAX_TENANT_LABELS = 50  # distinct `tenant` label values; later tenants are counted as "other"
ANONYMOUS_TENANT_LABEL = "anonymous"  # the `tenant` label of anonymous and operator traffic
PRIVATE_TASK_LABEL = "private"  # the `task` label of every tenant-owned task: names of those never leave the tenant
TOKEN_KINDS = ("prompt", "generated")
RATE_LIMIT_REASONS = ("concurrency", "tokens")
UPLOAD_RESULTS = ("created", "updated", "rejected")

# fmt: off
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
                    1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
_PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
                      0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
# fmt: on
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_UPLOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_NO_BATCHES = engine_histogram.Histogram(engine_histogram.BATCH_SIZE_BUCKETS)  # before the engine is loaded


class TaskLabels:
    """Bounds the `task` label: the first `max_labels` tasks seen keep their name, later ones become "other"
    (the base model always has its own).

    First-come rather than a moving top-N, because a counter's series must not change label under it.
    """

    def __init__(self, max_labels: int = MAX_TASK_LABELS):
        self._max_labels = max_labels
        self._labels: set[str] = set()

    def __call__(self, task: str) -> str:
        if task in self._labels:
            return task
        if len(self._labels) < self._max_labels:
            self._labels.add(task)
            return task
        return "other"


class Metrics:
    def __init__(self, base_model_id: str):
        self._base_model_id = base_model_id
        self._task_label = TaskLabels()
        self.tenant_label = TaskLabels(MAX_TENANT_LABELS)  # tenant name -> its label value
        self.registry = CollectorRegistry()
        self._state = _EngineStateCollector()
        self.registry.register(self._state)

        def counter(name: str, documentation: str, labels: list[str]) -> Counter:
            return Counter(f"promptswap_{name}", documentation, labels, registry=self.registry)

        def histogram(name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"promptswap_{name}", documentation, buckets=buckets, registry=self.registry)

        self.requests = counter("requests", "HTTP requests by route and status", ["route", "status"])
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens processed", ["task"])
        self.generation_tokens = counter("generation_tokens", "Tokens generated", ["task"])
        self.uploads = counter("prompt_uploads", "Prompt uploads by result", ["result"])
        self.time_to_first_token = histogram(
            "time_to_first_token_seconds", "Arrival to first generated token", _LATENCY_BUCKETS
        )
        self.time_per_output_token = histogram(
            "time_per_output_token_seconds", "Decode time per token after the first", _PER_TOKEN_BUCKETS
        )
        self.e2e_latency = histogram("e2e_request_latency_seconds", "Arrival to last token", _E2E_BUCKETS)
        self.queue_time = histogram("request_queue_time_seconds", "Arrival to first scheduled", _LATENCY_BUCKETS)
        self.upload_seconds = histogram("prompt_upload_seconds", "Upload validation and storage time", _UPLOAD_BUCKETS)
        self.tenant_requests = counter(
            "tenant_requests", "Inference requests by tenant and status", ["tenant", "status"]
        )
        self.tenant_tokens = counter("tenant_tokens", "Tokens served by tenant (virtual included)", ["tenant", "kind"])
        self.tenant_rate_limited = counter(
            "tenant_rate_limited", "Requests refused by a tenant's quota", ["tenant", "reason"]
        )
        self.tenant_queue_time = Histogram(
            "promptswap_tenant_queue_time_seconds",
            "Arrival to first scheduled, by tenant",
            ["tenant"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Series that exist (at 0) before the first request, so dashboards and alerts see them from the start.
        self.prompt_tokens.labels(base_model_id)
        self.generation_tokens.labels(base_model_id)
        for result in UPLOAD_RESULTS:
            self.uploads.labels(result)
        for kind in TOKEN_KINDS:
            self.tenant_tokens.labels(ANONYMOUS_TENANT_LABEL, kind)
        for reason in RATE_LIMIT_REASONS:
            self.tenant_rate_limited.labels(ANONYMOUS_TENANT_LABEL, reason)
        self.tenant_queue_time.labels(ANONYMOUS_TENANT_LABEL)

    def label_of_tenant(self, tenant: str | None) -> str:
        return self.tenant_label(tenant) if tenant is not None else ANONYMOUS_TENANT_LABEL

    def observe_finished(
        self,
        final: RequestOutput,
        started_at: float,
        first_token_at: float | None,
        tenant_label: str,
        is_shared_task: bool,
    ) -> None:
        """Record a finished request: its tokens always, its latencies only when it was not aborted (engine
        timings when it sent them, else the HTTP layer's own clock)."""
        if not final.task:
            task = self._base_model_id
        else:
            task = self._task_label(final.task) if is_shared_task else PRIVATE_TASK_LABEL
        self.prompt_tokens.labels(task).inc(final.num_prompt_tokens)
        self.generation_tokens.labels(task).inc(final.num_generated_tokens)
        if final.finish_reason is FinishReason.ABORTED:
            return
        timings = final.timings
        arrival, finished = (timings.arrival_time, timings.finished_time) if timings else (started_at, time.monotonic())
        first_token = timings.first_token_time if timings else first_token_at
        self.e2e_latency.observe(finished - arrival)
        if timings and timings.first_scheduled_time is not None:
            self.queue_time.observe(timings.first_scheduled_time - arrival)
            self.tenant_queue_time.labels(tenant_label).observe(timings.first_scheduled_time - arrival)
        if first_token is not None:
            self.time_to_first_token.observe(first_token - arrival)
            if final.num_generated_tokens > 1:
                self.time_per_output_token.observe((finished - first_token) / (final.num_generated_tokens - 1))

    def render(self, engine_stats: EngineStats | None, registry_stats) -> bytes:
        """The exposition text, with engine and registry state taken just now (None: not loaded yet)."""
        self._state.update(engine_stats, registry_stats)
        return generate_latest(self.registry)


class _EngineStateCollector(Collector):
    """Gauges and engine-owned counters and histograms, from the snapshots taken at scrape time."""

    def __init__(self):
        self._engine_stats: EngineStats | None = None
        self._registry_stats = None

    def update(self, engine_stats: EngineStats | None, registry_stats) -> None:
        self._engine_stats, self._registry_stats = engine_stats, registry_stats

    def collect(self) -> Iterable:
        engine, registry = self._engine_stats, self._registry_stats
        yield _gauge("num_requests_running", "Requests in the running batch", engine.num_running if engine else 0)
        yield _gauge("num_requests_waiting", "Requests waiting for admission", engine.num_waiting if engine else 0)
        yield _histogram("batch_size", "Sequences per engine step", engine.batch_sizes if engine else _NO_BATCHES)
        yield _gauge(
            "kv_cache_usage_ratio", "Fraction of KV cache blocks in use", engine.kv_cache_usage if engine else 0.0
        )
        yield _gauge("registry_tasks", "Tasks in the prompt registry", registry.num_tasks if registry else 0)
        yield _gauge(
            "registry_resident_tasks",
            "Task versions resident on the device",
            engine.num_resident_tasks if engine else 0,
        )
        yield _gauge(
            "registry_damaged_entries",
            "Prompt store entries found damaged or unfit, at start-up or when loaded (each one is in the log)",
            registry.num_damaged_entries if registry else 0,
        )
        loads = CounterMetricFamily("promptswap_registry_loads", "Prompt loads by source tier", labels=["tier"])
        for tier, count in sorted((registry.loads_by_tier if registry else {}).items()):
            loads.add_metric([tier], count)
        yield loads
        yield CounterMetricFamily(
            "promptswap_registry_evictions",
            "Prompts evicted from a cache tier",
            value=registry.evictions if registry else 0,
        )
        yield CounterMetricFamily(
            "promptswap_engine_step_failures",
            "Engine steps whose run or sample raised; only the requests at fault failed",
            value=engine.num_step_failures if engine else 0,
        )
        yield CounterMetricFamily(
            "promptswap_prefix_cache_queried_tokens",
            "Tokens admitted requests needed in the KV cache (each admission, a resumed preempted one included)",
            value=engine.num_prefix_cache_queried_tokens if engine else 0,
        )
        yield CounterMetricFamily(
            "promptswap_prefix_cache_hit_tokens",
            "Of the queried tokens, those found in the prefix cache and not computed",
            value=engine.num_prefix_cache_hit_tokens if engine else 0,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"promptswap_{name}", documentation, value=value)


def _histogram(name: str, documentation: str, histogram: engine_histogram.Histogram) -> HistogramMetricFamily:
    buckets = [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]
    return HistogramMetricFamily(f"promptswap_{name}", documentation, buckets=buckets, sum_value=histogram.total)
