"""Device rows of embedding-kind soft prompts, addressed by token ids >= vocab_size in the packed batch."""

from __future__ import annotations

import torch


class OutOfRowsError(Exception):
    """Fewer free rows than asked for; nothing was allocated."""


class PromptTable:
    def __init__(self, num_rows: int, hidden_size: int, device: torch.device, dtype: torch.dtype):
        self.rows = torch.zeros(num_rows, hidden_size, device=device, dtype=dtype)  # [num_rows, hidden]
        self._free: list[int] = list(range(num_rows - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def store(self, embeddings: torch.Tensor) -> list[int]:
        """Place `embeddings` [p, hidden] in free rows; rows need not be contiguous (the gather is per token)."""
        count = embeddings.shape[0]
        if count > len(self._free):
            raise OutOfRowsError(f"asked for {count} prompt rows, {len(self._free)} free")
        row_ids = [self._free.pop() for _ in range(count)]
        index = torch.tensor(row_ids, device=self.rows.device)
        self.rows.index_copy_(0, index, embeddings.to(device=self.rows.device, dtype=self.rows.dtype))
        return row_ids

    def free(self, row_ids: list[int]) -> None:
        self._free.extend(row_ids)
