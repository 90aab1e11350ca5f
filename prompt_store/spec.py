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


class TaskKind(str, enum.Enum):
    """What a task serves, from its adapter's `task_type`."""

    GENERATE = "generate"  # CAUSAL_LM: text generation
    CLASSIFY_SEQUENCE = "classify-sequence"  # SEQ_CLS: one label for the whole input (its last token's state)
    CLASSIFY_TOKENS = "classify-tokens"  # TOKEN_CLS: one label per input token

    @property
    def is_classification(self) -> bool:
        return self is not TaskKind.GENERATE


@dataclass(frozen=True)
class ClassifierHead:
    """A classification task's head, PEFT's `modules_to_save` copy of the model's `score` / `classifier` layer:
    logits = hidden_state @ weight.T + bias.

    Invariant: float32, finite, contiguous, on the CPU; weight [num_labels, hidden], bias [num_labels] or None.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    labels: tuple[str, ...]  # one per row of `weight`: the upload's `labels`, else LABEL_0, LABEL_1, ...

    @property
    def num_labels(self) -> int:
        return self.weight.shape[0]

    @property
    def nbytes(self) -> int:
        bias = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.weight.numel() * self.weight.element_size() + bias


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
    task_kind: TaskKind = TaskKind.GENERATE
    head: ClassifierHead | None = None  # set exactly when task_kind is a classification kind

    @property
    def num_variants(self) -> int:
        return self.tensor.shape[0]

    @property
    def nbytes(self) -> int:
        head = 0 if self.head is None else self.head.nbytes
        return self.tensor.numel() * self.tensor.element_size() + head
