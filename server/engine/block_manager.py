"""Free-list allocator of KV cache blocks. Pure Python: it hands out block ids, the KV pool holds the tensors."""

from __future__ import annotations


class OutOfBlocksError(Exception):
    """Fewer free blocks than asked for; nothing was allocated."""


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first
        self._is_free = [True] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def allocate(self, num: int) -> list[int]:
        if num > len(self._free):
            raise OutOfBlocksError(f"asked for {num} blocks, {len(self._free)} free")
        blocks = [self._free.pop() for _ in range(num)]
        for block in blocks:
            self._is_free[block] = False
        return blocks

    def free(self, blocks: list[int]) -> None:
        """Return blocks to the pool; all or nothing, so a bad id never leaves the pool half-updated."""
        if len(set(blocks)) != len(blocks):
            raise ValueError(f"blocks {blocks} repeat an id")
        for block in blocks:
            if not 0 <= block < self.num_blocks:
                raise ValueError(f"block {block} is not in the pool of {self.num_blocks}")
            if self._is_free[block]:
                raise ValueError(f"block {block} freed twice")
        for block in blocks:
            self._is_free[block] = True
            self._free.append(block)

    def grow(self, blocks: list[int], num_tokens: int) -> None:
        """Extend `blocks` in place so they hold `num_tokens` tokens."""
        missing = self.blocks_for(num_tokens) - len(blocks)
        if missing > 0:
            blocks.extend(self.allocate(missing))
