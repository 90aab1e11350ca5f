"""Binding and running the Serve application: one ingress in front of N engine replicas."""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass

import ray
from ray import serve
from ray.serve import Application

from server.cluster.engine_replica import EngineReplica
from server.cluster.ingress import Ingress
from server.config import ConfigError, ServerConfig

log = logging.getLogger("promptswap.cluster")

APP_NAME = "promptswap"
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2  # requests and chunks are small; Ray's default would take 30% of memory
INGRESS_MAX_ONGOING_PER_REPLICA = 1024  # the ingress only forwards; the replicas' engines do the back-pressure


@dataclass(frozen=True)
class ClusterOptions:
    num_replicas: int = 2  # engine replicas, each a full engine with its own copy of the model
    ray_address: str | None = None  # an existing Ray cluster ("auto", "ray://HOST:PORT"); None: start a local one
    num_cpus: int | None = None  # CPUs of the local Ray (None: all of this machine's)
    replica_num_cpus: float = 1.0  # Ray resources each replica reserves
    replica_num_gpus: float = 0.0  # 1 for a replica per GPU

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ConfigError("--replicas must be at least 1")
        if self.replica_num_cpus < 0 or self.replica_num_gpus < 0:
            raise ConfigError("replica resources must not be negative")


def build_cluster_app(config: ServerConfig, options: ClusterOptions) -> Application:
    """Refuses a directory store for several replicas: only an object store (S3) is shared between processes."""
    if config.store.s3 is None and options.num_replicas > 1:
        raise ConfigError(
            f"--replicas {options.num_replicas} needs a shared prompt store: the directory {config.store.directory} "
            "belongs to one process; use --store s3://BUCKET/PREFIX (docs/deployment.md)"
        )
    # Each replica may hold everything its app admits, so that the app's own 429 (with Retry-After) is what a flood
    # meets, not an unbounded queue in Ray's router: prompts being prepared (the offload pool, up to max_waiting),
    # waiting (up to max_waiting) and running (max_num_seqs). Ray's own limit (default 5) must not bind first.
    max_ongoing = 2 * config.max_waiting + config.engine.max_num_seqs
    replicas = serve.deployment(
        name="EngineReplica",
        num_replicas=options.num_replicas,
        max_ongoing_requests=max_ongoing,
        ray_actor_options={"num_cpus": options.replica_num_cpus, "num_gpus": options.replica_num_gpus},
        health_check_period_s=5,
    )(EngineReplica).bind(config)
    ingress = serve.deployment(
        name="Ingress",
        num_replicas=1,
        max_ongoing_requests=INGRESS_MAX_ONGOING_PER_REPLICA * options.num_replicas,
        ray_actor_options={"num_cpus": 0},
    )(Ingress)
    return ingress.bind(replicas, config.base_model_id)


def start_cluster(config: ServerConfig, options: ClusterOptions) -> None:
    """Connects to (or starts) Ray, starts Serve's HTTP proxy on config.host:port, deploys, returns when running."""
    app = build_cluster_app(config, options)
    if not ray.is_initialized():
        if options.ray_address is None:
            ray.init(num_cpus=options.num_cpus, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES)
        else:
            ray.init(address=options.ray_address)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(app, name=APP_NAME, route_prefix="/")
    log.info("serving %d replicas on http://%s:%d", options.num_replicas, config.host, config.port)


def run_cluster(config: ServerConfig, options: ClusterOptions) -> int:
    """`promptswap serve-cluster`: serve until interrupted, then shut Serve (and a Ray it started) down."""
    start_cluster(config, options)
    signal.signal(signal.SIGTERM, _interrupt)  # a supervisor's stop ends the cluster as Ctrl-C does
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("interrupted: shutting the cluster down")
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
