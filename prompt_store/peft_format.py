"""Reads the two files PEFT `save_pretrained` writes into the normalized PromptSpec.

Layouts, checked against peft 0.21.2 (peft_model.py get_prompt / get_prompt_embedding_to_save, tuners/*/model.py):
- Every prompt-learning type saves `prompt_embeddings` (no key prefix). For P_TUNING and PREFIX_TUNING with
  `prefix_projection` it is the encoder's *output*, which is what `PeftModel.from_pretrained` (inference mode) uses
  directly, so nothing is run at serve time.
- PREFIX_TUNING: `[p, L * 2 * token_dim]` viewed as `[p, L * 2, H, D]` (H = config num_attention_heads, which PEFT sets
  to the KV head count for GQA models); get_prompt permutes to `[L * 2, B, H, p, D]` and splits into chunks of 2, so
  layer l's key is slot 2l and its value slot 2l + 1.
- MULTITASK_PROMPT_TUNING: sub-task t's rows are `prompt_embeddings * (prefix_task_cols[t] @ prefix_task_rows[t])`.
- SEQ_CLS / TOKEN_CLS: the same prompt tensors plus the classifier head (prompt_store/classifier_head.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from prompt_store.classifier_head import read_head, split_head_tensors
from prompt_store.errors import InvalidPromptError, PromptTooLargeError
from prompt_store.model_shape import ModelShape
from prompt_store.peft_file_names import CONFIG_FILE, MODEL_FILE, PICKLED_MODEL_FILE
from prompt_store.safetensors_reader import PICKLE_MESSAGE, read_safetensors
from prompt_store.spec import PromptSpec
from prompt_store.store_config import StoreConfig
from prompt_store.validation import (
    AdapterConfig,
    check_file_sizes,
    check_finite,
    check_finite_in,
    check_normalized_size,
    check_tensor_names,
    check_tensor_shape,
    parse_adapter_config,
)


def read_peft_files(config_bytes: bytes, model_bytes: bytes, shape: ModelShape, limits: StoreConfig) -> PromptSpec:
    """Validate PEFT's adapter_config.json and adapter_model.safetensors bytes and normalize them.

    Raises only PromptStoreError subclasses (InvalidPromptError, PromptTooLargeError), whatever the bytes hold.
    """
    check_file_sizes(config_bytes, model_bytes, limits)
    config = parse_adapter_config(config_bytes, shape, limits)
    tensors = read_safetensors(model_bytes)
    head_tensors: dict[str, torch.Tensor] = {}
    if config.task_kind.is_classification:  # a CAUSAL_LM adapter's head tensors stay, and are refused as unexpected
        tensors, head_tensors = split_head_tensors(tensors)
    if config.peft_type == "PREFIX_TUNING":
        tensor = _prefix_kv(config, tensors, shape)
    elif config.peft_type == "MULTITASK_PROMPT_TUNING":
        tensor = _multitask_rows(config, tensors, shape, limits)
    else:
        tensor = _embedding_rows(config, tensors, shape)
    check_finite("prompt", tensor)  # a product of finite values can still overflow float32
    check_finite_in(_served_tensor_name(config), tensor, getattr(torch, shape.serving_dtype))
    head = read_head(config, head_tensors, shape) if config.task_kind.is_classification else None
    return PromptSpec(
        config.peft_type,
        config.kind,
        config.num_virtual_tokens,
        tensor.contiguous(),
        task_kind=config.task_kind,
        head=head,
    )


def read_peft_folder(path: Path | str, shape: ModelShape, limits: StoreConfig) -> PromptSpec:
    """Read a folder written by `PeftModel.save_pretrained`."""
    folder = Path(path)
    model_path = folder / MODEL_FILE
    if not model_path.is_file() and (folder / PICKLED_MODEL_FILE).is_file():
        raise InvalidPromptError(PICKLE_MESSAGE)
    config_bytes = _read_limited(folder / CONFIG_FILE, limits.max_config_bytes)
    model_bytes = _read_limited(model_path, limits.max_file_bytes)
    return read_peft_files(config_bytes, model_bytes, shape, limits)


def _read_limited(path: Path, limit: int) -> bytes:
    # stat before reading so an oversized file is refused without being loaded into memory
    try:
        size = path.stat().st_size
        if size > limit:
            raise PromptTooLargeError(f"{path.name} is {size} bytes; the limit is {limit}")
        return path.read_bytes()
    except OSError as exc:
        raise InvalidPromptError(f"{path.name} could not be read: {exc.strerror or exc}") from None


def _served_tensor_name(config: AdapterConfig) -> str:
    if config.peft_type == "MULTITASK_PROMPT_TUNING":
        return "prompt_embeddings * (prefix_task_cols @ prefix_task_rows)"  # what is served is the product
    return "prompt_embeddings"


def _float32(tensor: torch.Tensor) -> torch.Tensor:
    # PEFT loads saved weights into float32 prompt-encoder parameters, so widening first matches its arithmetic.
    return tensor.to(torch.float32)


def _embedding_rows(config: AdapterConfig, tensors: dict[str, torch.Tensor], shape: ModelShape) -> torch.Tensor:
    check_tensor_names(tensors, {"prompt_embeddings"})
    rows = tensors["prompt_embeddings"]
    check_tensor_shape(
        "prompt_embeddings", rows, (config.num_virtual_tokens, shape.hidden_size), "num_virtual_tokens x hidden size"
    )
    check_finite("prompt_embeddings", rows)
    return _float32(rows).unsqueeze(0)  # [1, p, hidden]


def _prefix_kv(config: AdapterConfig, tensors: dict[str, torch.Tensor], shape: ModelShape) -> torch.Tensor:
    check_tensor_names(tensors, {"prompt_embeddings"})
    flat = tensors["prompt_embeddings"]
    p, num_layers, num_heads, head_dim = config.num_virtual_tokens, shape.num_layers, shape.num_kv_heads, shape.head_dim
    expected = (p, num_layers * 2 * num_heads * head_dim)
    check_tensor_shape("prompt_embeddings", flat, expected, "num_virtual_tokens x (layers * 2 * KV heads * head dim)")
    check_finite("prompt_embeddings", flat)
    # [p, L*2, H, D] in PEFT's view is [p, L, 2, H, D] here: slot 2l is layer l's key, 2l+1 its value.
    per_layer = _float32(flat).view(p, num_layers, 2, num_heads, head_dim)
    return per_layer.permute(1, 2, 0, 3, 4).unsqueeze(0)  # [1, L, 2, p, H, D]


def _multitask_rows(
    config: AdapterConfig, tensors: dict[str, torch.Tensor], shape: ModelShape, limits: StoreConfig
) -> torch.Tensor:
    check_tensor_names(tensors, {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"})
    shared, cols, rows = tensors["prompt_embeddings"], tensors["prefix_task_cols"], tensors["prefix_task_rows"]
    p, hidden = config.num_virtual_tokens, shape.hidden_size
    check_tensor_shape("prompt_embeddings", shared, (p, hidden), "num_virtual_tokens x hidden size")
    num_tasks, num_ranks = _multitask_dims(config, cols)
    check_tensor_shape(
        "prefix_task_cols", cols, (num_tasks, p, num_ranks), "num_tasks x num_virtual_tokens x num_ranks"
    )
    check_tensor_shape("prefix_task_rows", rows, (num_tasks, num_ranks, hidden), "num_tasks x num_ranks x hidden size")
    for name in ("prompt_embeddings", "prefix_task_cols", "prefix_task_rows"):
        check_finite(name, tensors[name])
    check_normalized_size(num_tasks * p * hidden, limits)
    shared, cols, rows = _float32(shared), _float32(cols), _float32(rows)
    # One [1, p, r] @ [1, r, hidden] product per sub-task, the shapes PEFT's forward uses, so results match bit for bit.
    variants = [shared.unsqueeze(0) * torch.matmul(cols[t : t + 1], rows[t : t + 1]) for t in range(num_tasks)]
    return torch.cat(variants)  # [num_tasks, p, hidden]


def _multitask_dims(config: AdapterConfig, cols: torch.Tensor) -> tuple[int, int]:
    if cols.dim() != 3:
        raise InvalidPromptError(
            f"tensor 'prefix_task_cols' has {cols.dim()} dimensions; expected 3 (tasks, tokens, ranks)"
        )
    num_tasks = config.num_tasks if config.num_tasks is not None else cols.shape[0]
    num_ranks = config.num_ranks if config.num_ranks is not None else cols.shape[2]
    if num_tasks < 1 or num_ranks < 1:
        raise InvalidPromptError(
            f"tensor 'prefix_task_cols' has shape {list(cols.shape)}; tasks and ranks must be >= 1"
        )
    return num_tasks, num_ranks
