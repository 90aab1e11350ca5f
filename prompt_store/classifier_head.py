"""Reads a classification adapter's head: the `modules_to_save` copy of the model's `score` or `classifier` layer
that PEFT saves next to the prompt.

Layout, checked against peft 0.21.2 (utils/save_and_load.py get_peft_model_state_dict): the head's tensors are saved
as `base_model.<module>.weight` [num_labels, hidden] and, where the layer has one, `base_model.<module>.bias`
[num_labels]. Llama-style models name the module `score` (no bias for SEQ_CLS, a bias for TOKEN_CLS); GPT-2's
token classifier and BERT-style models name it `classifier`.
"""

from __future__ import annotations

import torch

from prompt_store.errors import InvalidPromptError, PromptTooLargeError
from prompt_store.labels import LABELS_FIELD, MAX_NUM_LABELS, default_labels
from prompt_store.model_shape import ModelShape
from prompt_store.spec import ClassifierHead
from prompt_store.validation import HEAD_MODULES, AdapterConfig, check_finite, check_finite_in, check_tensor_shape

__all__ = ["MAX_NUM_LABELS", "read_head", "split_head_tensors"]

HEAD_TENSOR_NAMES = frozenset(f"base_model.{module}.{part}" for module in HEAD_MODULES for part in ("weight", "bias"))


def split_head_tensors(
    tensors: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the prompt's tensors, the head's). Only the head's exact names move, so any other tensor still meets the
    prompt readers' strict name check."""
    prompt = {name: tensor for name, tensor in tensors.items() if name not in HEAD_TENSOR_NAMES}
    head = {name: tensor for name, tensor in tensors.items() if name in HEAD_TENSOR_NAMES}
    return prompt, head


def read_head(config: AdapterConfig, tensors: dict[str, torch.Tensor], shape: ModelShape) -> ClassifierHead:
    """Validate the head's tensors (from `split_head_tensors`) against the served model and the config's labels."""
    module = _head_module(config, tensors)
    weight_name, bias_name = f"base_model.{module}.weight", f"base_model.{module}.bias"
    if weight_name not in tensors:
        raise InvalidPromptError(f"adapter_model.safetensors has {bias_name!r} but no {weight_name!r}")
    weight = tensors[weight_name]
    num_labels = _num_labels(weight_name, weight, shape)
    check_tensor_shape(weight_name, weight, (num_labels, shape.hidden_size), "num_labels x the served hidden size")
    bias = tensors.get(bias_name)
    if bias is not None:
        check_tensor_shape(bias_name, bias, (num_labels,), "num_labels, one per row of the weight")
    serving_dtype = getattr(torch, shape.serving_dtype)
    for name, tensor in ((weight_name, weight), (bias_name, bias)):
        if tensor is not None:
            check_finite(name, tensor)
            check_finite_in(name, tensor, serving_dtype)
    return ClassifierHead(
        weight=_float32(weight),  # [num_labels, hidden]
        bias=None if bias is None else _float32(bias),  # [num_labels]
        labels=_labels(config, weight_name, num_labels),
    )


def _head_module(config: AdapterConfig, tensors: dict[str, torch.Tensor]) -> str:
    modules = sorted({name.split(".")[1] for name in tensors})
    if not modules:
        expected = " or ".join(repr(f"base_model.{module}.weight") for module in sorted(HEAD_MODULES))
        raise InvalidPromptError(
            f"adapter_model.safetensors has no classifier head: a {config.task_kind.value} adapter saves {expected} "
            "(its modules_to_save)"
        )
    if len(modules) > 1:
        raise InvalidPromptError(
            f"adapter_model.safetensors holds two classifier heads, {modules[0]!r} and {modules[1]!r}; a model has one"
        )
    return modules[0]


def _num_labels(name: str, weight: torch.Tensor, shape: ModelShape) -> int:
    if weight.dim() != 2:
        raise InvalidPromptError(
            f"tensor {name!r} has shape {list(weight.shape)}; expected [num_labels, {shape.hidden_size}] "
            "(num_labels x the served hidden size)"
        )
    num_labels = weight.shape[0]
    if num_labels < 1:
        raise InvalidPromptError(f"tensor {name!r} has shape {list(weight.shape)}; a head needs at least one label")
    if num_labels > MAX_NUM_LABELS:
        raise PromptTooLargeError(f"tensor {name!r} has {num_labels} labels (rows); the limit is {MAX_NUM_LABELS}")
    return num_labels


def _labels(config: AdapterConfig, weight_name: str, num_labels: int) -> tuple[str, ...]:
    if config.labels is None:
        return default_labels(num_labels)
    if len(config.labels) != num_labels:
        raise InvalidPromptError(
            f"adapter_config.json: {LABELS_FIELD} has {len(config.labels)} entries; the head {weight_name!r} has "
            f"{num_labels} rows (one label per row)"
        )
    return config.labels


def _float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.float32).contiguous()
