"""Everything one step feeds the model besides the weights, built on the host from the scheduled chunks and copied
to the device in one transfer (pinned and non-blocking on CUDA; on CPU the host tensors are used as they are)."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from kernels.paged_attention_cpu import AttentionHeads, build_cpu_plan
from kernels.paged_attention_metadata import PagedAttentionMetadata
from server.engine.batch import Chunk


@dataclass(frozen=True)
class StepInputs:
    token_ids: torch.Tensor  # [num_tokens] int64; ids >= vocab_size are prompt-table rows
    positions: torch.Tensor  # [num_tokens] int64 position ids
    logit_rows: torch.Tensor  # [max(1, num_logits)] int64: each chunk's `num_logit_rows` last rows (one even if none)
    slot_mapping: torch.Tensor  # [num_tokens] int64: where each new token's K/V go
    attention: PagedAttentionMetadata  # per chunk: block tables, lengths, query offsets; checked once
    num_logits: int  # rows of logits the chunks need
    hidden_rows: torch.Tensor | None  # [num_hidden] int64: each chunk's `num_hidden_rows` last rows; None if none


def build_step_inputs(
    chunks: Seq[Chunk], block_size: int, device: torch.device, plan_heads: AttentionHeads | None
) -> StepInputs:
    """`plan_heads`: the model's heads, to build the torch path's index tensors too (it runs on CPU, or when
    forced); None: no plan."""
    token_ids = [t for c in chunks for t in c.token_ids]
    positions = [p for c in chunks for p in range(c.start_position, c.start_position + c.num_tokens)]
    slots = [
        c.own_blocks[i // block_size] * block_size + i % block_size
        for c in chunks
        for i in range(c.own_start, c.own_len)
    ]
    query_start_loc, logit_rows, hidden_rows = [0], list[int](), list[int]()
    for c in chunks:
        query_start_loc.append(query_start_loc[-1] + c.num_tokens)
        logit_rows += range(query_start_loc[-1] - c.num_logit_rows, query_start_loc[-1])
        hidden_rows += range(query_start_loc[-1] - c.num_hidden_rows, query_start_loc[-1])
    num_logits = len(logit_rows)
    width = max(len(c.block_table) for c in chunks)
    tables = [b for c in chunks for b in (*c.block_table, *[0] * (width - len(c.block_table)))]
    # One int64 buffer for all of it, so the device gets one copy instead of one per tensor.
    parts = [
        token_ids,
        positions,
        logit_rows or [query_start_loc[-1] - 1],
        slots,
        [c.prefix_len for c in chunks],
        [c.own_len for c in chunks],
        query_start_loc,
        tables,
    ]
    host = torch.tensor([v for part in parts for v in part], dtype=torch.int64, pin_memory=device.type == "cuda")
    flat = host.to(device, non_blocking=True)
    (token_ids_t, positions_t, logit_rows_t, slots_t, prefix_lens, own_lens, qsl, tables_t) = flat.split(
        [len(part) for part in parts]
    )
    block_tables = tables_t.view(len(chunks), width)
    plan = None
    if plan_heads is not None:  # built from host values: reading the device tensors back would sync
        host_parts = host.split([len(part) for part in parts])
        host_tables = host_parts[7].view(len(chunks), width)
        plan = build_cpu_plan(host_tables, host_parts[4], host_parts[5], host_parts[6], block_size, plan_heads, device)
    attention = PagedAttentionMetadata(
        block_tables,
        prefix_lens,
        own_lens,
        qsl,
        max_query_len=max(c.num_tokens for c in chunks),
        num_decodes=sum(1 for c in chunks if c.num_tokens == 1),
        plan=plan,
    )
    # Classification rows are rare and few: their own small copy rather than a part of the step's buffer.
    hidden_rows_t = torch.tensor(hidden_rows, dtype=torch.int64).to(device) if hidden_rows else None
    return StepInputs(token_ids_t, positions_t, logit_rows_t, slots_t, attention, num_logits, hidden_rows_t)
