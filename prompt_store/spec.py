"""The one normalized form every PEFT prompt-learning file is read into."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a type only: the store's file layer imports this module and must not need torch
    import torch


class PromptKind(str, enum.Enum):
    EMBEDDING = "embedding"  # rows prepended to the input embeddings (prompt tuning, P-tuning, multitask)
    PREFIX_KV = "prefix_kv"  # per-layer keys and values inserted before the input (prefix tuning)


@dataclass(frozen=True)
class PromptSpec:
    """A validated soft prompt, ready to place on the device.

    Invariant: tensors are float32, finite, contiguous, on the CPU, and their shapes agree with `ModelShape`.
    """

    peft_type: str  # PEFT's name: PROMPT_TUNING, P_TUNING, PREFIX_TUNING, MULTITASK_PROMPT_TUNING
    kind: PromptKind
    num_virtual_tokens: int
    # EMBEDDING:  [num_variants, num_virtual_tokens, hidden]; variant i is multitask sub-task i (1 variant otherwise)
    # PREFIX_KV:  [num_variants(=1), num_layers, 2, num_virtual_tokens, num_kv_heads, head_dim]; index 0 keys, 1 values
    tensor: torch.Tensor

    @property
    def num_variants(self) -> int:
        return self.tensor.shape[0]

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()
