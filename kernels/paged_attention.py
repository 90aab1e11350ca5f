"""Attention of a packed chunk of queries over paged K/V whose first blocks may be a task's shared prefix.

One contract serves decode (one query per sequence) and prefill (a chunk of new tokens): the chunk's keys and
values are already in the cache when attention runs, and query `i` of a sequence's `n` queries sees the whole
prefix plus the sequence's own tokens up to and including its own position.

Block table of sequence `s`: `ceil(prefix_lens[s] / block_size)` prefix blocks (shared, read-only, the last one
possibly part-filled), then the sequence's own blocks, whose first token sits at offset 0 of its first block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels._triton_support import FLOAT_DTYPES, INDEX_DTYPES, check_dtype, check_ndim, use_triton


def context_slots(block_table: torch.Tensor, prefix_len: int, own_len: int, block_size: int) -> torch.Tensor:
    """Cache slots of one sequence's keys, prefix first, in logical order. # [prefix_len + own_len] int64"""
    num_prefix_blocks = -(-prefix_len // block_size)
    table = block_table.to(torch.int64)
    prefix = torch.arange(prefix_len)
    own = torch.arange(own_len)
    prefix_slots = table[prefix // block_size] * block_size + prefix % block_size
    own_slots = table[num_prefix_blocks + own // block_size] * block_size + own % block_size
    return torch.cat([prefix_slots, own_slots])


@dataclass(frozen=True)
class PrefillPart:
    query_start: int  # first query row of this sequence
    query_end: int  # one past its last query row
    slots: torch.Tensor  # [context_len] int64: cache slots of every key it sees
    mask: torch.Tensor  # [num_queries, context_len] bool: True where the key is visible


@dataclass(frozen=True)
class AttentionPlan:
    """Per-step index tensors of the reference path, built once and reused by every layer."""

    decode_rows: torch.Tensor  # [num_decodes] int64: query rows of one-query sequences
    decode_slots: torch.Tensor  # [num_decodes, max_context] int64, padded with the row's last slot
    decode_mask: torch.Tensor  # [num_decodes, 1, 1, max_context] bool, False on padding
    prefills: tuple[PrefillPart, ...]


def build_plan(block_tables, prefix_lens, own_lens, query_start_loc, block_size: int) -> AttentionPlan:
    prefix_list = prefix_lens.tolist()
    own_list = own_lens.tolist()
    starts = query_start_loc.tolist()
    decode_rows, decode_slots, prefills = [], [], []
    for s, (prefix_len, own_len) in enumerate(zip(prefix_list, own_list)):
        slots = context_slots(block_tables[s], prefix_len, own_len, block_size)
        num_queries = starts[s + 1] - starts[s]
        if num_queries == 1:
            decode_rows.append(starts[s])
            decode_slots.append(slots)
        elif num_queries > 1:
            context_len = prefix_len + own_len
            last_visible = context_len - num_queries + torch.arange(num_queries)
            mask = torch.arange(context_len)[None, :] <= last_visible[:, None]
            prefills.append(PrefillPart(starts[s], starts[s + 1], slots, mask))
    max_context = max((len(x) for x in decode_slots), default=0)
    padded = torch.zeros(len(decode_slots), max_context, dtype=torch.int64)
    mask = torch.zeros(len(decode_slots), 1, 1, max_context, dtype=torch.bool)
    for i, slots in enumerate(decode_slots):
        # Pad with the row's own last slot, never another sequence's: masked keys still enter SDPA's products
        # (0 * value), so an inf or NaN in someone else's slot would turn this row into NaN.
        padded[i] = slots[-1] if len(slots) else 0
        padded[i, : len(slots)] = slots
        mask[i, 0, 0, : len(slots)] = True
    device = block_tables.device
    return AttentionPlan(
        decode_rows=torch.tensor(decode_rows, dtype=torch.int64, device=device),
        decode_slots=padded.to(device),
        decode_mask=mask.to(device),
        prefills=tuple(PrefillPart(p.query_start, p.query_end, p.slots.to(device), p.mask.to(device))
                       for p in prefills),
    )


def _gather_slots(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """cache [num_blocks, block_size, Hkv, D], slots [...] int64 -> [..., Hkv, D]. `index_select` over rows of
    Hkv*D values: on CPU about 5x faster than advanced indexing `flat[slots]`, which goes element by element."""
    rows = cache.view(-1, cache.shape[-2] * cache.shape[-1])  # the cache is one contiguous pool: a view, no copy
    return torch.index_select(rows, 0, slots.reshape(-1)).view(*slots.shape, *cache.shape[-2:])


def _attend(query, keys, values, mask, scale):
    # query [B, H, n, D]; keys/values [B, Hkv, L, D]; mask [B or 1, 1, n, L] bool
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale,
                                          enable_gqa=query.shape[1] != keys.shape[1])


def paged_attention_planned(query, k_cache, v_cache, plan: AttentionPlan, scale: float) -> torch.Tensor:
    """The reference path with a prebuilt plan. query [num_tokens, H, D] -> [num_tokens, H, D]"""
    out = torch.empty_like(query)
    if plan.decode_rows.numel():
        q = query[plan.decode_rows].unsqueeze(2)  # [S, H, 1, D]
        k = _gather_slots(k_cache, plan.decode_slots).transpose(1, 2)  # [S, Hkv, L, D]
        v = _gather_slots(v_cache, plan.decode_slots).transpose(1, 2)
        out[plan.decode_rows] = _attend(q, k, v, plan.decode_mask, scale).squeeze(2)
    for part in plan.prefills:
        q = query[part.query_start: part.query_end].transpose(0, 1).unsqueeze(0)  # [1, H, n, D]
        k = _gather_slots(k_cache, part.slots).transpose(0, 1).unsqueeze(0)  # [1, Hkv, L, D]
        v = _gather_slots(v_cache, part.slots).transpose(0, 1).unsqueeze(0)
        o = _attend(q, k, v, part.mask[None, None], scale)
        out[part.query_start: part.query_end] = o[0].transpose(0, 1)
    return out


def paged_attention_reference(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim], packed by sequence
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    prefix_lens: torch.Tensor,  # [num_seqs] int32: shared prefix tokens
    own_lens: torch.Tensor,  # [num_seqs] int32: own tokens in the cache, this step's included
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32: sequence s owns query rows [qsl[s], qsl[s+1])
    scale: float,
) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
    # The plan is built where the block tables live: SDPA wants its mask on the query's device.
    plan = build_plan(block_tables, prefix_lens.cpu(), own_lens.cpu(), query_start_loc.cpu(), k_cache.shape[1])
    return paged_attention_planned(query, k_cache, v_cache, plan, scale)


def check_attention_args(name: str, query, k_cache, v_cache, block_tables, prefix_lens, own_lens, query_start_loc,
                         out: torch.Tensor | None) -> torch.Tensor:
    """Raise ValueError unless the arguments have the shapes and dtypes of the contract above; return `out`,
    allocated (uninitialised) when None. Values (lengths, block ids) are not checked: that would sync the device."""
    check_ndim(name, "query", query, 3, "[num_tokens, num_heads, head_dim]")
    check_ndim(name, "k_cache", k_cache, 4, "[num_blocks, block_size, num_kv_heads, head_dim]")
    check_ndim(name, "block_tables", block_tables, 2, "[num_seqs, max_blocks]")
    check_dtype(name, "query", query, FLOAT_DTYPES)
    if v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"{name}: v_cache {tuple(v_cache.shape)} {v_cache.dtype} != "
                         f"k_cache {tuple(k_cache.shape)} {k_cache.dtype}")
    if k_cache.dtype != query.dtype:
        raise ValueError(f"{name}: cache dtype {k_cache.dtype} != query dtype {query.dtype}")
    num_heads, head_dim = query.shape[1:]
    num_kv_heads = k_cache.shape[2]
    if k_cache.shape[3] != head_dim:
        raise ValueError(f"{name}: cache head_dim {k_cache.shape[3]} != query head_dim {head_dim}")
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        raise ValueError(f"{name}: {num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    num_seqs = block_tables.shape[0]
    for arg, tensor, length in (("prefix_lens", prefix_lens, num_seqs), ("own_lens", own_lens, num_seqs),
                                ("query_start_loc", query_start_loc, num_seqs + 1)):
        if tensor.dim() != 1 or tensor.shape[0] != length:
            raise ValueError(f"{name}: {arg} must have shape ({length},) for {num_seqs} sequences, "
                             f"got {tuple(tensor.shape)}")
        check_dtype(name, arg, tensor, INDEX_DTYPES)
    check_dtype(name, "block_tables", block_tables, INDEX_DTYPES)
    if out is None:
        return torch.empty_like(query)
    if out.shape != query.shape or out.dtype != query.dtype:
        raise ValueError(f"{name}: out must be {tuple(query.shape)} {query.dtype}, got {tuple(out.shape)} {out.dtype}")
    return out


def paged_attention_triton(query, k_cache, v_cache, block_tables, prefix_lens, own_lens, query_start_loc,
                           scale: float, plan: AttentionPlan | None = None,
                           max_query_len: int | None = None) -> torch.Tensor:
    """The contract above on Triton: the decode kernel serves one-query sequences, the prefill kernel the others.

    Which kinds a batch holds is read from host-side hints, never from the device: `max_query_len` (1 means
    decode only) or the shape of a `plan`. Without either, both kernels launch and each skips the other's sequences.
    """
    # Imported here, not at the top: both kernel files build on this file's contract.
    from kernels.paged_decode_attention import paged_decode_attention_triton
    from kernels.paged_prefill_attention import paged_prefill_attention_triton

    has_decodes = has_prefills = True
    if max_query_len is not None:
        has_prefills = max_query_len > 1
    elif plan is not None:
        has_decodes = plan.decode_rows.numel() > 0
        has_prefills = len(plan.prefills) > 0
    out = torch.empty_like(query)  # [num_tokens, num_heads, head_dim]
    args = (query, k_cache, v_cache, block_tables, prefix_lens, own_lens, query_start_loc, scale)
    if has_decodes:
        paged_decode_attention_triton(*args, out=out)
    if has_prefills:
        paged_prefill_attention_triton(*args, out=out, skip_single_query=has_decodes)
    return out


def paged_attention(query, k_cache, v_cache, block_tables, prefix_lens, own_lens, query_start_loc, scale: float,
                    use_reference: bool = False, plan: AttentionPlan | None = None,
                    max_query_len: int | None = None) -> torch.Tensor:
    """Paged attention under the contract above: Triton on CUDA, else the torch reference (with `plan` if given).

    `max_query_len`, the most queries any sequence has this step, is an optional host-side hint for the Triton
    path: with 1 it launches only the decode kernel.
    """
    if use_triton(query, use_reference):
        return paged_attention_triton(query, k_cache, v_cache, block_tables, prefix_lens, own_lens, query_start_loc,
                                      scale, plan=plan, max_query_len=max_query_len)
    if plan is None:
        plan = build_plan(block_tables, prefix_lens.cpu(), own_lens.cpu(), query_start_loc.cpu(),
                          k_cache.shape[1])
    return paged_attention_planned(query, k_cache, v_cache, plan, scale)
