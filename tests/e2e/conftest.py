"""What the end-to-end modules share: one real server per module, a client to it, adapters and PEFT's references.

A module tunes them with module-level names: SERVER_ENV (its server's environment), CLIENT_TIMEOUT_S, ADAPTERS
(name -> (peft_type, training options)), PROMPT and MAX_NEW_TOKENS (what `references` asks PEFT for). The server's
store is a local directory; a module overriding `store_backend` with `params=BACKENDS` runs on a bucket too. Modules
whose tests each start their own server (drain, kill -9, start-up) use `start_server` directly.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from transformers import AutoTokenizer

from tests.e2e.served_store import ServedStore, served_store
from tests.e2e.server_process import start_server
from tests.support.reference import peft_greedy


@pytest.fixture(scope="module")
def store_backend() -> str:
    """Where the module's server keeps its store: "local" (a directory), or "s3" (a bucket of the session's
    SeaweedFS)."""
    return "local"


@pytest.fixture(scope="module")
def store(request, store_backend, tmp_path_factory) -> ServedStore:
    work_dir = tmp_path_factory.mktemp(f"{request.module.__name__.rpartition('.')[2]}-{store_backend}")
    return served_store(request, store_backend, work_dir)


@pytest.fixture(scope="module")
def server(request, store, tiny_llama_dir):
    server = start_server(tiny_llama_dir, store.work_dir, env=getattr(request.module, "SERVER_ENV", {}) | store.env)
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def client(request, server):
    with httpx.Client(base_url=server.url, timeout=getattr(request.module, "CLIENT_TIMEOUT_S", 120)) as client:
        yield client


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def adapters(request, tiny_llama_dir, adapter_factory) -> dict[str, Path]:
    """name -> adapter folder; the session trains each (peft_type, options) once, whichever module asks first."""
    table = request.module.ADAPTERS
    return {name: adapter_factory(tiny_llama_dir, peft_type, **options) for name, (peft_type, options) in table.items()}


@pytest.fixture(scope="module")
def references(request, adapters, tiny_llama_dir, tokenizer) -> dict[str, list[int]]:
    """name -> PEFT's greedy tokens for the module's PROMPT; every adapter must be told apart by them."""
    input_ids = tokenizer(request.module.PROMPT).input_ids
    max_new_tokens = request.module.MAX_NEW_TOKENS
    tokens = {name: peft_greedy(tiny_llama_dir, path, input_ids, max_new_tokens) for name, path in adapters.items()}
    assert len({tuple(t) for t in tokens.values()}) == len(tokens), "every adapter must give a different output"
    return tokens
