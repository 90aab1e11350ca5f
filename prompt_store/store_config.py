"""The prompt store's limits and placement. The store owns them; server/config.py fills them from flags and
PROMPTSWAP_* variables and nests them in the server's configuration."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


class StoreConfigError(ValueError):
    """A store setting is invalid; the message names it."""


# A bucket name as S3 allows it (3-63 lower-case letters, digits, dots, hyphens; a letter or digit at each end).
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
S3_SCHEME = "s3://"


@dataclass(frozen=True)
class S3Location:
    """Where an object-storage store lives: `s3://BUCKET/PREFIX` on the endpoint (None: AWS itself)."""

    bucket: str
    prefix: str = ""  # key prefix without leading or trailing "/"; "" keeps the store at the bucket's root
    endpoint_url: str | None = None  # PROMPTSWAP_S3_ENDPOINT, e.g. http://127.0.0.1:8333

    def __post_init__(self) -> None:
        _require(_BUCKET_NAME.fullmatch(self.bucket) is not None, f"invalid S3 bucket name {self.bucket!r}")
        _require(self.prefix == self.prefix.strip("/") and "//" not in self.prefix, "invalid S3 key prefix")

    @classmethod
    def parse(cls, url: str, endpoint_url: str | None = None) -> S3Location:
        bucket, _, prefix = url.removeprefix(S3_SCHEME).partition("/")
        return cls(bucket, prefix.strip("/"), endpoint_url)

    @property
    def url(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{S3_SCHEME}{self.bucket}"


@dataclass(frozen=True)
class StoreConfig:
    """Limits and placement of the prompt store."""

    directory: Path = Path("./prompt-store")  # the local store; unused when `s3` is set
    s3: S3Location | None = None  # the store on S3-compatible object storage instead of `directory`
    max_virtual_tokens: int = 512  # largest num_virtual_tokens an upload may declare
    max_file_bytes: int = 256 * 1024 * 1024  # largest adapter_model.safetensors accepted
    max_config_bytes: int = 64 * 1024  # largest adapter_config.json accepted
    versions_kept: int = 3  # old versions kept per task besides the active one
    host_cache_tasks: int = 1024  # task versions whose tensors stay in host memory
    host_cache_bytes: int = 2 * 1024**3  # and the bytes their tensors may take (pinned versions may exceed it)
    poll_interval_s: float = 0.5  # how often a shared (S3) store is asked for other replicas' changes

    def __post_init__(self) -> None:
        _require(self.max_virtual_tokens > 0, "max_virtual_tokens must be positive")
        _require(self.max_file_bytes > 0 and self.max_config_bytes > 0, "file limits must be positive")
        _require(self.versions_kept >= 0, "versions_kept must be >= 0")
        _require(self.host_cache_tasks > 0, "host_cache_tasks must be positive")
        _require(self.host_cache_bytes > 0, "host_cache_bytes must be positive")
        _require(0 < self.poll_interval_s <= 3600, "poll_interval_s must be in (0, 3600]")

    @property
    def location(self) -> str:
        """The store as the user named it: a directory or an s3:// URL."""
        return self.s3.url if self.s3 is not None else str(self.directory)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise StoreConfigError(message)
