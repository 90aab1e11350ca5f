"""Turn a .gguf file into a float32 transformers folder, once, cached under the promptswap cache."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import gguf
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from server.model.atomic_dir import atomic_directory
from server.model.errors import ModelLoadError

logger = logging.getLogger(__name__)


def cached_gguf_conversion(gguf_path: Path, cache_dir: Path) -> Path:
    """The converted folder of a user's .gguf file, keyed by its name, size and mtime (a changed file reconverts)."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    model_dir = cache_dir / "models" / f"gguf-{gguf_path.stem}-{key}"
    if not model_dir.is_dir():
        convert_into(gguf_path, model_dir)
    return model_dir


def convert_into(gguf_path: Path, model_dir: Path) -> None:
    """Convert `gguf_path` and publish the result as `model_dir` atomically (an interrupted run leaves nothing)."""
    started = time.monotonic()
    with atomic_directory(model_dir) as staging:
        convert_gguf(gguf_path, staging)
    logger.info("converted %s into %s in %.1f s", gguf_path.name, model_dir, time.monotonic() - started)


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the weights to float32 and save model and tokenizer (chat template included) in `out_dir`."""
    folder, name = str(gguf_path.parent), gguf_path.name
    logger.info("dequantizing %s to float32 (takes a while; done once)", name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            dtype=torch.float32,
            # Unpack every weight now: the packed GGUF layers cannot be saved, and the server computes in float32.
            quantization_config=GgufConfig(dequantize=True),
        )
    except (ValueError, KeyError, OSError) as exc:
        raise ModelLoadError(f"cannot convert {gguf_path}: {exc}") from exc
    ensure_chat_template(tokenizer, gguf_path)
    logger.info("saving the converted model to %s", out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def ensure_chat_template(tokenizer, gguf_path: Path) -> None:
    """Give `tokenizer` the chat template stored in the GGUF metadata when the converted tokenizer lacks one."""
    # Chat completions need the template; older transformers GGUF tokenizers dropped it, the file still has it.
    if tokenizer.chat_template:
        return
    template = _metadata_chat_template(gguf_path)
    if template:
        tokenizer.chat_template = template
    else:
        logger.warning("%s has no chat template; chat completions will be refused", gguf_path.name)


def _metadata_chat_template(gguf_path: Path) -> str | None:
    field = gguf.GGUFReader(gguf_path).fields.get("tokenizer.chat_template")
    return None if field is None else str(field.contents())
