"""The decode attention kernel against its torch reference, on CPU under Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernels.paged_decode_attention import (
    paged_decode_attention_reference,
    paged_decode_attention_triton,
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
def test_decode_batch_matches_reference(make_batch, tolerances, dtype, group, block_size):
    batch = make_batch(
        "decode",
        block_size=block_size,
        num_kv_heads=2,
        group=group,
        head_dim=12,
        dtype=dtype,
        seed=block_size * 10 + group,
    )
    out = paged_decode_attention_triton(*batch.args(), out=batch.poisoned_out())
    expected = paged_decode_attention_reference(*batch.args())
    assert not out.isnan().any(), "a row of a one-query sequence was left unwritten"
    torch.testing.assert_close(out, expected, **tolerances[dtype])


@pytest.mark.parametrize("group", [1, 3])
def test_mixed_batch_writes_only_one_query_rows(make_batch, tolerances, group):
    batch = make_batch("mixed", block_size=4, num_kv_heads=1, group=group, head_dim=16, seed=group)
    out = paged_decode_attention_triton(*batch.args(), out=batch.poisoned_out())
    expected = paged_decode_attention_reference(*batch.args(), out=batch.poisoned_out())
    # NaN rows must match too: the kernel leaves other sequences' rows alone.
    torch.testing.assert_close(out, expected, equal_nan=True, **tolerances[torch.float32])
    assert out.isnan().any() and not out[batch.query_start_loc[:1].long()].isnan().any()


def test_head_dim_of_128_with_large_logits(make_batch, tolerances):
    """A realistic head size, with logits large enough that a missing max-subtraction would overflow."""
    batch = make_batch("decode", block_size=16, num_kv_heads=1, group=2, head_dim=128, seed=7)
    batch.query *= 30
    out = paged_decode_attention_triton(*batch.args(), out=batch.poisoned_out())
    torch.testing.assert_close(out, paged_decode_attention_reference(*batch.args()), **tolerances[torch.float32])


def test_allocates_out_when_none(make_batch, tolerances):
    batch = make_batch("decode", block_size=5, num_kv_heads=2, group=2, head_dim=8)
    out = paged_decode_attention_triton(*batch.args())
    assert out.shape == batch.query.shape and out.dtype == batch.query.dtype
    torch.testing.assert_close(out, paged_decode_attention_reference(*batch.args()), **tolerances[torch.float32])


def test_non_contiguous_query_and_int64_metadata(make_batch, tolerances):
    """The engine passes `query[0].transpose(0, 1)` of a [1, heads, tokens, dim] tensor: a strided view."""
    batch = make_batch("decode", block_size=3, num_kv_heads=3, group=3, head_dim=10, seed=3)
    strided = batch.query.transpose(0, 1).contiguous().transpose(0, 1)
    assert not strided.is_contiguous()
    args = list(batch.args())
    args[0] = strided
    for i in (3, 4, 5, 6):
        args[i] = args[i].long()
    out = paged_decode_attention_triton(*args)
    torch.testing.assert_close(out, paged_decode_attention_reference(*batch.args()), **tolerances[torch.float32])


def test_empty_batch_is_a_no_op(make_batch):
    batch = make_batch("decode", block_size=4, num_kv_heads=1, group=1, head_dim=8)
    empty = torch.zeros(0, dtype=torch.int32)
    out = paged_decode_attention_triton(
        batch.query[:0],
        batch.k_cache,
        batch.v_cache,
        batch.block_tables[:0],
        empty,
        empty,
        torch.zeros(1, dtype=torch.int32),
        batch.scale,
    )
    assert out.shape == (0, *batch.query.shape[1:])
