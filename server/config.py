"""The one configuration object, built from CLI flags and PROMPTSWAP_* environment variables here and nowhere else."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

# StoreConfig belongs to the store; it is re-exported here because the server composes it.
from prompt_store.store_config import S3_SCHEME, S3Location, StoreConfig, StoreConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"
SCHEDULING_POLICIES = ("fair", "fcfs")  # admission order: weighted fair share between tenants, or arrival order


@dataclass(frozen=True)
class EngineConfig:
    """What the engine needs; sizes are fixed at start-up (the KV pool and prompt table are allocated once)."""

    block_size: int = 16  # tokens per KV cache block
    num_kv_blocks: int = 2048  # KV pool size, shared by requests and the registry's prefix blocks
    max_num_seqs: int = 128  # sequences running at once
    max_num_batched_tokens: int = 1024  # token budget of one step (prefill chunks + decodes)
    max_model_len: int = 4096  # prompt + virtual tokens + generated, per sequence
    prompt_table_rows: int = 8192  # device rows for embedding-kind soft prompts
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "auto"  # "auto" (float32 on CPU, bfloat16 on CUDA) | "float32" | "bfloat16" | "float16"
    use_reference_kernels: bool = False  # force the torch reference path even on CUDA
    fault_injection: str | None = None  # tests only: "run:MARKER" or "loop:MARKER" (engine/fault_injection.py)
    scheduling_policy: str = "fair"  # "fair": weighted fair share between tenants (engine/fair_share.py) | "fcfs"
    enable_prefix_caching: bool = True  # reuse cached K/V of full prompt blocks (engine/prefix_cache.py)

    def __post_init__(self) -> None:
        _require(
            self.block_size > 0 and self.block_size & (self.block_size - 1) == 0, "block_size must be a power of 2"
        )
        _require(self.num_kv_blocks > 0, "num_kv_blocks must be positive")
        _require(self.max_num_seqs > 0, "max_num_seqs must be positive")
        _require(self.max_num_batched_tokens > 0, "max_num_batched_tokens must be positive")
        _require(self.max_model_len > 0, "max_model_len must be positive")
        _require(self.prompt_table_rows > 0, "prompt_table_rows must be positive")
        _require(self.dtype in ("auto", "float32", "bfloat16", "float16"), f"unknown dtype {self.dtype!r}")
        _require(
            self.scheduling_policy in SCHEDULING_POLICIES,
            f"scheduling_policy must be one of {', '.join(SCHEDULING_POLICIES)}, not {self.scheduling_policy!r}",
        )


@dataclass(frozen=True)
class ServerConfig:
    model: str = DEFAULT_MODEL  # local model folder, .gguf file, or the embedded default's name
    model_id: str | None = None  # id users name the base model by; derived from `model` when None
    host: str = "127.0.0.1"
    port: int = 8000
    admin_token: str | None = None  # None disables the admin API (403)
    cache_dir: Path = Path.home() / ".cache" / "promptswap"  # converted default model lives here
    max_waiting: int = 256  # waiting requests before 429
    request_timeout_s: float = 600.0  # a request still running after this is aborted
    drain_timeout_s: float = 30.0  # SIGTERM: how long requests in flight may finish
    max_body_bytes: int = 300 * 1024 * 1024  # HTTP bodies above this get 413
    max_inference_body_bytes: int = 2_000_000  # and bodies of every route but the admin ones (TGI's default)
    max_new_tokens_limit: int = 4096  # the largest max_new_tokens a request may ask for
    max_prompt_chars: int = 100_000  # a prompt's characters (chat: all messages'), counted before tokenizing
    max_stop_chars: int = 256  # characters of one stop string (a request has at most 4)
    max_messages: int = 1024  # messages of one chat request
    tokenizer_threads: int = 2  # threads that tokenize and apply chat templates, off the event loop
    health_stall_timeout_s: float = 60.0  # /health is 503 when the engine has work and no step ended for this long
    require_api_key: bool = False  # inference needs a tenant's API key (or the admin token); else open, as in v1
    # JSON lines of every admin request; None: audit.log in the store directory (in cache_dir for an S3 store)
    audit_log: Path | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    store: StoreConfig = field(default_factory=StoreConfig)

    def __post_init__(self) -> None:
        _require(0 < self.port < 65536, "port must be in 1..65535")
        _require(self.max_waiting > 0, "max_waiting must be positive")
        _require(self.request_timeout_s > 0 and self.drain_timeout_s >= 0, "timeouts must be positive")
        _require(self.admin_token is None or len(self.admin_token) >= 8, "admin token must have at least 8 characters")
        for name in (
            "max_body_bytes",
            "max_inference_body_bytes",
            "max_new_tokens_limit",
            "max_prompt_chars",
            "max_stop_chars",
            "max_messages",
            "tokenizer_threads",
            "health_stall_timeout_s",
        ):
            _require(getattr(self, name) > 0, f"{name} must be positive")

    @property
    def audit_log_path(self) -> Path:
        if self.audit_log is not None:
            return self.audit_log
        # The log is this process's own file; an object store is shared by every replica, so it stays local.
        return (self.cache_dir if self.store.s3 is not None else self.store.directory) / "audit.log"

    @property
    def base_model_id(self) -> str:
        if self.model_id:
            return self.model_id
        if self.model == DEFAULT_MODEL:
            return DEFAULT_MODEL
        path = Path(self.model.rstrip("/"))
        return path.stem if path.suffix == ".gguf" else path.name


class ConfigError(ValueError):
    """A configuration value is invalid; the message names it."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# flag name -> (environment variable, type); every PROMPTSWAP_* variable is listed here.
