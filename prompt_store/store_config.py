"""The prompt store's limits and placement. The store owns them; server/config.py fills them from flags and
PROMPTSWAP_* variables and nests them in the server's configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class StoreConfigError(ValueError):
    """A store setting is invalid; the message names it."""


@dataclass(frozen=True)
class StoreConfig:
    """Limits and placement of the prompt store."""

    directory: Path = Path("./prompt-store")
    max_virtual_tokens: int = 512  # largest num_virtual_tokens an upload may declare
    max_file_bytes: int = 256 * 1024 * 1024  # largest adapter_model.safetensors accepted
    max_config_bytes: int = 64 * 1024  # largest adapter_config.json accepted
    versions_kept: int = 3  # old versions kept per task besides the active one
    host_cache_tasks: int = 1024  # task versions whose tensors stay in host memory
    host_cache_bytes: int = 2 * 1024**3  # and the bytes their tensors may take (pinned versions may exceed it)

    def __post_init__(self) -> None:
        _require(self.max_virtual_tokens > 0, "max_virtual_tokens must be positive")
        _require(self.max_file_bytes > 0 and self.max_config_bytes > 0, "file limits must be positive")
        _require(self.versions_kept >= 0, "versions_kept must be >= 0")
        _require(self.host_cache_tasks > 0, "host_cache_tasks must be positive")
        _require(self.host_cache_bytes > 0, "host_cache_bytes must be positive")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise StoreConfigError(message)
