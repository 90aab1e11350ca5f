"""The per-step description of a packed batch that paged attention reads in every layer, and the argument checks of
the contract in kernels/paged_attention_reference.py.

A `PagedAttentionMetadata` is checked once, when it is built, and carries host-side counts, so the dispatcher picks
its kernels every layer without a device sync or a Python check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels._triton_support import FLOAT_DTYPES, INDEX_DTYPES, check_dtype, check_ndim
from kernels.paged_attention_cpu import CpuAttentionPlan


@dataclass(frozen=True)
class PagedAttentionMetadata:
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32/int64: prefix blocks, then own blocks
    prefix_lens: torch.Tensor  # [num_seqs] int32/int64: shared prefix tokens
    own_lens: torch.Tensor  # [num_seqs] int32/int64: own tokens in the cache, this step's included
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32/int64: sequence s owns query rows [qsl[s], qsl[s+1])
    max_query_len: int  # most queries of any sequence this step; 1: decode only
    num_decodes: int  # sequences with exactly one query
    plan: CpuAttentionPlan | None = None  # the torch path's index tensors, when it runs (built from the same)

    def __post_init__(self) -> None:
        check_metadata("paged_attention", self.block_tables, self.prefix_lens, self.own_lens, self.query_start_loc)
        if len({t.device for t in (self.block_tables, self.prefix_lens, self.own_lens, self.query_start_loc)}) != 1:
            raise ValueError("paged_attention: the metadata tensors must share one device")

    @classmethod
    def from_tensors(
        cls, block_tables, prefix_lens, own_lens, query_start_loc, plan: CpuAttentionPlan | None = None
    ) -> PagedAttentionMetadata:
        """The counts read back from `query_start_loc` (a device sync on CUDA): for tests and benchmarks, not steps."""
        num_queries = query_start_loc.diff().tolist()
        return cls(
            block_tables,
            prefix_lens,
            own_lens,
            query_start_loc,
            max(num_queries, default=0),
            num_queries.count(1),
            plan,
        )


def check_metadata(name: str, block_tables, prefix_lens, own_lens, query_start_loc) -> None:
    """Raise ValueError unless the per-sequence tensors have the contract's shapes and dtypes. Values (lengths,
    block ids) are not checked: that would sync the device."""
    check_ndim(name, "block_tables", block_tables, 2, "[num_seqs, max_blocks]")
    num_seqs = block_tables.shape[0]
    for arg, tensor, length in (
        ("prefix_lens", prefix_lens, num_seqs),
        ("own_lens", own_lens, num_seqs),
        ("query_start_loc", query_start_loc, num_seqs + 1),
    ):
        if tensor.dim() != 1 or tensor.shape[0] != length:
            raise ValueError(
                f"{name}: {arg} must have shape ({length},) for {num_seqs} sequences, got {tuple(tensor.shape)}"
            )
        check_dtype(name, arg, tensor, INDEX_DTYPES)
    check_dtype(name, "block_tables", block_tables, INDEX_DTYPES)


def check_attention_args(
    name: str, query, k_cache, v_cache, block_tables, prefix_lens, own_lens, query_start_loc, out: torch.Tensor | None
) -> torch.Tensor:
    """Raise ValueError unless the arguments have the shapes and dtypes of the contract; return `out`, allocated
    (uninitialised) when None."""
    check_ndim(name, "query", query, 3, "[num_tokens, num_heads, head_dim]")
    check_ndim(name, "k_cache", k_cache, 4, "[num_blocks, block_size, num_kv_heads, head_dim]")
    check_ndim(name, "block_tables", block_tables, 2, "[num_seqs, max_blocks]")
    check_dtype(name, "query", query, FLOAT_DTYPES)
    if v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype:
        raise ValueError(
            f"{name}: v_cache {tuple(v_cache.shape)} {v_cache.dtype} != k_cache {tuple(k_cache.shape)} {k_cache.dtype}"
        )
    if k_cache.dtype != query.dtype:
        raise ValueError(f"{name}: cache dtype {k_cache.dtype} != query dtype {query.dtype}")
    num_heads, head_dim = query.shape[1:]
    num_kv_heads = k_cache.shape[2]
    if k_cache.shape[3] != head_dim:
        raise ValueError(f"{name}: cache head_dim {k_cache.shape[3]} != query head_dim {head_dim}")
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        raise ValueError(f"{name}: {num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    check_metadata(name, block_tables, prefix_lens, own_lens, query_start_loc)
    if out is None:
        return torch.empty_like(query)
    if out.shape != query.shape or out.dtype != query.dtype:
        raise ValueError(f"{name}: out must be {tuple(query.shape)} {query.dtype}, got {tuple(out.shape)} {out.dtype}")
    return out
