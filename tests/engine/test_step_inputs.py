"""What a step feeds the model: built on the host from the chunks, in one buffer (one host-to-device copy)."""

from __future__ import annotations

import torch

from kernels.paged_attention_cpu import AttentionHeads
from server.engine.batch import Chunk
from server.engine.step_inputs import build_step_inputs

BLOCK_SIZE = 4
CPU = torch.device("cpu")


def _chunks() -> list[Chunk]:
    return [
        # a prefill chunk continuing a sequence after a 5-token prefix: own tokens 2..6
        Chunk(
            token_ids=(11, 12, 13, 14, 15),
            start_position=7,
            prefix_len=5,
            prefix_blocks=(9, 3),
            own_blocks=(6, 1),
            own_start=2,
            needs_logits=True,
        ),
        # a materialization-like chunk: no prefix, no logits
        Chunk(
            token_ids=(101, 102),
            start_position=0,
            prefix_len=0,
            prefix_blocks=(),
            own_blocks=(8,),
            own_start=0,
            needs_logits=False,
        ),
        # a decode at own position 4 (second own block)
        Chunk(
            token_ids=(21,),
            start_position=4,
            prefix_len=0,
            prefix_blocks=(),
            own_blocks=(2, 5),
            own_start=4,
            needs_logits=True,
        ),
    ]


def test_every_tensor_is_the_chunks_spelled_out():
    inputs = build_step_inputs(_chunks(), BLOCK_SIZE, CPU, plan_heads=None)
    assert inputs.token_ids.tolist() == [11, 12, 13, 14, 15, 101, 102, 21]
    assert inputs.positions.tolist() == [7, 8, 9, 10, 11, 0, 1, 4]
    # own token i sits in own_blocks[i // 4] at offset i % 4
    assert inputs.slot_mapping.tolist() == [
        6 * 4 + 2,
        6 * 4 + 3,
        1 * 4 + 0,
        1 * 4 + 1,
        1 * 4 + 2,
        8 * 4,
        8 * 4 + 1,
        5 * 4 + 0,
    ]
    assert inputs.logit_rows.tolist() == [4, 7] and inputs.num_logits == 2
    meta = inputs.attention
    assert meta.block_tables.tolist() == [[9, 3, 6, 1], [8, 0, 0, 0], [2, 5, 0, 0]]
    assert meta.prefix_lens.tolist() == [5, 0, 0] and meta.own_lens.tolist() == [7, 2, 5]
    assert meta.query_start_loc.tolist() == [0, 5, 7, 8]
    assert (meta.max_query_len, meta.num_decodes, meta.plan) == (5, 1, None)


def test_one_buffer_holds_everything_so_the_device_gets_one_copy():
    inputs = build_step_inputs(_chunks(), BLOCK_SIZE, CPU, plan_heads=AttentionHeads(4, 2))
    meta = inputs.attention
    tensors = [
        inputs.token_ids,
        inputs.positions,
        inputs.logit_rows,
        inputs.slot_mapping,
        meta.block_tables,
        meta.prefix_lens,
        meta.own_lens,
        meta.query_start_loc,
    ]
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1
    plan = meta.plan
    assert plan is not None and plan.decodes is not None and plan.decodes.rows == slice(7, 8)
    # the decode's context: own tokens 0..4 in blocks 2 and 5
    assert plan.decodes.slots.tolist() == [[8, 9, 10, 11, 20]]
    assert [(p.query_start, p.query_end, p.slots.tolist()) for p in plan.prefills] == [
        (0, 5, [36, 37, 38, 39, 12, 24, 25, 26, 27, 4, 5, 6]),
        (5, 7, [32, 33]),
    ]


def test_a_step_with_no_logits_still_keeps_one_row():
    chunks = [
        Chunk(
            token_ids=(101, 102, 103),
            start_position=0,
            prefix_len=0,
            prefix_blocks=(),
            own_blocks=(0,),
            own_start=0,
            needs_logits=False,
        )
    ]
    inputs = build_step_inputs(chunks, BLOCK_SIZE, CPU, plan_heads=None)
    assert inputs.logit_rows.tolist() == [2] and inputs.num_logits == 0
