"""Load the one frozen base model the server serves: the embedded default, a transformers folder or a .gguf file."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from prompt_store.model_shape import ModelShape
from server.config import DEFAULT_MODEL
from server.model.architecture import served_architecture
from server.model.default_model import ensure_default_model
from server.model.errors import ModelLoadError
from server.model.gguf_conversion import cached_gguf_conversion
from server.model.shape import model_shape

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """The served base model. Invariant: in eval mode, no parameter requires grad, every id the tokenizer can
    produce is below `shape.vocab_size`."""

    model: PreTrainedModel  # the causal LM, on its device and in its dtype
    tokenizer: PreTrainedTokenizerBase  # the model's own tokenizer, chat template included when it has one
    model_path: Path  # the transformers folder it was loaded from (a cache folder for the default and .gguf)
    shape: ModelShape  # what uploaded prompts must agree with


def load_model(
    model: str,
    cache_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load `model` (the default's name, a transformers causal-LM folder or a .gguf file) for serving."""
    model_path = resolve_model_path(model, cache_dir)
    started = time.monotonic()
    loaded = load_model_folder(model_path, device, dtype, attn_implementation)
    logger.info("loaded %s (%s, %s) in %.1f s", model_path, device, dtype, time.monotonic() - started)
    return loaded


def resolve_model_path(model: str, cache_dir: Path) -> Path:
    """The transformers folder to load, converting the default or a .gguf file into the cache on first use."""
    if model == DEFAULT_MODEL:
        return ensure_default_model(cache_dir)
    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return cached_gguf_conversion(path, cache_dir)
    if (path / "config.json").is_file():
        return path
    raise ModelLoadError(
        f"model {model!r} is neither {DEFAULT_MODEL!r}, a .gguf file, nor a transformers model folder "
        f"(a directory with config.json)"
    )


def load_model_folder(
    model_path: Path, device: torch.device, dtype: torch.dtype, attn_implementation: str | None
) -> LoadedModel:
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True
        )
    except (ValueError, KeyError, OSError) as exc:
        raise ModelLoadError(f"cannot load {model_path} as a causal language model: {exc}") from exc
    # transformers types `to` through a decorator whose signature mypy reads as taking the model, not the device
    model.to(device).eval().requires_grad_(False)  # type: ignore[arg-type]
    served_architecture(model)  # refuses, now, what the engine would serve wrong
    shape = model_shape(model)
    _check_vocab(tokenizer, shape, model_path)
    return LoadedModel(model=model, tokenizer=tokenizer, model_path=model_path, shape=shape)


def _check_vocab(tokenizer: PreTrainedTokenizerBase, shape: ModelShape, model_path: Path) -> None:
    # Ids at or above vocab_size address soft-prompt rows, so a token id there would read a prompt instead.
    if len(tokenizer) > shape.vocab_size:
        raise ModelLoadError(
            f"{model_path}: the tokenizer has {len(tokenizer)} tokens but the embedding only {shape.vocab_size} rows"
        )
