"""Paged attention in plain torch, fast enough to serve a CPU step: the contract and results of
kernels/paged_attention_reference.py (which stays its definition, and what the tests compare this with).

What makes it lean, each measured on a 64-sequence decode step of SmolLM2 (docs/benchmarks.md):
- The plan is built once per step from the lengths with tensor ops, not per sequence in Python, index tensors
  for the gathers included.
- Every decode row of a layer is served together, over its context padded to the longest row's; a step of
  decodes alone reads its queries and returns its output without an index copy.
- GQA by reshaping: query head h reads KV head h // group, so [rows, kv_heads, group, dim] queries meet
  [rows, kv_heads, context, dim] keys in one batched matmul, with no expanded copy of K/V.
- Keys are gathered (one index_select, head-major so the matmul reads them as they lie); values are never
  gathered: `embedding_bag` sums the probability-weighted value rows straight out of the cache.
Other dtypes than float32 take one SDPA call over gathered K/V instead (embedding_bag would round the
probabilities to the cache's dtype). Prefill sequences are served one by one as in the reference: their steps are
dominated by the model's matmuls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.paged_attention_reference import PrefillPart, _gather_slots, attend_prefill, context_slots, prefill_part


@dataclass(frozen=True)
class AttentionHeads:
    num_heads: int  # query heads
    num_kv_heads: int  # heads of the cache; query head h reads KV head h // (num_heads // num_kv_heads)


@dataclass(frozen=True)
class DecodeRows:
    """The step's one-query sequences, as one padded batch."""

    rows: slice | torch.Tensor  # their query rows: a slice when consecutive, else [num_decodes] int64
    slots: torch.Tensor  # [num_decodes, max_context] int64, padded with the row's own last slot
    mask: torch.Tensor  # [num_decodes, 1, 1, max_context] bool, False on padding
    bias: torch.Tensor  # [num_decodes, 1, 1, max_context] float32: 0 where visible, -inf on padding
    key_rows: torch.Tensor  # [num_decodes * kv_heads * max_context] int64: rows of the cache as [slots * Hkv, D]
    value_bags: torch.Tensor  # [num_decodes * num_heads, max_context] int64: the same rows, once per query head


@dataclass(frozen=True)
class CpuAttentionPlan:
    """Per-step index tensors of the torch path, built once and reused by every layer."""

    num_tokens: int  # query rows in the step
    decodes: DecodeRows | None  # None: no one-query sequence this step
    prefills: tuple[PrefillPart, ...]

    @property
    def is_decode_only(self) -> bool:
        """Every query row is a decode row, in order: attention reads and writes the rows as they are."""
        return self.decodes is not None and not self.prefills and self.decodes.rows == slice(0, self.num_tokens)


def build_cpu_plan(
    block_tables,
    prefix_lens,
    own_lens,
    query_start_loc,
    block_size: int,
    heads: AttentionHeads,
    device: torch.device | None = None,
) -> CpuAttentionPlan:
    """From host tensors, the metadata's (reading device ones back would sync); the plan's tensors go to `device`
    (default: the host)."""
    device = device or torch.device("cpu")
    tables = block_tables.to(torch.int64)
    starts = query_start_loc.to(torch.int64)
    num_queries = starts.diff()
    decode_seqs = (num_queries == 1).nonzero().squeeze(1)
    decodes = None
    if decode_seqs.numel():
        slots, mask = _padded_context_slots(
            tables[decode_seqs], prefix_lens[decode_seqs], own_lens[decode_seqs], block_size
        )
        decodes = _decode_rows(_rows(starts[decode_seqs]), slots, mask, heads, device)
    prefills = []
    for s in (num_queries > 1).nonzero().squeeze(1).tolist():
        prefix_len, own_len = int(prefix_lens[s]), int(own_lens[s])
        slots = context_slots(tables[s], prefix_len, own_len, block_size)
        part = prefill_part(slots, prefix_len + own_len, int(starts[s]), int(starts[s + 1]))
        prefills.append(PrefillPart(part.query_start, part.query_end, part.slots.to(device), part.mask.to(device)))
    return CpuAttentionPlan(int(starts[-1]), decodes, tuple(prefills))


