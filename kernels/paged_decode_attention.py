"""Decode attention: one query per sequence over its paged K/V (shared prefix blocks, then its own blocks).

One program serves one sequence and one KV head, with all the query heads of that KV head's group stacked as
rows of one tile, so every key and value is read once per group (GQA). Keys stream through an online softmax in
tiles of BLOCK_N positions; each position finds its cache slot through the block table, so block sizes that do not
divide the lengths and prefixes that end mid-block need no special case. Sequences whose query count is not
exactly one are skipped: their rows of `out` are left as they were.
"""

from __future__ import annotations

import dataclasses

import torch

from kernels._triton_support import LazyKernel, check_launchable, dot_precision, next_power_of_2, tl
from kernels.paged_attention_metadata import check_attention_args
from kernels.paged_attention_reference import build_plan, paged_attention_planned

_BLOCK_N = 32  # keys per tile
_MIN_DOT_ROWS = 16  # tl.dot needs at least 16 rows


def _paged_decode_attention_kernel(
    query_ptr,  # [num_tokens, num_heads, head_dim]
    k_cache_ptr,
    v_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables_ptr,  # [num_seqs, max_blocks]
    prefix_lens_ptr,
    own_lens_ptr,  # [num_seqs]
    query_start_loc_ptr,  # [num_seqs + 1]
    out_ptr,  # [num_tokens, num_heads, head_dim]
    scale_log2,  # softmax scale * log2(e): the softmax runs in base 2
    block_size,
    head_dim,
    stride_q_token,
    stride_q_head,
    stride_q_dim,
    stride_kc_block,
    stride_kc_slot,
    stride_kc_head,
    stride_kc_dim,
    stride_vc_block,
    stride_vc_slot,
    stride_vc_head,
    stride_vc_dim,
    stride_bt_seq,
    stride_bt_block,
    stride_o_token,
    stride_o_head,
    stride_o_dim,
    GROUP: tl.constexpr,  # query heads per KV head
    BLOCK_G: tl.constexpr,  # GROUP rounded up to a power of two, at least 16
    BLOCK_D: tl.constexpr,  # head_dim rounded up to a power of two
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    query_row = tl.load(query_start_loc_ptr + seq).to(tl.int64)
    num_queries = tl.load(query_start_loc_ptr + seq + 1) - query_row
    if num_queries == 1:
        prefix_len = tl.load(prefix_lens_ptr + seq)
        context_len = prefix_len + tl.load(own_lens_ptr + seq)
        num_prefix_blocks = (prefix_len + block_size - 1) // block_size

        rows = tl.arange(0, BLOCK_G)
        dims = tl.arange(0, BLOCK_D)
        heads = kv_head * GROUP + rows
        row_mask = (rows[:, None] < GROUP) & (dims[None, :] < head_dim)
        q_ptrs = query_ptr + query_row * stride_q_token + heads[:, None] * stride_q_head + dims[None, :] * stride_q_dim
        q = tl.load(q_ptrs, mask=row_mask, other=0.0).to(tl.float32)  # [BLOCK_G, BLOCK_D]

        m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)  # running max of the base-2 logits
        l_i = tl.zeros([BLOCK_G], dtype=tl.float32)  # running sum of exp2(logit - m_i)
        acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
        block_table = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq
        for start in range(0, context_len, BLOCK_N):
            positions = start + tl.arange(0, BLOCK_N)
            in_context = positions < context_len
            # Logical position -> (block-table entry, offset): the prefix fills blocks from entry 0, the
            # sequence's own tokens start afresh at offset 0 of entry num_prefix_blocks.
            is_prefix = positions < prefix_len
            own_position = positions - prefix_len
            entry = tl.where(is_prefix, positions // block_size, num_prefix_blocks + own_position // block_size)
            offset = tl.where(is_prefix, positions % block_size, own_position % block_size)
            block = tl.load(block_table + entry * stride_bt_block, mask=in_context, other=0).to(tl.int64)
            kv_mask = in_context[:, None] & (dims[None, :] < head_dim)
            k_ptrs = (
                k_cache_ptr
                + block[:, None] * stride_kc_block
                + offset[:, None] * stride_kc_slot
                + kv_head * stride_kc_head
                + dims[None, :] * stride_kc_dim
            )
            k = tl.load(k_ptrs, mask=kv_mask, other=0.0).to(tl.float32)  # [BLOCK_N, BLOCK_D]
            logits = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2  # [BLOCK_G, BLOCK_N]
            logits = tl.where(in_context[None, :], logits, float("-inf"))

            m_new = tl.maximum(m_i, tl.max(logits, axis=1))  # finite: every tile holds a position in context
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(logits - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v_ptrs = (
                v_cache_ptr
                + block[:, None] * stride_vc_block
                + offset[:, None] * stride_vc_slot
                + kv_head * stride_vc_head
                + dims[None, :] * stride_vc_dim
            )
            v = tl.load(v_ptrs, mask=kv_mask, other=0.0).to(tl.float32)  # [BLOCK_N, BLOCK_D]
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
            m_i = m_new

        out = acc / l_i[:, None]
        o_ptrs = out_ptr + query_row * stride_o_token + heads[:, None] * stride_o_head + dims[None, :] * stride_o_dim
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_mask)


_paged_decode_attention = LazyKernel(_paged_decode_attention_kernel)


def paged_decode_attention_triton(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim], packed by sequence
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32/int64
    prefix_lens: torch.Tensor,  # [num_seqs] int32/int64
    own_lens: torch.Tensor,  # [num_seqs] int32/int64, this step's token included
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32/int64
    scale: float,
    out: torch.Tensor | None = None,  # [num_tokens, num_heads, head_dim]; allocated (uninitialised) when None
) -> torch.Tensor:  # out
    """Attention for the rows of one-query sequences (the contract of `paged_attention_reference`); the rows of
    other sequences in `out` are not written. CUDA, or CPU under TRITON_INTERPRET=1."""
    name = "paged_decode_attention"
    out = check_attention_args(name, query, k_cache, v_cache, block_tables, prefix_lens, own_lens, query_start_loc, out)
    check_launchable(
        name,
        query=query,
        k_cache=k_cache,
        v_cache=v_cache,
        block_tables=block_tables,
        prefix_lens=prefix_lens,
        own_lens=own_lens,
        query_start_loc=query_start_loc,
        out=out,
    )
    launch_paged_decode_attention(
        query, k_cache, v_cache, block_tables, prefix_lens, own_lens, query_start_loc, scale, out
    )
    return out