_SERVER_ENV = {
    "model": ("PROMPTSWAP_MODEL", str),
    "model_id": ("PROMPTSWAP_MODEL_ID", str),
    "host": ("PROMPTSWAP_HOST", str),
    "port": ("PROMPTSWAP_PORT", int),
    "admin_token": ("PROMPTSWAP_ADMIN_TOKEN", str),
    "cache_dir": ("PROMPTSWAP_CACHE_DIR", Path),
    "max_waiting": ("PROMPTSWAP_MAX_WAITING", int),
    "request_timeout_s": ("PROMPTSWAP_REQUEST_TIMEOUT_S", float),
    "drain_timeout_s": ("PROMPTSWAP_DRAIN_TIMEOUT_S", float),
    "max_body_bytes": ("PROMPTSWAP_MAX_BODY_BYTES", int),
    "max_inference_body_bytes": ("PROMPTSWAP_MAX_INFERENCE_BODY_BYTES", int),
    "max_new_tokens_limit": ("PROMPTSWAP_MAX_NEW_TOKENS_LIMIT", int),
    "max_prompt_chars": ("PROMPTSWAP_MAX_PROMPT_CHARS", int),
    "max_stop_chars": ("PROMPTSWAP_MAX_STOP_CHARS", int),
    "max_messages": ("PROMPTSWAP_MAX_MESSAGES", int),
    "tokenizer_threads": ("PROMPTSWAP_TOKENIZER_THREADS", int),
    "health_stall_timeout_s": ("PROMPTSWAP_HEALTH_STALL_TIMEOUT_S", float),
    "require_api_key": ("PROMPTSWAP_REQUIRE_API_KEY", bool),
    "audit_log": ("PROMPTSWAP_AUDIT_LOG", Path),
}
_ENGINE_ENV = {
    "block_size": ("PROMPTSWAP_BLOCK_SIZE", int),
    "num_kv_blocks": ("PROMPTSWAP_KV_BLOCKS", int),
    "max_num_seqs": ("PROMPTSWAP_MAX_NUM_SEQS", int),
    "max_num_batched_tokens": ("PROMPTSWAP_MAX_BATCHED_TOKENS", int),
    "max_model_len": ("PROMPTSWAP_MAX_MODEL_LEN", int),
    "prompt_table_rows": ("PROMPTSWAP_PROMPT_TABLE_ROWS", int),
    "device": ("PROMPTSWAP_DEVICE", str),
    "dtype": ("PROMPTSWAP_DTYPE", str),
    "use_reference_kernels": ("PROMPTSWAP_REFERENCE_KERNELS", bool),
    "fault_injection": ("PROMPTSWAP_FAULT_INJECTION", str),
    "scheduling_policy": ("PROMPTSWAP_SCHEDULING_POLICY", str),
    "enable_prefix_caching": ("PROMPTSWAP_PREFIX_CACHING", bool),
}
_STORE_ENV = {
    "directory": ("PROMPTSWAP_STORE", str),  # a directory, or s3://BUCKET/PREFIX (_store_location)
    "s3_endpoint": ("PROMPTSWAP_S3_ENDPOINT", str),  # the S3-compatible server; unset: AWS
    "max_virtual_tokens": ("PROMPTSWAP_MAX_VIRTUAL_TOKENS", int),
    "max_file_bytes": ("PROMPTSWAP_MAX_FILE_BYTES", int),
    "versions_kept": ("PROMPTSWAP_VERSIONS_KEPT", int),
    "host_cache_tasks": ("PROMPTSWAP_HOST_CACHE_TASKS", int),
    "host_cache_bytes": ("PROMPTSWAP_HOST_CACHE_BYTES", int),
    "poll_interval_s": ("PROMPTSWAP_STORE_POLL_INTERVAL_S", float),  # a shared (S3) store's change polling
}


