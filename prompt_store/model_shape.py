"""The served base model's dimensions: what the KV pool is sized by and what an uploaded prompt must agree with."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int  # embedding rows; ids at or above it address soft-prompt rows
    # torch dtype name the model serves in ("float32", "float16", ...): prompts are cast to it, so must stay finite
    # in it. A name, not a torch.dtype: the store's file layer imports this module and must not need torch.
    serving_dtype: str = "float32"

    @property
    def kv_token_dim(self) -> int:
        return self.num_kv_heads * self.head_dim
