"""The served model's shape, read from its config and its embedding matrix."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig, PreTrainedModel

from prompt_store.model_shape import ModelShape


def model_shape(model: PreTrainedModel) -> ModelShape:
    """Works for Llama/Qwen/Mistral-style configs and GPT-2-style ones (n_embd, n_layer, n_head)."""
    config = model.config.get_text_config()
    hidden_size = _first_attr(config, "hidden_size", "n_embd", "d_model")
    num_heads = _first_attr(config, "num_attention_heads", "n_head")
    # GQA/MQA configs name the KV head count; plain multi-head attention has one KV head per query head.
    num_kv_heads = _first_attr(config, "num_key_value_heads", "n_head_kv", default=num_heads)
    embedding_weight = model.get_input_embeddings().weight
    assert isinstance(embedding_weight, torch.Tensor)  # an nn.Embedding's (torch types module attributes loosely)
    return ModelShape(
        hidden_size=hidden_size,
        num_layers=_first_attr(config, "num_hidden_layers", "n_layer"),
        num_kv_heads=num_kv_heads,
        # Some models (Gemma, SmolLM2) set head_dim explicitly; it need not be hidden_size / num_heads.
        head_dim=_first_attr(config, "head_dim", default=hidden_size // num_heads),
        # The embedding rows, not config.vocab_size: ids at or above this number address soft-prompt rows.
        vocab_size=embedding_weight.shape[0],
        serving_dtype=str(model.dtype).removeprefix("torch."),
    )


_MISSING = object()


def _first_attr(config: PretrainedConfig, *names: str, default=_MISSING) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    if default is _MISSING:
        raise ValueError(f"{type(config).__name__} has none of {', '.join(names)}")
    return int(default)
