"""An in-process engine over a model folder and an in-memory registry, for engine-level tests."""

from __future__ import annotations

from pathlib import Path

import torch

from prompt_store.registry import PromptRegistry
from server.config import EngineConfig, StoreConfig
from server.engine.llm_engine import LLMEngine
from server.engine.request import GenerationRequest, SamplingParams
from server.model import load_model


def make_engine(model_dir: Path, store_config: StoreConfig | None = None, storage=None, **engine_options) -> LLMEngine:
    """`storage`: a PromptStorage on disk (with `store_config`'s limits), else the registry keeps files in memory."""
    loaded = load_model(str(model_dir), Path("/nonexistent-cache"), torch.device("cpu"), torch.float32)
    registry = PromptRegistry(loaded.shape, store_config or StoreConfig(), "base", storage)
    return LLMEngine(EngineConfig(**engine_options), loaded.model, loaded.tokenizer, registry)


def upload_folder(engine: LLMEngine, task: str, adapter_dir: Path):
    return engine.registry.upload(
        task,
        (adapter_dir / "adapter_config.json").read_bytes(),
        (adapter_dir / "adapter_model.safetensors").read_bytes(),
    )


def greedy(max_new_tokens: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens)


def run_to_completion(engine: LLMEngine, max_steps: int = 10_000) -> None:
    for _ in range(max_steps):
        if not engine.has_work():
            return
        engine.step()
    raise AssertionError("engine did not finish its work")


def serve_interleaved(engine: LLMEngine, cases, max_new_tokens: int) -> dict:
    """`cases`: (request id, task, subtask, prompt text). Requests join while others prefill and decode (a step
    after every third), then all run to the end; returns request id -> its handle."""
    handles = {}
    for i, (request_id, task, subtask, text) in enumerate(cases):
        ids = engine.tokenizer(text).input_ids
        handles[request_id] = engine.add_request(request(request_id, ids, max_new_tokens, task, subtask))
        if i % 3 == 0:
            engine.step()
    run_to_completion(engine)
    return handles


def request(
    request_id: str, token_ids, max_new_tokens: int, task: str | None = None, subtask: int = 0, **sampling
) -> GenerationRequest:
    return GenerationRequest(
        request_id,
        tuple(token_ids),
        SamplingParams(max_new_tokens=max_new_tokens, **sampling),
        task=task,
        subtask=subtask,
    )
