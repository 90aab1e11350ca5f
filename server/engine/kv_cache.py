"""The paged KV pool: allocated once at start-up, shared by requests and the registry's prefix blocks."""

from __future__ import annotations

import torch

from prompt_store.model_shape import ModelShape


class KVCache:
    def __init__(self, shape: ModelShape, num_blocks: int, block_size: int, device: torch.device, dtype: torch.dtype):
        self.block_size = block_size
        # [layers, 2 (keys, values), blocks, block_size, kv_heads, head_dim]
        self.tensor = torch.zeros(
            shape.num_layers, 2, num_blocks, block_size, shape.num_kv_heads, shape.head_dim, device=device, dtype=dtype
        )

    def layer(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one layer. # each [blocks, block_size, kv_heads, head_dim]"""
        return self.tensor[layer_idx, 0], self.tensor[layer_idx, 1]

    def slots(self, blocks: list[int], num_tokens: int) -> torch.Tensor:
        """Slots of the first `num_tokens` tokens held in `blocks`, in order. # [num_tokens] int64"""
        positions = torch.arange(num_tokens)
        table = torch.tensor(blocks, dtype=torch.int64)
        return table[positions // self.block_size] * self.block_size + positions % self.block_size

    def write_prefix(self, blocks: list[int], prefix: torch.Tensor) -> None:
        """Copy a prefix-tuning prompt into its blocks. prefix: [layers, 2, p, kv_heads, head_dim]"""
        slots = self.slots(blocks, prefix.shape[2]).to(self.tensor.device)
        flat = self.tensor.view(*self.tensor.shape[:2], -1, *self.tensor.shape[-2:])  # [L, 2, slots, Hkv, D]
        flat[:, :, slots] = prefix.to(device=self.tensor.device, dtype=self.tensor.dtype)
