"""Upload checks: the config's fields, the tensors' names, shapes and values, and the configured size limits.

Every check raises InvalidPromptError (or PromptTooLargeError) whose message names the field or tensor, what was
expected and what was found, so a user can fix the upload without reading our code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prompt_store.errors import InvalidPromptError, PromptTooLargeError
from prompt_store.json_text import loads_strict, show
from prompt_store.labels import LABELS_FIELD, parse_labels
from prompt_store.model_shape import ModelShape
from prompt_store.spec import PromptKind, TaskKind
from prompt_store.store_config import StoreConfig

# peft_type -> how the server applies it
SUPPORTED_PEFT_TYPES = {
    "PROMPT_TUNING": PromptKind.EMBEDDING,
    "P_TUNING": PromptKind.EMBEDDING,
    "PREFIX_TUNING": PromptKind.PREFIX_KV,
    "MULTITASK_PROMPT_TUNING": PromptKind.EMBEDDING,
}
# task_type -> what the task serves
SUPPORTED_TASK_TYPES = {
    "CAUSAL_LM": TaskKind.GENERATE,
    "SEQ_CLS": TaskKind.CLASSIFY_SEQUENCE,
    "TOKEN_CLS": TaskKind.CLASSIFY_TOKENS,
}
# The model modules a classification adapter may save: its head (`score` in Llama-style models, `classifier` in
# others). PEFT lists both, often twice, whatever the model has; any other module would change the base model.
HEAD_MODULES = frozenset({"score", "classifier"})
# A normalized float32 prompt may be twice the file limit: a float16 file at the limit doubles when widened.
NORMALIZED_BYTES_FACTOR = 2


@dataclass(frozen=True)
class AdapterConfig:
    """The fields of adapter_config.json the server relies on, type-checked; None where the file leaves them out."""

    peft_type: str  # a key of SUPPORTED_PEFT_TYPES
    num_virtual_tokens: int  # rows of the prompt, 1..max_virtual_tokens
    token_dim: int | None  # hidden size (embedding kinds) or KV heads x head dim (prefix)
    num_layers: int | None
    num_attention_heads: int | None  # for prefix tuning PEFT stores the KV head count here
    num_tasks: int | None  # multitask only
    num_ranks: int | None  # multitask only
    task_kind: TaskKind = TaskKind.GENERATE  # from task_type
    labels: tuple[str, ...] | None = None  # the config's `labels` (classification only); None: LABEL_0, LABEL_1, ...

    @property
    def kind(self) -> PromptKind:
        return SUPPORTED_PEFT_TYPES[self.peft_type]


def check_file_sizes(config_bytes: bytes, model_bytes: bytes, limits: StoreConfig) -> None:
    if len(config_bytes) > limits.max_config_bytes:
        raise PromptTooLargeError(
            f"adapter_config.json is {len(config_bytes)} bytes; the limit is {limits.max_config_bytes}"
        )
    if len(model_bytes) > limits.max_file_bytes:
        raise PromptTooLargeError(
            f"adapter_model.safetensors is {len(model_bytes)} bytes; the limit is {limits.max_file_bytes}"
        )


def check_normalized_size(num_elements: int, limits: StoreConfig) -> None:
    """Multitask prompts expand at read time (tasks x rows x hidden); bound that before computing it."""
    limit = limits.max_file_bytes * NORMALIZED_BYTES_FACTOR
    if num_elements * 4 > limit:
        raise PromptTooLargeError(f"the prompt expands to {num_elements * 4} bytes of float32; the limit is {limit}")


def parse_adapter_config(config_bytes: bytes, shape: ModelShape, limits: StoreConfig) -> AdapterConfig:
    """Parse and check adapter_config.json against the served model and the limits."""
    raw = _load_json_object(config_bytes)
    task_kind = _task_kind(raw)
    peft_type = _peft_type(raw)
    config = AdapterConfig(
        peft_type=peft_type,
        num_virtual_tokens=_num_virtual_tokens(raw, limits),
        token_dim=_optional_positive_int(raw, "token_dim"),
        num_layers=_optional_positive_int(raw, "num_layers"),
        num_attention_heads=_optional_positive_int(raw, "num_attention_heads"),
        num_tasks=_optional_positive_int(raw, "num_tasks"),
        num_ranks=_optional_positive_int(raw, "num_ranks"),
        task_kind=task_kind,
        labels=_labels(raw, task_kind),
    )
    _check_submodules(raw)
    if task_kind.is_classification:
        _check_head_modules_to_save(raw)
    else:
        _check_no_modules_to_save(raw)
    _check_model_dims(config, shape)
    return config


def check_tensor_names(tensors: dict[str, torch.Tensor], expected_names: set[str]) -> None:
    missing = sorted(expected_names - set(tensors))
    if missing:
        raise InvalidPromptError(
            f"adapter_model.safetensors has no tensor {missing[0]!r}; PEFT saves {sorted(expected_names)}"
        )
    unexpected = sorted(set(tensors) - expected_names)
    if unexpected:
        raise InvalidPromptError(
            f"adapter_model.safetensors has unexpected tensor {unexpected[0][:64]!r}; only {sorted(expected_names)} "
            "are served (an adapter that also changes model weights cannot be applied as a soft prompt)"
        )


def check_tensor_shape(name: str, tensor: torch.Tensor, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(tensor.shape) != expected:
        raise InvalidPromptError(
            f"tensor {name!r} has shape {list(tensor.shape)}; expected {list(expected)} ({meaning})"
        )


def check_finite(name: str, tensor: torch.Tensor) -> None:
    if not bool(torch.isfinite(tensor).all()):
        num_bad = int((~torch.isfinite(tensor)).sum())
        raise InvalidPromptError(f"tensor {name!r} holds {num_bad} NaN or infinite values")


def check_finite_in(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> None:
    """The values stay finite once cast to `dtype` (the serving dtype): 1e5 is a fine float32 but inf in float16."""
    is_finite = torch.isfinite(tensor.to(dtype))
    if not bool(is_finite.all()):
        num_bad = int((~is_finite).sum())
        largest = float(tensor.abs().max())
        raise InvalidPromptError(
            f"tensor {name!r} holds {num_bad} values that overflow {_dtype_name(dtype)}, the serving dtype "
            f"(largest magnitude {largest:.4g}; {_dtype_name(dtype)} holds up to {torch.finfo(dtype).max:.4g})"
        )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _load_json_object(config_bytes: bytes) -> dict:
    try:
        raw = loads_strict(config_bytes)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidPromptError(f"adapter_config.json is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(raw, dict):
        raise InvalidPromptError(f"adapter_config.json must be a JSON object, got {type(raw).__name__}")
    return raw


def _task_kind(raw: dict) -> TaskKind:
    value = raw.get("task_type")
    if not isinstance(value, str) or value not in SUPPORTED_TASK_TYPES:
        accepted = ", ".join(repr(name) for name in SUPPORTED_TASK_TYPES)
        raise InvalidPromptError(f"adapter_config.json: task_type must be one of {accepted}, got {show(value)}")
    return SUPPORTED_TASK_TYPES[value]


def _labels(raw: dict, task_kind: TaskKind) -> tuple[str, ...] | None:
    value = raw.get(LABELS_FIELD)
    if value is None:
        return None
    if not task_kind.is_classification:
        raise InvalidPromptError(
            f"adapter_config.json: {LABELS_FIELD} names a classifier's labels; a CAUSAL_LM adapter has no classifier"
        )
    return parse_labels(value, f"adapter_config.json: {LABELS_FIELD}")


def _peft_type(raw: dict) -> str:
    value = raw.get("peft_type")
    if not isinstance(value, str) or value not in SUPPORTED_PEFT_TYPES:
        supported = ", ".join(SUPPORTED_PEFT_TYPES)
        raise InvalidPromptError(f"adapter_config.json: peft_type {show(value)} is not served; supported: {supported}")
    return value


def _num_virtual_tokens(raw: dict, limits: StoreConfig) -> int:
    value = raw.get("num_virtual_tokens")
    if type(value) is not int or value < 1:
        raise InvalidPromptError(
            f"adapter_config.json: num_virtual_tokens must be a positive integer, got {show(value)}"
        )
    if value > limits.max_virtual_tokens:
        raise PromptTooLargeError(
            f"adapter_config.json: num_virtual_tokens is {value}; the limit is {limits.max_virtual_tokens}"
        )
    return value


def _optional_positive_int(raw: dict, field: str) -> int | None:
    value = raw.get(field)
    if value is not None and (type(value) is not int or value < 1):
        raise InvalidPromptError(f"adapter_config.json: {field} must be a positive integer or null, got {show(value)}")
    return value


def _check_submodules(raw: dict) -> None:
    # Decoder-only models have one transformer stack; PEFT sets 1 (2 is for encoder-decoder models).
    value = raw.get("num_transformer_submodules")
    if not (value is None or (type(value) is int and value == 1)):
        raise InvalidPromptError(
            f"adapter_config.json: num_transformer_submodules must be 1 for {raw.get('task_type')}, got {show(value)}"
        )


def _check_no_modules_to_save(raw: dict) -> None:
    value = raw.get("modules_to_save")
    if not (value is None or value == []):
        raise InvalidPromptError(
            f"adapter_config.json: modules_to_save must be null (the base model is frozen), got {show(value)}"
        )


def _check_head_modules_to_save(raw: dict) -> None:
    value = raw.get("modules_to_save")
    if value is None:
        return
    if not isinstance(value, list):
        raise InvalidPromptError(f"adapter_config.json: modules_to_save must be a list or null, got {show(value)}")
    others = [name for name in value if not (isinstance(name, str) and name in HEAD_MODULES)]
    if others:
        raise InvalidPromptError(
            f"adapter_config.json: modules_to_save may name only the classifier head ({sorted(HEAD_MODULES)}), "
            f"got {show(others[0])} (an adapter that also changes other model weights cannot be served)"
        )


def _check_model_dims(config: AdapterConfig, shape: ModelShape) -> None:
    if config.kind is PromptKind.EMBEDDING:
        _check_equal("token_dim", config.token_dim, shape.hidden_size, "the served model's hidden size")
        return
    _check_equal("token_dim", config.token_dim, shape.kv_token_dim, "the served model's KV heads x head dim")
    _check_equal("num_layers", config.num_layers, shape.num_layers, "the served model's layer count")
    _check_equal("num_attention_heads", config.num_attention_heads, shape.num_kv_heads, "the served model's KV heads")


def _check_equal(field: str, value: int | None, expected: int, meaning: str) -> None:
    if value is not None and value != expected:
        raise InvalidPromptError(f"adapter_config.json: {field} is {value}; expected {expected} ({meaning})")
