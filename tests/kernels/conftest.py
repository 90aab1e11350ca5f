"""Kernel tests: the Triton launchers run on CPU tensors under Triton's interpreter, against their torch references.

TRITON_INTERPRET is set per test rather than for the whole session, so other test folders keep their own mode;
the launchers jit their kernels at launch time (kernels._triton_support.LazyKernel), which is when it is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from kernels.paged_attention_cpu import CpuAttentionPlan
from kernels.paged_attention_metadata import PagedAttentionMetadata

NAN = float("nan")

# Tolerance per dtype, kernel vs reference. Both accumulate in float32; what differs is rounding of the output
# (and, for bfloat16, the interpreter's float32 -> bfloat16 conversion truncates where CUDA rounds to nearest:
# one more ulp, 2**-8 relative).
TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


@pytest.fixture
def tolerances():
    return TOLERANCES


def pytest_configure(config):
    config.addinivalue_line("markers", "compiled: runs Triton's compiler, so not under the interpreter")


@pytest.fixture(autouse=True)
def triton_interpreter(request, monkeypatch):
    """Run every launch in this folder under Triton's interpreter.

    Triton decorates its own library functions (`tl.zeros`, `tl.max`, `tl.sum`...) once, at import, for the mode
    of that moment, and the interpreter cannot call compiled-mode ones. In a full test run something (transformers'
    Llama import, for one) imports triton long before this fixture, so those functions are swapped for
    interpreted twins for the duration of the test.
    """
    if request.node.get_closest_marker("compiled"):
        return
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    try:
        import triton.language as tl
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction
    except ImportError:
        return
    for name, member in list(vars(tl).items()):
        if isinstance(member, JITFunction):
            monkeypatch.setattr(tl, name, InterpretedFunction(member.fn))


@dataclass(frozen=True)
class SeqSpec:
    task: int  # index into the batch's task prefix lengths; sequences of one task share its prefix blocks
    own_len: int  # own tokens in the cache, this step's included
    num_queries: int  # this step's tokens (0: the sequence sits this step out)


@dataclass
class PagedBatch:
    query: torch.Tensor  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    prefix_lens: torch.Tensor  # [num_seqs] int32
    own_lens: torch.Tensor  # [num_seqs] int32
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    scale: float

    def args(self) -> tuple:
        return (
            self.query,
            self.k_cache,
            self.v_cache,
            self.block_tables,
            self.prefix_lens,
            self.own_lens,
            self.query_start_loc,
            self.scale,
        )

    def metadata(self, plan: CpuAttentionPlan | None = None) -> PagedAttentionMetadata:
        """What the engine's step builds for this batch, the routing counts read back from `query_start_loc`."""
        return PagedAttentionMetadata.from_tensors(
            self.block_tables, self.prefix_lens, self.own_lens, self.query_start_loc, plan
        )

    def poisoned_out(self) -> torch.Tensor:
        return torch.full_like(self.query, NAN)


