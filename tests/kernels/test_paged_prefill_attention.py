"""The prefill attention kernel against its torch reference, on CPU under Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernels.paged_prefill_attention import (
    paged_prefill_attention_reference,
    paged_prefill_attention_triton,
)

# Every dtype, GQA ratio and block size, each pair of them once (a Latin square): the interpreter is slow.
CASES = [
    (torch.float32, 1, 1),
    (torch.float16, 2, 1),
    (torch.bfloat16, 3, 1),
    (torch.float16, 1, 5),
    (torch.bfloat16, 2, 5),
    (torch.float32, 3, 5),
    (torch.bfloat16, 1, 16),
    (torch.float32, 2, 16),
    (torch.float16, 3, 16),
]


@pytest.mark.parametrize("dtype, group, block_size", CASES, ids=lambda v: str(v).removeprefix("torch."))
def test_mixed_batch_matches_reference(make_batch, tolerances, dtype, group, block_size):
    """Small tiles (16 rows, 16 keys) so chunks span several query tiles and contexts several key tiles."""
    batch = make_batch(
        "mixed",
        block_size=block_size,
        num_kv_heads=2,
        group=group,
        head_dim=12,
        dtype=dtype,
        seed=block_size * 10 + group,
    )
    out = paged_prefill_attention_triton(*batch.args(), out=batch.poisoned_out(), block_m=16, block_n=16)
    expected = paged_prefill_attention_reference(*batch.args())
    assert not out.isnan().any(), "a query row was left unwritten"
    torch.testing.assert_close(out, expected, **tolerances[dtype])


@pytest.mark.parametrize("group", [1, 3])
def test_default_tiles(make_batch, tolerances, group):
    batch = make_batch("mixed", block_size=4, num_kv_heads=2, group=group, head_dim=16, seed=group)
    out = paged_prefill_attention_triton(*batch.args(), out=batch.poisoned_out())
    torch.testing.assert_close(out, paged_prefill_attention_reference(*batch.args()), **tolerances[torch.float32])


def test_skip_single_query_leaves_decode_rows_alone(make_batch, tolerances):
    batch = make_batch("mixed", block_size=5, num_kv_heads=1, group=3, head_dim=8, seed=11)
    out = paged_prefill_attention_triton(
        *batch.args(), out=batch.poisoned_out(), skip_single_query=True, block_m=16, block_n=16
    )
    expected = paged_prefill_attention_reference(*batch.args(), out=batch.poisoned_out(), skip_single_query=True)
    torch.testing.assert_close(out, expected, equal_nan=True, **tolerances[torch.float32])
    num_queries = batch.query_start_loc.diff()
    single_rows = batch.query_start_loc[:-1][num_queries == 1].long()
    assert out[single_rows].isnan().all() and not out[out.isnan().flatten(1).all(1).logical_not()].isnan().any()


def test_group_wider_than_a_tile(make_batch, tolerances):
    """32 query heads per KV head: the tile grows to hold one query's whole group."""
    batch = make_batch("prefill", block_size=6, num_kv_heads=1, group=32, head_dim=8, seed=5)
    out = paged_prefill_attention_triton(*batch.args(), out=batch.poisoned_out(), block_m=16, block_n=16)
    torch.testing.assert_close(out, paged_prefill_attention_reference(*batch.args()), **tolerances[torch.float32])


def test_non_contiguous_query_and_out(make_batch, tolerances):
    batch = make_batch("mixed", block_size=3, num_kv_heads=2, group=2, head_dim=10, seed=3)
    query = batch.query.transpose(0, 1).contiguous().transpose(0, 1)
    out = torch.full_like(query, float("nan"))
    assert not query.is_contiguous() and not out.is_contiguous()
    args = (query, *batch.args()[1:])
    paged_prefill_attention_triton(*args, out=out, block_m=16, block_n=16)
    torch.testing.assert_close(out, paged_prefill_attention_reference(*batch.args()), **tolerances[torch.float32])


@pytest.mark.parametrize("block_m, block_n", [(12, 16), (16, 8), (0, 16)])
def test_tile_sizes_must_be_powers_of_two(make_batch, block_m, block_n):
    batch = make_batch("prefill", block_size=4, num_kv_heads=1, group=1, head_dim=8)
    with pytest.raises(ValueError, match="power of two"):
        paged_prefill_attention_triton(*batch.args(), block_m=block_m, block_n=block_n)
