"""The torch path the engine runs on CPU (kernels/paged_attention_cpu.py) against the reference, on the awkward
batches of conftest.py: prefixes of 0 blocks and ending mid-block, lengths that are no multiple of the block size,
GQA groups of 1 to 3, decode and prefill rows mixed, and NaN in every slot no sequence owns."""

from __future__ import annotations

import pytest
import torch

from kernels.paged_attention_cpu import AttentionHeads, build_cpu_plan, paged_attention_cpu
from kernels.paged_attention_reference import build_plan, paged_attention_reference
from tests.kernels.conftest import TASK_PREFIX_LENS, SeqSpec, make_paged_batch

TIGHT = dict(atol=1e-6, rtol=1e-5)  # both are float32 SDPA over the same keys; only the summation order differs


def _cpu_plan(batch):
    args = (batch.block_tables, batch.prefix_lens, batch.own_lens, batch.query_start_loc, batch.k_cache.shape[1])
    return build_cpu_plan(*args, AttentionHeads(batch.query.shape[1], batch.k_cache.shape[2]))


def _cpu_attention(batch):
    return paged_attention_cpu(batch.query, batch.k_cache, batch.v_cache, _cpu_plan(batch), batch.scale)


@pytest.mark.parametrize("scenario", ["mixed", "decode", "prefill"])
@pytest.mark.parametrize("group, block_size", [(1, 1), (2, 5), (3, 4), (3, 16)])
def test_matches_the_reference(make_batch, naive_attention, scenario, group, block_size):
    batch = make_batch(scenario, block_size=block_size, num_kv_heads=2, group=group, head_dim=6, seed=group)
    out = _cpu_attention(batch)
    assert not out.isnan().any()
    torch.testing.assert_close(out, paged_attention_reference(*batch.args()), **TIGHT)
    torch.testing.assert_close(out.double(), naive_attention(*batch.args()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block_size", [1, 3, 4, 16])
def test_plan_holds_the_reference_plans_slots(make_batch, block_size):
    """Built with tensor ops for all rows at once, it names the same slots and masks as the per-sequence loop."""
    batch = make_batch("mixed", block_size=block_size, num_kv_heads=1, group=2, head_dim=4)
    plan = _cpu_plan(batch)
    reference = build_plan(batch.block_tables, batch.prefix_lens, batch.own_lens, batch.query_start_loc, block_size)
    assert plan.decodes is not None and not plan.is_decode_only
    assert torch.equal(plan.decodes.rows, reference.decode_rows)
    assert torch.equal(plan.decodes.slots, reference.decode_slots)
    assert torch.equal(plan.decodes.mask, reference.decode_mask)
    assert len(plan.prefills) == len(reference.prefills)
    for ours, theirs in zip(plan.prefills, reference.prefills):
        assert (ours.query_start, ours.query_end) == (theirs.query_start, theirs.query_end)
        assert torch.equal(ours.slots, theirs.slots) and torch.equal(ours.mask, theirs.mask)


def test_decode_only_step_reads_and_writes_rows_in_place(make_batch):
    batch = make_batch("decode", block_size=4, num_kv_heads=3, group=3, head_dim=8, seed=5)
    plan = _cpu_plan(batch)
    assert plan.is_decode_only and plan.decodes is not None
    assert plan.decodes.rows == slice(0, batch.query.shape[0])
    torch.testing.assert_close(_cpu_attention(batch), paged_attention_reference(*batch.args()), **TIGHT)


def test_consecutive_decodes_after_prefills_take_a_slice():
    seqs = [
        SeqSpec(task=2, own_len=9, num_queries=4),
        SeqSpec(task=3, own_len=2, num_queries=0),
        SeqSpec(task=1, own_len=6, num_queries=1),
        SeqSpec(task=0, own_len=1, num_queries=1),
        SeqSpec(task=3, own_len=30, num_queries=1),
    ]
    batch = make_paged_batch(seqs, TASK_PREFIX_LENS, block_size=4, num_kv_heads=2, group=2, head_dim=8, seed=3)
    plan = _cpu_plan(batch)
    assert plan.decodes is not None and plan.decodes.rows == slice(4, 7) and not plan.is_decode_only
    torch.testing.assert_close(_cpu_attention(batch), paged_attention_reference(*batch.args()), **TIGHT)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_other_dtypes_take_sdpa_and_match_the_reference(make_batch, tolerances, dtype):
    batch = make_batch("mixed", block_size=4, num_kv_heads=2, group=3, head_dim=8, dtype=dtype, seed=6)
    torch.testing.assert_close(_cpu_attention(batch), paged_attention_reference(*batch.args()), **tolerances[dtype])


def test_gather_rows_name_each_slots_heads():
    """Keys are read as rows of a [slots * kv_heads, head_dim] view, values once per query head of the group."""
    batch = make_paged_batch(
        [SeqSpec(task=1, own_len=2, num_queries=1), SeqSpec(task=0, own_len=3, num_queries=1)],
        TASK_PREFIX_LENS,
        block_size=4,
        num_kv_heads=2,
        group=2,
        head_dim=4,
    )
    decodes = _cpu_plan(batch).decodes
    assert decodes is not None
    slots = decodes.slots  # [2, 9]: 7 prefix + 2 own; 3 own, padded
    expected_keys = torch.stack([slots * 2, slots * 2 + 1], dim=1)  # [rows, kv_heads, max_context]
    assert torch.equal(decodes.key_rows, expected_keys.flatten())
    assert torch.equal(decodes.value_bags.view(2, 2, 2, -1), expected_keys[:, :, None].expand(2, 2, 2, -1))
    assert decodes.bias[1, 0, 0].tolist() == [0.0] * 3 + [float("-inf")] * 6