def _parse(kind: type, raw: str):
    if kind is bool:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return kind(raw)


def _from_env(table: dict, environ: dict[str, str]) -> dict:
    values = {}
    for name, (variable, kind) in table.items():
        if environ.get(variable, "") != "":
            try:
                values[name] = _parse(kind, environ[variable])
            except ValueError as exc:
                raise ConfigError(f"{variable}: {exc}") from None
    return values


def load_config(flags: dict | None = None, environ: dict[str, str] | None = None) -> ServerConfig:
    """Environment first, then explicit flags (None means 'not given') on top."""
    environ = dict(os.environ if environ is None else environ)
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    server = _from_env(_SERVER_ENV, environ)
    engine = _from_env(_ENGINE_ENV, environ)
    store = _from_env(_STORE_ENV, environ)
    if "store" in flags:
        store["directory"] = str(flags.pop("store"))
    _store_location(store)
    for name in [f.name for f in fields(EngineConfig)]:
        if name in flags:
            engine[name] = flags.pop(name)
    server.update(flags)
    try:
        store_config = StoreConfig(**store)
    except StoreConfigError as exc:
        raise ConfigError(str(exc)) from None
    return ServerConfig(**server, engine=EngineConfig(**engine), store=store_config)


def _store_location(store: dict) -> None:
    """`directory` as given -> a Path, or an S3Location in `s3` for an s3:// URL (with the endpoint)."""
    endpoint_url = store.pop("s3_endpoint", None)
    location = store.pop("directory", None)
    if location is None:
        return
    if not location.startswith(S3_SCHEME):
        store["directory"] = Path(location)
        return
    try:
        store["s3"] = S3Location.parse(location, endpoint_url)
    except StoreConfigError as exc:
        raise ConfigError(f"--store {location}: {exc}") from None


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="local model folder, .gguf file, or 'smollm2-135m-instruct' (default)")
    parser.add_argument("--model-id", dest="model_id", help="id of the base model in the API")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--store", help="prompt store: a directory, or s3://BUCKET/PREFIX (PROMPTSWAP_S3_ENDPOINT)")
    parser.add_argument("--admin-token", dest="admin_token")
    parser.add_argument(
        "--require-api-key",
        dest="require_api_key",
        action="store_const",
        const=True,
        help="inference routes need a tenant API key (Authorization: Bearer ps-...)",
    )
    parser.add_argument("--audit-log", dest="audit_log", type=Path, help="audit log file (default: STORE/audit.log)")
    parser.add_argument(
        "--no-prefix-caching",
        dest="enable_prefix_caching",
        action="store_const",
        const=False,
        help="compute every prompt in full instead of reusing cached K/V of prompt blocks seen before",
    )