def launch_paged_decode_attention(
    query, k_cache, v_cache, block_tables, prefix_lens, own_lens, query_start_loc, scale: float, out: torch.Tensor
) -> None:
    """The launch alone, for a caller that checked the arguments (kernels/paged_attention.py, once per step)."""
    num_seqs = block_tables.shape[0]
    num_heads, head_dim = query.shape[1:]
    num_kv_heads = k_cache.shape[2]
    if query.shape[0] == 0 or num_seqs == 0:
        return
    group = num_heads // num_kv_heads
    _paged_decode_attention[(num_seqs, num_kv_heads)](
        query,
        k_cache,
        v_cache,
        block_tables,
        prefix_lens,
        own_lens,
        query_start_loc,
        out,
        scale * 1.4426950408889634,
        k_cache.shape[1],
        head_dim,
        *query.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        *block_tables.stride(),
        *out.stride(),
        GROUP=group,
        BLOCK_G=max(_MIN_DOT_ROWS, next_power_of_2(group)),
        BLOCK_D=max(16, next_power_of_2(head_dim)),
        BLOCK_N=_BLOCK_N,
        DOT_PRECISION=dot_precision(k_cache.dtype),
    )


def paged_decode_attention_reference(
    query,
    k_cache,
    v_cache,
    block_tables,
    prefix_lens,
    own_lens,
    query_start_loc,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`paged_decode_attention_triton` in torch: the shared reference, restricted to one-query sequences."""
    plan = build_plan(block_tables, prefix_lens.cpu(), own_lens.cpu(), query_start_loc.cpu(), k_cache.shape[1])
    decodes = dataclasses.replace(plan, prefills=())
    out = torch.empty_like(query) if out is None else out
    if decodes.decode_rows.numel():
        out[decodes.decode_rows] = paged_attention_planned(query, k_cache, v_cache, decodes, scale)[decodes.decode_rows]
    return out
