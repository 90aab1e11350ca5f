"""Start-up: the model, the durable prompt store, and the engine over both."""

from __future__ import annotations

import logging

from prompt_store.errors import StorageError
from prompt_store.registry import PromptRegistry
from prompt_store.storage import PromptStorage
from prompt_store.storage_interface import StorageBackend
from prompt_store.store_config import StoreConfig
from server.config import ServerConfig
from server.engine import attention
from server.engine.llm_engine import LLMEngine
from server.model import load_model, resolve_device, resolve_dtype

log = logging.getLogger("promptswap.engine")


def build_engine(config: ServerConfig):
    """Returns (engine, registry, tokenizer)."""
    device = resolve_device(config.engine.device)
    dtype = resolve_dtype(config.engine.dtype, device)
    loaded = load_model(config.model, config.cache_dir, device, dtype, attention.register())
    registry = PromptRegistry(loaded.shape, config.store, config.base_model_id, open_storage(config.store))
    for problem in registry.load():
        log.warning("prompt store: %s", problem)
    engine = LLMEngine(config.engine, loaded.model, loaded.tokenizer, registry)
    log.info(
        "engine ready: %s on %s (%s), %d KV blocks of %d tokens",
        config.base_model_id,
        device,
        dtype,
        config.engine.num_kv_blocks,
        config.engine.block_size,
    )
    return engine, registry, loaded.tokenizer


def open_storage(store: StoreConfig) -> StorageBackend:
    """The local directory (locked by this process), or the object store that replicas share."""
    if store.s3 is None:
        return PromptStorage(store.directory)
    try:
        from prompt_store.s3_storage import S3Storage  # boto3 comes with the optional extra `s3`
    except ImportError as exc:
        raise StorageError(f"{store.location} needs boto3: pip install 'promptswap[s3]' ({exc})") from None
    return S3Storage(store.s3)
