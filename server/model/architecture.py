"""What of a model's architecture the engine can serve exactly, read once at start-up; the rest is refused there.

The engine runs transformers' own modeling code but replaces two things: attention (paged, over the whole context:
no soft-capping, no sliding window, causal only, no attention sinks) and the input embedding (one gather over the
embedding matrix and the soft-prompt rows, outside the embedding module). A model that needs more than that from
either is refused with ModelLoadError naming the feature, never served wrong; a sliding window is honoured by
capping the sequence length to it (server/engine/llm_engine.py), so it never comes into play.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from server.model.errors import ModelLoadError

# Layer kinds whose attention is ordinary causal attention over the KV cache, up to a possible sliding window.
_SERVED_LAYER_TYPES = {"full_attention", "sliding_attention"}


@dataclass(frozen=True)
class ServedArchitecture:
    model_type: str  # the text config's model_type, for messages
    embedding_scale: float | None  # token rows are multiplied by it after the gather (Gemma 3); None: used as stored
    attention_window: int | None  # the smallest sliding window of any layer, in tokens; None: every layer is global


def served_architecture(model: PreTrainedModel) -> ServedArchitecture:
    """Raises ModelLoadError for what the engine would serve wrong."""
    config = model.config.get_text_config()
    model_type = str(getattr(config, "model_type", type(model).__name__))
    _check_attention(model, config, model_type)
    return ServedArchitecture(
        model_type=model_type,
        embedding_scale=_embedding_scale(model, model_type),
        attention_window=_attention_window(config),
    )


def _refuse(model_type: str, feature: str) -> ModelLoadError:
    return ModelLoadError(f"{model_type} models cannot be served: {feature}")


def _check_attention(model: PreTrainedModel, config, model_type: str) -> None:
    if getattr(config, "is_encoder_decoder", False):
        raise _refuse(model_type, "encoder-decoder models are not supported, only decoder-only causal LMs")
    if not model.is_backend_compatible():
        raise _refuse(model_type, "its modeling code does not call transformers' attention interface")
    if getattr(config, "attn_logit_softcapping", None) is not None:
        raise _refuse(
            model_type,
            f"attention logit soft-capping (attn_logit_softcapping={config.attn_logit_softcapping}) is not "
            "implemented by the paged attention kernels",
        )
    if getattr(config, "use_bidirectional_attention", False):
        raise _refuse(model_type, "bidirectional attention (use_bidirectional_attention) is not causal")
    unknown = sorted(set(getattr(config, "layer_types", None) or ()) - _SERVED_LAYER_TYPES)
    if unknown:
        raise _refuse(model_type, f"layer types {unknown} are not served, only {sorted(_SERVED_LAYER_TYPES)}")
    if any(name.endswith("sinks") for name, _ in model.named_parameters()):
        raise _refuse(model_type, "attention sinks are not implemented by the paged attention kernels")


def _attention_window(config) -> int | None:
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    # Models with layer_types apply the window only on their sliding layers (Qwen2/3 keep it in the config unused).
    if window is None or (layer_types is not None and "sliding_attention" not in layer_types):
        return None
    return int(window)


def _embedding_scale(model: PreTrainedModel, model_type: str) -> float | None:
    """The factor the input embedding module applies to its rows (Gemma 3's sqrt(hidden)), checked on a few ids:
    the engine gathers rows from the matrix itself, so a module that does anything else is refused."""
    module = model.get_input_embeddings()
    weight = module.weight
    assert isinstance(weight, torch.Tensor)  # an embedding module's (torch types module attributes loosely)
    scale = getattr(module, "embed_scale", None)
    factor = None if scale is None else float(scale)
    ids = torch.tensor([0, 1, weight.shape[0] - 1], device=weight.device)
    with torch.inference_mode():
        looked_up = module(ids)
        expected = weight[ids] if factor is None else weight[ids] * torch.tensor(factor, dtype=weight.dtype)
    if looked_up.shape != expected.shape or not torch.equal(looked_up, expected.to(looked_up.dtype)):
        raise _refuse(model_type, f"its input embedding {type(module).__name__} does more than look up rows")
    return None if factor == 1.0 else factor
