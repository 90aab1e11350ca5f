"""Prefill attention: a chunk of new queries per sequence, causal over its shared prefix, its earlier own tokens and
itself, all read from the paged cache (the chunk's own K/V are written before attention runs).

The grid's first axis walks query tiles of every sequence without a host sync: sequence `s` owns tiles
`[qsl[s] // BLOCK_Q + s, qsl[s + 1] // BLOCK_Q + s + 1)`, always enough for its queries, and each program finds its
sequence by binary search over `query_start_loc`; tiles past a sequence's last query exit at once. A tile stacks
BLOCK_Q queries times the GROUP query heads of one KV head as its rows, so each key tile is read once per group
(GQA). Keys stream through an online softmax with a per-row causal limit; each key position finds its cache slot
through the block table, as in the decode kernel.
"""

from __future__ import annotations

import torch

from kernels._triton_support import LazyKernel, check_launchable, dot_precision, next_power_of_2, tl
from kernels.paged_attention_metadata import check_attention_args
from kernels.paged_attention_reference import build_plan, paged_attention_planned

DEFAULT_BLOCK_M = 64  # rows per query tile: BLOCK_M // GROUP queries x GROUP heads
DEFAULT_BLOCK_N = 32  # keys per tile


def _paged_prefill_attention_kernel(
    query_ptr,  # [num_tokens, num_heads, head_dim]
    k_cache_ptr,
    v_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables_ptr,  # [num_seqs, max_blocks]
    prefix_lens_ptr,
    own_lens_ptr,  # [num_seqs]
    query_start_loc_ptr,  # [num_seqs + 1]
    out_ptr,  # [num_tokens, num_heads, head_dim]
    scale_log2,  # softmax scale * log2(e): the softmax runs in base 2
    num_seqs,
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
    BLOCK_Q: tl.constexpr,  # queries per tile: BLOCK_M // GROUP
    BLOCK_M: tl.constexpr,  # rows per tile, a power of two >= 16
    BLOCK_D: tl.constexpr,  # head_dim rounded up to a power of two
    BLOCK_N: tl.constexpr,
    MIN_QUERIES: tl.constexpr,  # 2 leaves one-query sequences to the decode kernel, 1 serves them here
    DOT_PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    # The last sequence whose first tile is at or before this one.
    lo: tl.int32 = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid <= tile:
            lo = mid + 1
        else:
            hi = mid
    seq = lo - 1
    query_start = tl.load(query_start_loc_ptr + seq)
    num_queries = tl.load(query_start_loc_ptr + seq + 1) - query_start
    first_query = (tile - (query_start // BLOCK_Q + seq)) * BLOCK_Q  # within the sequence
    if (first_query < num_queries) & (num_queries >= MIN_QUERIES):
        prefix_len = tl.load(prefix_lens_ptr + seq)
        context_len = prefix_len + tl.load(own_lens_ptr + seq)
        num_prefix_blocks = (prefix_len + block_size - 1) // block_size
        # The chunk's queries are the sequence's last num_queries tokens: query i sits at context position
        # context_len - num_queries + i and sees keys up to and including that position.
        last_position = context_len - num_queries
        keys_end = tl.minimum(context_len, last_position + first_query + BLOCK_Q)

        rows = tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        query_index = first_query + rows // GROUP  # [BLOCK_M]
        heads = kv_head * GROUP + rows % GROUP
        is_row = (rows // GROUP < BLOCK_Q) & (query_index < num_queries)
        # Rows past the chunk see every key this tile loads, so their softmax stays finite; they are not stored.
        row_limit = last_position + query_index
        token = (query_start + query_index).to(tl.int64)
        row_mask = is_row[:, None] & (dims[None, :] < head_dim)
        q_ptrs = (
            query_ptr + token[:, None] * stride_q_token + heads[:, None] * stride_q_head + dims[None, :] * stride_q_dim
        )
        q = tl.load(q_ptrs, mask=row_mask, other=0.0).to(tl.float32)  # [BLOCK_M, BLOCK_D]

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of the base-2 logits
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(logit - m_i)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        block_table = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq
        for start in range(0, keys_end, BLOCK_N):
            positions = start + tl.arange(0, BLOCK_N)
            in_range = positions < keys_end
            # Logical position -> (block-table entry, offset): the prefix fills blocks from entry 0, the
            # sequence's own tokens start afresh at offset 0 of entry num_prefix_blocks.
            is_prefix = positions < prefix_len
            own_position = positions - prefix_len
            entry = tl.where(is_prefix, positions // block_size, num_prefix_blocks + own_position // block_size)
            offset = tl.where(is_prefix, positions % block_size, own_position % block_size)
            block = tl.load(block_table + entry * stride_bt_block, mask=in_range, other=0).to(tl.int64)
            kv_mask = in_range[:, None] & (dims[None, :] < head_dim)
            k_ptrs = (
                k_cache_ptr
                + block[:, None] * stride_kc_block
                + offset[:, None] * stride_kc_slot
                + kv_head * stride_kc_head
                + dims[None, :] * stride_kc_dim
            )
            k = tl.load(k_ptrs, mask=kv_mask, other=0.0).to(tl.float32)  # [BLOCK_N, BLOCK_D]
            logits = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2  # [BLOCK_M, BLOCK_N]
            visible = in_range[None, :] & (positions[None, :] <= row_limit[:, None])
            logits = tl.where(visible, logits, float("-inf"))

            # Finite from the first tile on: position 0 is visible to every row.
            m_new = tl.maximum(m_i, tl.max(logits, axis=1))
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
        o_ptrs = (
            out_ptr + token[:, None] * stride_o_token + heads[:, None] * stride_o_head + dims[None, :] * stride_o_dim
        )
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_mask)


_paged_prefill_attention = LazyKernel(_paged_prefill_attention_kernel)


def paged_prefill_attention_triton(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim], packed by sequence
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32/int64
    prefix_lens: torch.Tensor,  # [num_seqs] int32/int64
    own_lens: torch.Tensor,  # [num_seqs] int32/int64, this step's tokens included
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32/int64
    scale: float,
    out: torch.Tensor | None = None,  # [num_tokens, num_heads, head_dim]; allocated (uninitialised) when None
    skip_single_query: bool = False,  # leave one-query sequences' rows unwritten (the decode kernel's share)
    block_m: int = DEFAULT_BLOCK_M,
    block_n: int = DEFAULT_BLOCK_N,
) -> torch.Tensor:  # out
    """Attention for the rows of every sequence with queries (with more than one if `skip_single_query`), the
    contract of `paged_attention_reference`. CUDA, or CPU under TRITON_INTERPRET=1."""
    name = "paged_prefill_attention"
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
    for arg, size in (("block_m", block_m), ("block_n", block_n)):
        if size < 16 or size & (size - 1):
            raise ValueError(f"{name}: {arg} must be a power of two >= 16, got {size}")
    launch_paged_prefill_attention(
        query,
        k_cache,
        v_cache,
        block_tables,
        prefix_lens,
        own_lens,
        query_start_loc,
        scale,
        out,
        skip_single_query,
        block_m,
        block_n,
    )
    return out


def launch_paged_prefill_attention(
    query,
    k_cache,
    v_cache,
    block_tables,
    prefix_lens,
    own_lens,
    query_start_loc,
    scale: float,
    out: torch.Tensor,
    skip_single_query: bool = False,
    block_m: int = DEFAULT_BLOCK_M,
    block_n: int = DEFAULT_BLOCK_N,
) -> None:
    """The launch alone, for a caller that checked the arguments (kernels/paged_attention.py, once per step)."""
    num_tokens, num_heads, head_dim = query.shape
    num_seqs = block_tables.shape[0]
    num_kv_heads = k_cache.shape[2]
    if num_tokens == 0 or num_seqs == 0:
        return
    group = num_heads // num_kv_heads
    block_m = max(block_m, next_power_of_2(group))
    block_q = block_m // group
    _paged_prefill_attention[(num_tokens // block_q + num_seqs, num_kv_heads)](
        query,
        k_cache,
        v_cache,
        block_tables,
        prefix_lens,
        own_lens,
        query_start_loc,
        out,
        scale * 1.4426950408889634,
        num_seqs,
        k_cache.shape[1],
        head_dim,
        *query.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        *block_tables.stride(),
        *out.stride(),
        GROUP=group,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        BLOCK_D=max(16, next_power_of_2(head_dim)),
        BLOCK_N=block_n,
        MIN_QUERIES=2 if skip_single_query else 1,
        DOT_PRECISION=dot_precision(k_cache.dtype),
    )


def paged_prefill_attention_reference(
    query,
    k_cache,
    v_cache,
    block_tables,
    prefix_lens,
    own_lens,
    query_start_loc,
    scale: float,
    out: torch.Tensor | None = None,
    skip_single_query: bool = False,
) -> torch.Tensor:
    """`paged_prefill_attention_triton` in torch: the shared reference over the sequences that kernel serves."""
    plan = build_plan(block_tables, prefix_lens.cpu(), own_lens.cpu(), query_start_loc.cpu(), k_cache.shape[1])
    out = torch.empty_like(query) if out is None else out
    result = paged_attention_planned(query, k_cache, v_cache, plan, scale)
    for part in plan.prefills:
        out[part.query_start : part.query_end] = result[part.query_start : part.query_end]
    if not skip_single_query and plan.decode_rows.numel():
        out[plan.decode_rows] = result[plan.decode_rows]
    return out
