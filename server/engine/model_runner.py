"""Runs one packed, unpadded batch through transformers' modeling code with our paged attention."""

from __future__ import annotations

import torch

from kernels.embedding_gather import embedding_gather
from kernels.paged_attention import build_plan
from server.engine.attention import STEP_KWARG, StepAttention
from server.engine.batch import Chunk
from server.engine.kv_cache import KVCache
from server.engine.prompt_table import PromptTable


class ModelRunner:
    def __init__(self, model, kv_cache: KVCache, prompt_table: PromptTable, use_reference_kernels: bool):
        self.model = model
        self.kv_cache = kv_cache
        self.prompt_table = prompt_table
        self.device = kv_cache.tensor.device
        self.embedding = model.get_input_embeddings().weight  # [vocab, hidden]
        self.use_reference = use_reference_kernels or self.device.type != "cuda"

    @torch.inference_mode()
    def run(self, chunks: list[Chunk]) -> torch.Tensor:
        """Forward every chunk; returns the last-token logits of chunks with `needs_logits`. # [n, vocab]"""
        token_ids = torch.tensor([t for c in chunks for t in c.token_ids], dtype=torch.int64)
        positions = torch.cat([torch.arange(c.start_position, c.start_position + c.num_tokens) for c in chunks])
        step = self._step_attention(chunks)
        embeds = embedding_gather(token_ids.to(self.device), self.embedding, self.prompt_table.rows,
                                  use_reference=self.use_reference)
        logit_rows = self._logit_rows(chunks)
        out = self.model(inputs_embeds=embeds.unsqueeze(0), position_ids=positions.to(self.device).unsqueeze(0),
                         use_cache=False, logits_to_keep=logit_rows.to(self.device), **{STEP_KWARG: step})
        num_wanted = sum(1 for c in chunks if c.needs_logits)
        return out.logits[0, :num_wanted]

    def _logit_rows(self, chunks: list[Chunk]) -> torch.Tensor:
        ends, rows = 0, []
        for c in chunks:
            ends += c.num_tokens
            if c.needs_logits:
                rows.append(ends - 1)
        return torch.tensor(rows or [ends - 1], dtype=torch.int64)  # one row at least; unused if none wanted

    def _step_attention(self, chunks: list[Chunk]) -> StepAttention:
        block_size = self.kv_cache.block_size
        slots, tables, starts = [], [], [0]
        for c in chunks:
            own = torch.arange(c.own_start, c.own_len)
            own_table = torch.tensor(c.own_blocks, dtype=torch.int64)
            slots.append(own_table[own // block_size] * block_size + own % block_size)
            tables.append(c.block_table)
            starts.append(starts[-1] + c.num_tokens)
        width = max(len(t) for t in tables)
        block_tables = torch.tensor([list(t) + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
        prefix_lens = torch.tensor([c.prefix_len for c in chunks], dtype=torch.int32)
        own_lens = torch.tensor([c.own_len for c in chunks], dtype=torch.int32)
        query_start_loc = torch.tensor(starts, dtype=torch.int32)
        to = self.device
        plan = build_plan(block_tables.to(to), prefix_lens, own_lens, query_start_loc, block_size) \
            if self.use_reference else None
        return StepAttention(
            kv_cache=self.kv_cache, slot_mapping=torch.cat(slots).to(to), block_tables=block_tables.to(to),
            prefix_lens=prefix_lens.to(to), own_lens=own_lens.to(to), query_start_loc=query_start_loc.to(to),
            plan=plan, use_reference=self.use_reference)

