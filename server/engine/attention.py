"""The attention function transformers' modeling code calls in every layer, registered under our own name.

It writes the step's new K/V into the paged cache, then lets each sequence attend over its prefix blocks and its
own blocks. Everything per step (slots and the kernels' metadata, built and checked once by step_inputs.py) arrives
in one `StepAttention` passed as a keyword argument to `model(...)`, which transformers forwards to this function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from kernels.kv_write import kv_write
from kernels.paged_attention import paged_attention
from kernels.paged_attention_metadata import PagedAttentionMetadata
from server.engine.kv_cache import KVCache

ATTENTION_NAME = "promptswap_paged"
STEP_KWARG = "promptswap_step"


@dataclass(frozen=True)
class StepAttention:
    kv_cache: KVCache
    slot_mapping: torch.Tensor  # [num_tokens] int64: where each new token's K/V go
    metadata: PagedAttentionMetadata  # per chunk: block tables, lengths, query offsets, and the routing counts
    use_reference: bool  # the torch references instead of the Triton kernels


def paged_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [1, heads, tokens, dim], key/value [1, kv_heads, tokens, dim] -> ([1, tokens, heads, dim], None)"""
    step: StepAttention | None = kwargs.get(STEP_KWARG)
    if step is None:
        return _plain_causal(query, key, value, scaling), None
    _refuse_unserved(kwargs)
    k_cache, v_cache = step.kv_cache.layer(module.layer_idx)
    kv_write(
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        k_cache,
        v_cache,
        step.slot_mapping,
        use_reference=step.use_reference,
    )
    out = paged_attention(
        query[0].transpose(0, 1), k_cache, v_cache, step.metadata, scaling, use_reference=step.use_reference
    )
    return out.unsqueeze(0), None


def _refuse_unserved(kwargs) -> None:
    # Start-up refuses these models (server/model/architecture.py); a layer that still asks must not be served.
    for name in ("softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"paged attention does not implement {name}")


def _plain_causal(query, key, value, scaling) -> torch.Tensor:
    """A forward outside the engine (generate, debugging): one causal sequence per row, queries at the end."""
    num_queries, num_keys = query.shape[2], key.shape[2]
    visible = (
        torch.arange(num_keys, device=query.device)[None, :]
        <= (num_keys - num_queries + torch.arange(num_queries, device=query.device))[:, None]
    )
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=visible, scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
    )
    return out.transpose(1, 2).contiguous()


def _no_mask(*args, **kwargs):
    return None  # masking is the attention function's job (block tables and lengths)


def register() -> str:
    AttentionInterface.register(ATTENTION_NAME, paged_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, _no_mask)
    return ATTENTION_NAME
