"""Paged attention for the engine: one call per layer, routed once per step's metadata.

CUDA tensors take the Triton kernels (kernels/paged_decode_attention.py for one-query sequences,
kernels/paged_prefill_attention.py for the others); CPU tensors, or `use_reference`, the torch path
(kernels/paged_attention_cpu.py, with the step's prebuilt plan when it has one), which gives the results of the
reference (kernels/paged_attention_reference.py). The contract is the reference
module's; arguments are not checked here, once per layer: `PagedAttentionMetadata` was checked when the step built it.
"""

from __future__ import annotations

import torch

from kernels import paged_decode_attention as decode
from kernels import paged_prefill_attention as prefill
from kernels._triton_support import use_triton
from kernels.paged_attention_cpu import AttentionHeads, build_cpu_plan, paged_attention_cpu
from kernels.paged_attention_metadata import PagedAttentionMetadata


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    metadata: PagedAttentionMetadata,
    scale: float,
    use_reference: bool = False,
) -> torch.Tensor:
    """query [num_tokens, num_heads, head_dim], caches [num_blocks, block_size, num_kv_heads, head_dim] -> like query"""
    if use_triton(query, use_reference):
        return paged_attention_triton(query, k_cache, v_cache, metadata, scale)
    plan = metadata.plan
    if plan is None:
        plan = build_cpu_plan(
            metadata.block_tables.cpu(),
            metadata.prefix_lens.cpu(),
            metadata.own_lens.cpu(),
            metadata.query_start_loc.cpu(),
            k_cache.shape[1],
            AttentionHeads(query.shape[1], k_cache.shape[2]),
            query.device,
        )
    return paged_attention_cpu(query, k_cache, v_cache, plan, scale)


def paged_attention_triton(
    query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, metadata: PagedAttentionMetadata, scale: float
) -> torch.Tensor:
    """The decode kernel serves one-query sequences, the prefill kernel the others; a kernel with none of its
    sequences in the step is not launched, so a decode-only step launches the decode kernel alone."""
    out = torch.empty_like(query)  # [num_tokens, num_heads, head_dim]
    args = (
        query,
        k_cache,
        v_cache,
        metadata.block_tables,
        metadata.prefix_lens,
        metadata.own_lens,
        metadata.query_start_loc,
        scale,
        out,
    )
    if metadata.num_decodes:
        decode.launch_paged_decode_attention(*args)
    if metadata.max_query_len > 1:
        prefill.launch_paged_prefill_attention(*args, skip_single_query=metadata.num_decodes > 0)
    return out
