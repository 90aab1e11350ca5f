"""Runs one packed, unpadded batch through transformers' modeling code with our paged attention."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from kernels.embedding_gather import embedding_gather
from kernels.paged_attention_cpu import AttentionHeads
from server.engine.attention import STEP_KWARG, StepAttention
from server.engine.batch import Chunk
from server.engine.kv_cache import KVCache
from server.engine.prompt_table import PromptTable
from server.engine.step_inputs import build_step_inputs


@dataclass(frozen=True)
class RunOutput:
    logits: torch.Tensor  # [num_logit_rows, vocab]: each chunk's `num_logit_rows`, in packing order
    hidden: torch.Tensor | None  # [num_hidden_rows, hidden]: final hidden states (after the last norm); None if none


class ModelRunner:
    def __init__(
        self,
        model,
        kv_cache: KVCache,
        prompt_table: PromptTable,
        use_reference_kernels: bool,
        embedding_scale: float | None = None,
    ):
        self.model = model
        self.kv_cache = kv_cache
        self.prompt_table = prompt_table
        self.device = kv_cache.tensor.device
        self.embedding = model.get_input_embeddings().weight  # [vocab, hidden]
        self.use_reference = use_reference_kernels or self.device.type != "cuda"
        heads = AttentionHeads(model.config.num_attention_heads, kv_cache.tensor.shape[-2])
        self.plan_heads = heads if self.use_reference else None  # the torch path's index tensors, once per step
        # Gemma 3's embedding module scales token rows by sqrt(hidden) in the weights' dtype; PEFT's soft prompts go
        # in unscaled, so only rows of real tokens get it.
        self.embedding_scale = (
            None
            if embedding_scale is None
            else torch.tensor(embedding_scale, dtype=self.embedding.dtype).to(self.device)
        )
        # The backbone's output is the final hidden state every architecture's ...ForSequenceClassification and
        # ...ForTokenClassification head reads; the hook keeps a reference to it (no copy) for classification rows.
        self._last_hidden: torch.Tensor | None = None
        model.base_model.register_forward_hook(self._keep_last_hidden)

    def _keep_last_hidden(self, module, args, output) -> None:
        self._last_hidden = output[0]

    @torch.inference_mode()
    def run(self, chunks: Seq[Chunk]) -> RunOutput:
        """Forward every chunk; returns each chunk's `num_logit_rows` logits and `num_hidden_rows` final hidden
        states, in packing order."""
        inputs = build_step_inputs(chunks, self.kv_cache.block_size, self.device, self.plan_heads)
        embeds = embedding_gather(
            inputs.token_ids, self.embedding, self.prompt_table.rows, use_reference=self.use_reference
        )  # [num_tokens, hidden]
        if self.embedding_scale is not None:
            is_token = (inputs.token_ids < self.embedding.shape[0]).unsqueeze(1)  # [num_tokens, 1]
            embeds = torch.where(is_token, embeds * self.embedding_scale, embeds)
        step = StepAttention(self.kv_cache, inputs.slot_mapping, inputs.attention, self.use_reference)
        # A row per token (a step of decodes alone): 0 keeps them all, in order, without an index copy.
        every_row = inputs.num_logits == len(inputs.token_ids)
        out = self.model(
            inputs_embeds=embeds.unsqueeze(0),
            position_ids=inputs.positions.unsqueeze(0),
            use_cache=False,
            logits_to_keep=0 if every_row else inputs.logit_rows,
            **{STEP_KWARG: step},
        )
        hidden, self._last_hidden = self._last_hidden, None
        assert hidden is not None  # the backbone ran
        rows = None if inputs.hidden_rows is None else hidden[0].index_select(0, inputs.hidden_rows)
        return RunOutput(out.logits[0, : inputs.num_logits], rows)