def make_paged_batch(
    seqs: list[SeqSpec],
    task_prefix_lens: list[int],
    *,
    block_size: int,
    num_kv_heads: int,
    group: int,
    head_dim: int,
    dtype=torch.float32,
    seed: int = 0,
) -> PagedBatch:
    """A random packed batch over a shuffled block pool. Every cache slot no sequence owns (spare blocks, the tails
    of part-filled blocks) and every unused block-table entry holds NaN, so reading one shows in the output."""
    gen = torch.Generator().manual_seed(seed)
    num_prefix_blocks = [math.ceil(p / block_size) for p in task_prefix_lens]
    num_own_blocks = [math.ceil(s.own_len / block_size) for s in seqs]
    num_used = sum(num_prefix_blocks) + sum(num_own_blocks)
    num_blocks = num_used + 3  # spares, full of NaN
    order = torch.randperm(num_blocks, generator=gen).tolist()
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, NAN, dtype=dtype)
    v_cache = torch.full(shape, NAN, dtype=dtype)

    def fill(blocks: list[int], length: int) -> None:
        for i in range(length):
            for cache in (k_cache, v_cache):
                cache[blocks[i // block_size], i % block_size] = torch.randn(num_kv_heads, head_dim, generator=gen)

    task_blocks = []
    for prefix_len, count in zip(task_prefix_lens, num_prefix_blocks):
        task_blocks.append([order.pop() for _ in range(count)])
        fill(task_blocks[-1], prefix_len)
    max_blocks = max([num_prefix_blocks[s.task] + n for s, n in zip(seqs, num_own_blocks)], default=0) + 1
    spare = order[-1]  # never filled: unused table entries point at NaN
    tables = []
    for s, count in zip(seqs, num_own_blocks):
        own = [order.pop(0) for _ in range(count)]
        fill(own, s.own_len)
        row = task_blocks[s.task] + own
        tables.append(row + [spare] * (max_blocks - len(row)))
    starts = [0]
    for s in seqs:
        starts.append(starts[-1] + s.num_queries)
    num_heads = num_kv_heads * group
    return PagedBatch(
        query=torch.randn(starts[-1], num_heads, head_dim, generator=gen).to(dtype),
        k_cache=k_cache,
        v_cache=v_cache,
        block_tables=torch.tensor(tables, dtype=torch.int32).reshape(len(seqs), max_blocks),
        prefix_lens=torch.tensor([task_prefix_lens[s.task] for s in seqs], dtype=torch.int32),
        own_lens=torch.tensor([s.own_len for s in seqs], dtype=torch.int32),
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        scale=head_dim**-0.5,
    )


# Awkward on purpose: prefixes of 0 blocks, of a whole number of blocks and ending mid-block, shared by several
# sequences; single-token sequences, a sequence sitting the step out, chunks that are the whole sequence, chunks
# continuing one, a decode spanning several key tiles.
TASK_PREFIX_LENS = [0, 7, 10, 3]
MIXED_SEQS = [
    SeqSpec(task=0, own_len=1, num_queries=1),  # first token, nothing before it
    SeqSpec(task=1, own_len=4, num_queries=2),
    SeqSpec(task=2, own_len=9, num_queries=9),  # first chunk: all own tokens are new
    SeqSpec(task=3, own_len=1, num_queries=0),  # no query this step
    SeqSpec(task=1, own_len=13, num_queries=5),
    SeqSpec(task=1, own_len=37, num_queries=1),  # long decode
    SeqSpec(task=3, own_len=6, num_queries=1),
    SeqSpec(task=0, own_len=3, num_queries=3),
]
DECODE_SEQS = [
    SeqSpec(task=0, own_len=1, num_queries=1),
    SeqSpec(task=1, own_len=5, num_queries=1),
    SeqSpec(task=2, own_len=40, num_queries=1),
    SeqSpec(task=1, own_len=2, num_queries=1),
    SeqSpec(task=3, own_len=11, num_queries=1),
]


SCENARIOS = {
    "mixed": (TASK_PREFIX_LENS, MIXED_SEQS),
    "decode": (TASK_PREFIX_LENS, DECODE_SEQS),
    "prefill": (TASK_PREFIX_LENS, [s for s in MIXED_SEQS if s.num_queries != 1]),
}


@pytest.fixture
def make_batch():
    """make_batch(scenario, block_size=, num_kv_heads=, group=, head_dim=, dtype=, seed=) -> PagedBatch"""

    def make(scenario: str, **dims) -> PagedBatch:
        task_prefix_lens, seqs = SCENARIOS[scenario]
        return make_paged_batch(seqs, task_prefix_lens, **dims)

    return make


def naive_paged_attention(
    query, k_cache, v_cache, block_tables, prefix_lens, own_lens, query_start_loc, scale
) -> torch.Tensor:
    """The contract spelled out one token and one head at a time, in float64; rows of no sequence stay NaN."""
    out = torch.full(query.shape, NAN, dtype=torch.float64)
    block_size = k_cache.shape[1]
    group = query.shape[1] // k_cache.shape[2]
    for seq in range(block_tables.shape[0]):
        prefix_len, own_len = int(prefix_lens[seq]), int(own_lens[seq])
        num_prefix_blocks = math.ceil(prefix_len / block_size)
        keys, values = [], []
        for position in range(prefix_len + own_len):
            if position < prefix_len:
                entry, offset = divmod(position, block_size)
            else:
                entry, offset = divmod(position - prefix_len, block_size)
                entry += num_prefix_blocks
            block = int(block_tables[seq, entry])
            keys.append(k_cache[block, offset].double())
            values.append(v_cache[block, offset].double())
        first, end = int(query_start_loc[seq]), int(query_start_loc[seq + 1])
        for i, row in enumerate(range(first, end)):
            visible = prefix_len + own_len - (end - first) + i + 1
            for head in range(query.shape[1]):
                k = torch.stack([key[head // group] for key in keys[:visible]])
                v = torch.stack([value[head // group] for value in values[:visible]])
                weights = torch.softmax(k @ query[row, head].double() * scale, dim=0)
                out[row, head] = weights @ v
    return out


@pytest.fixture
def naive_attention():
    return naive_paged_attention
