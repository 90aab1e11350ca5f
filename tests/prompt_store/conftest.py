"""Fixtures: every supported PEFT adapter type, saved by PEFT from tiny random Llama-GQA and GPT-2 models."""

from __future__ import annotations

import warnings

import pytest

from prompt_store.registry import PromptRegistry
from prompt_store.storage import PromptStorage
from server.config import StoreConfig
from tests.support.adapters import BASE_MODEL_ID, make_adapter, peft_configs, word_level_tokenizer
from tests.support.stored_files import BucketFiles, LocalFiles
from tests.support.tiny_models import TINY_MODELS, TINY_SHAPES


@pytest.fixture(scope="session")
def adapters(tmp_path_factory):
    """name ("llama/prefix", ...) -> SavedAdapter, for every model and adapter kind."""
    root = tmp_path_factory.mktemp("adapters")
    configs = peft_configs(word_level_tokenizer(root / "tokenizer"))
    saved = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model_name in TINY_MODELS:
            for kind, make_config in configs.items():
                folder = root / model_name / kind
                saved[f"{model_name}/{kind}"] = make_adapter(model_name, kind, make_config, folder)
    return saved


@pytest.fixture(scope="session")
def second_adapters(tmp_path_factory):
    """A second llama adapter per kind (other seed): a task's next version must differ from its first."""
    root = tmp_path_factory.mktemp("adapters2")
    configs = peft_configs(word_level_tokenizer(root / "tokenizer"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            f"llama/{kind}": make_adapter("llama", kind, configs[kind], root / kind, seed=1)
            for kind in ("prompt_tuning_random", "prefix", "multitask")
        }


@pytest.fixture
def llama_shape():
    return TINY_SHAPES["llama"]


@pytest.fixture
def store_config(tmp_path):
    return StoreConfig(directory=tmp_path / "store", versions_kept=2, host_cache_tasks=8)


@pytest.fixture
def store_backend() -> str:
    """Where make_registry keeps a durable store: "local" (the test's directory) or "s3" (a bucket of its own).
    A test runs on both with `@on_both_backends` (tests/support/seaweedfs.py)."""
    return "local"


@pytest.fixture
def s3_bucket(seaweedfs) -> str:
    """This test's own bucket on the session's SeaweedFS (started on first use)."""
    return seaweedfs.new_bucket()


@pytest.fixture
def make_storage(request, store_backend, store_config):
    """make_storage(config=None, backend=None): the durable store the test's registries share (one per call)."""

    def make(config: StoreConfig | None = None, backend: str | None = None):
        if (backend or store_backend) == "s3":
            return request.getfixturevalue("seaweedfs").storage(request.getfixturevalue("s3_bucket"))
        return PromptStorage((config or store_config).directory)

    return make


@pytest.fixture
def make_registry(store_config, llama_shape, make_storage):
    """make_registry(config=None, shape=None, durable=True, backend=None): a registry over the test's store, loaded
    (backend None: `store_backend`'s; durable=False: in memory)."""

    def make(
        config: StoreConfig | None = None, shape=None, durable: bool = True, backend: str | None = None
    ) -> PromptRegistry:
        config = config or store_config
        storage = make_storage(config, backend) if durable else None
        registry = PromptRegistry(shape or llama_shape, config, BASE_MODEL_ID, storage)
        registry.load()
        return registry

    return make


@pytest.fixture
def stored_files(request, store_backend, store_config):
    """The store's files as make_registry's stores keep them (tests/support/stored_files.py)."""
    if store_backend == "s3":
        client, bucket = request.getfixturevalue("seaweedfs").client(), request.getfixturevalue("s3_bucket")
        return BucketFiles(client, bucket, "store")
    return LocalFiles(store_config.directory)