def paged_attention_cpu(query, k_cache, v_cache, plan: CpuAttentionPlan, scale: float) -> torch.Tensor:
    """query [num_tokens, H, D] -> [num_tokens, H, D]; caches [num_blocks, block_size, Hkv, D]."""
    if plan.is_decode_only:
        assert plan.decodes is not None
        return _decode_attention(query, k_cache, v_cache, plan.decodes, scale)
    out = torch.empty_like(query)
    if plan.decodes is not None:
        rows = plan.decodes.rows
        if isinstance(rows, slice):
            out[rows] = _decode_attention(query[rows], k_cache, v_cache, plan.decodes, scale)
        else:
            decoded = _decode_attention(query.index_select(0, rows), k_cache, v_cache, plan.decodes, scale)
            out.index_copy_(0, rows, decoded)
    for part in plan.prefills:
        attend_prefill(query, k_cache, v_cache, part, scale, out)
    return out


def _decode_rows(rows, slots, mask, heads: AttentionHeads, device) -> DecodeRows:
    num_rows, max_context = slots.shape
    group = heads.num_heads // heads.num_kv_heads
    kv_heads = torch.arange(heads.num_kv_heads)[None, :, None]
    cache_rows = slots[:, None, :] * heads.num_kv_heads + kv_heads  # [rows, Hkv, max_context]
    value_bags = cache_rows[:, :, None, :].expand(num_rows, heads.num_kv_heads, group, max_context)
    bias = torch.zeros(mask.shape).masked_fill_(~mask, float("-inf"))
    return DecodeRows(
        rows if isinstance(rows, slice) else rows.to(device),
        slots.to(device),
        mask.to(device),
        bias.to(device),
        cache_rows.flatten().to(device),
        value_bags.reshape(num_rows * heads.num_heads, max_context).to(device),
    )


def _decode_attention(query, k_cache, v_cache, decodes: DecodeRows, scale: float) -> torch.Tensor:
    """query [num_decodes, H, D] -> [num_decodes, H, D]"""
    num_rows, num_heads, head_dim = query.shape
    num_kv_heads = k_cache.shape[2]
    grouped = query.view(num_rows, num_kv_heads, num_heads // num_kv_heads, head_dim)
    if query.dtype != torch.float32:
        keys = _gather_slots(k_cache, decodes.slots).transpose(1, 2)  # [num_decodes, Hkv, max_context, D]
        values = _gather_slots(v_cache, decodes.slots).transpose(1, 2)
        out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=decodes.mask, scale=scale)
        return out.view(num_rows, num_heads, head_dim)
    keys = k_cache.view(-1, head_dim).index_select(0, decodes.key_rows).view(num_rows, num_kv_heads, -1, head_dim)
    scores = torch.matmul(grouped, keys.transpose(-1, -2))  # [num_decodes, Hkv, group, max_context]
    probs = scores.mul_(scale).add_(decodes.bias).softmax(-1)
    # Padding has probability 0 exactly and names the row's own last slot (finite), so it adds nothing.
    weights = probs.view(num_rows * num_heads, -1)
    out = F.embedding_bag(decodes.value_bags, v_cache.view(-1, head_dim), mode="sum", per_sample_weights=weights)
    return out.view(num_rows, num_heads, head_dim)


def _padded_context_slots(tables, prefix_lens, own_lens, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`context_slots` of every row at once, padded to the longest with the row's own last slot. Padding never
    points at another sequence's slot: masked keys still enter SDPA's products (0 * value), so an inf or NaN there
    would turn this row into NaN. -> slots [rows, max_context] int64, mask [rows, 1, 1, max_context] bool"""
    prefix = prefix_lens.to(torch.int64)[:, None]  # [rows, 1]
    context = prefix + own_lens.to(torch.int64)[:, None]  # >= 1: a decode row's own token is in the cache
    positions = torch.arange(int(context.max()))[None, :]  # [1, max_context]
    is_visible = positions < context
    logical = torch.minimum(positions, context - 1)  # [rows, max_context]
    own = logical - prefix
    num_prefix_blocks = (prefix + block_size - 1) // block_size
    is_prefix = logical < prefix
    entry = torch.where(
        is_prefix, logical // block_size, num_prefix_blocks + own.div(block_size, rounding_mode="floor")
    )
    offset = torch.where(is_prefix, logical, own) % block_size
    slots = tables.gather(1, entry) * block_size + offset
    return slots, is_visible[:, None, None, :]


def _rows(rows: torch.Tensor) -> slice | torch.Tensor:
    first, count = int(rows[0]), rows.numel()
    if int(rows[-1]) - first + 1 == count:  # ascending and distinct by construction: consecutive
        return slice(first, first + count)
    return rows
