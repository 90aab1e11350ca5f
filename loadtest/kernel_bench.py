"""Microbenchmarks of promptswap's kernels: time per call and bandwidth achieved against the bytes each must move.

    python -m loadtest.kernel_bench [--device auto|cpu|cuda] [--dtype float16] [--repeats 20] [--json FILE]

On CUDA every kernel runs twice, as Triton and as its torch reference (and the two outputs are compared); on CPU
only the references run, since Triton has no CPU backend outside its (slow, test-only) interpreter. The shapes
are SmolLM2-135M's (9 query heads, 3 KV heads, head_dim 64, hidden 576, vocabulary 49152) with 16-token blocks.
"Bytes" is the minimum traffic of the operation (every input read once, every output written once); GB/s is
bytes / median time, so a gather that re-reads K/V per query head scores below the memory system's peak.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from kernels.embedding_gather import embedding_gather_reference, embedding_gather_triton
from kernels.kv_write import kv_write_reference, kv_write_triton
from kernels.paged_attention_reference import build_plan, paged_attention_planned
from kernels.paged_decode_attention import paged_decode_attention_triton
from kernels.paged_prefill_attention import paged_prefill_attention_triton

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, HIDDEN, VOCAB, BLOCK_SIZE = 9, 3, 64, 576, 49152, 16


@dataclass(frozen=True)
class Result:
    kernel: str
    implementation: str  # "triton" or "reference"
    device: str
    shape: str  # what was run, in words
    median_ms: float
    bytes_moved: int
    gb_per_s: float
    max_abs_diff: float | None  # Triton vs reference, on CUDA only


def _time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median milliseconds of `fn` after two warm-up calls (which also compile Triton kernels)."""
    for _ in range(2):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - began) * 1e3)
    return statistics.median(samples)


@dataclass
class PagedBatch:
    """A batch over a paged cache: `num_seqs` sequences of one task sharing `prefix_len` prefix tokens."""

    query: torch.Tensor  # [num_tokens, heads, head_dim]
    k_cache: torch.Tensor  # [num_blocks, block_size, kv_heads, head_dim]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    prefix_lens: torch.Tensor  # [num_seqs] int32
    own_lens: torch.Tensor  # [num_seqs] int32
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    context_tokens: int  # distinct K/V tokens the batch reads (the shared prefix counted once)

    def args(self) -> tuple:
        return (
            self.query,
            self.k_cache,
            self.v_cache,
            self.block_tables,
            self.prefix_lens,
            self.own_lens,
            self.query_start_loc,
            HEAD_DIM**-0.5,
        )


def make_paged_batch(num_seqs: int, prefix_len: int, own_len: int, num_queries: int, dtype, device) -> PagedBatch:
    num_prefix_blocks = -(-prefix_len // BLOCK_SIZE)
    num_own_blocks = -(-own_len // BLOCK_SIZE)
    num_blocks = num_prefix_blocks + num_seqs * num_own_blocks
    order = torch.randperm(num_blocks).to(torch.int32)
    prefix_blocks = order[:num_prefix_blocks]
    own_blocks = order[num_prefix_blocks:].view(num_seqs, num_own_blocks)
    shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    return PagedBatch(
        query=torch.randn(num_seqs * num_queries, NUM_HEADS, HEAD_DIM, dtype=dtype, device=device),
        k_cache=torch.randn(shape, dtype=dtype, device=device),
        v_cache=torch.randn(shape, dtype=dtype, device=device),
        block_tables=torch.cat([prefix_blocks.expand(num_seqs, -1), own_blocks], dim=1).to(device),
        prefix_lens=torch.full((num_seqs,), prefix_len, dtype=torch.int32, device=device),
        own_lens=torch.full((num_seqs,), own_len, dtype=torch.int32, device=device),
        query_start_loc=torch.arange(0, num_seqs * num_queries + 1, num_queries, dtype=torch.int32, device=device),
        context_tokens=prefix_len + num_seqs * own_len,
    )


def _attention_bytes(batch: PagedBatch) -> int:
    kv = 2 * batch.context_tokens * NUM_KV_HEADS * HEAD_DIM * batch.k_cache.element_size()
    return kv + 2 * batch.query.numel() * batch.query.element_size()  # + queries read, outputs written


def bench_attention(
    name: str, batch: PagedBatch, triton_fn, device, repeats: int, shape: str, with_triton: bool
) -> list[Result]:
    # The reference as the engine runs it: the plan built once per step, outside the timed per-layer call.
    plan = build_plan(
        batch.block_tables, batch.prefix_lens.cpu(), batch.own_lens.cpu(), batch.query_start_loc.cpu(), BLOCK_SIZE
    )
    scale = HEAD_DIM**-0.5
    runs = {"reference": lambda: paged_attention_planned(batch.query, batch.k_cache, batch.v_cache, plan, scale)}
    if with_triton:
        runs["triton"] = lambda: triton_fn(*batch.args())
    return _measure(name, runs, _attention_bytes(batch), device, repeats, shape)


def bench_embedding_gather(
    num_tokens: int, num_virtual: int, dtype, device, repeats: int, with_triton: bool
) -> list[Result]:
    embedding = torch.randn(VOCAB, HIDDEN, dtype=dtype, device=device)
    prompt_rows = torch.randn(512, HIDDEN, dtype=dtype, device=device)
    token_ids = torch.randint(0, VOCAB, (num_tokens,), device=device)
    token_ids[:num_virtual] = VOCAB + torch.randperm(512, device=device)[:num_virtual]
    runs = {"reference": lambda: embedding_gather_reference(token_ids, embedding, prompt_rows)}
    if with_triton:
        runs["triton"] = lambda: embedding_gather_triton(token_ids, embedding, prompt_rows)
    moved = 2 * num_tokens * HIDDEN * embedding.element_size() + token_ids.numel() * token_ids.element_size()
    return _measure(
        "embedding_gather",
        runs,
        moved,
        device,
        repeats,
        f"{num_tokens} tokens ({num_virtual} virtual), hidden {HIDDEN}",
    )


def bench_kv_write(num_tokens: int, dtype, device, repeats: int, with_triton: bool) -> list[Result]:
    num_blocks = 4 * -(-num_tokens // BLOCK_SIZE)
    # The engine's keys are a transposed view of [kv_heads, tokens, head_dim].
    key = torch.randn(NUM_KV_HEADS, num_tokens, HEAD_DIM, dtype=dtype, device=device).transpose(0, 1)
    value = torch.randn(NUM_KV_HEADS, num_tokens, HEAD_DIM, dtype=dtype, device=device).transpose(0, 1)
    slots = torch.randperm(num_blocks * BLOCK_SIZE, device=device)[:num_tokens]

    def writer(write: Callable) -> Callable[[], torch.Tensor]:
        """Each implementation writes its own caches, returned for the comparison."""
        k_cache = torch.zeros(num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, dtype=dtype, device=device)
        v_cache = torch.zeros_like(k_cache)

        def run() -> torch.Tensor:
            write(key, value, k_cache, v_cache, slots)
            return torch.stack([k_cache, v_cache])

        return run

    runs = {"reference": writer(kv_write_reference)}
    if with_triton:
        runs["triton"] = writer(kv_write_triton)
    moved = 4 * key.numel() * key.element_size() + slots.numel() * slots.element_size()
    return _measure("kv_write", runs, moved, device, repeats, f"{num_tokens} tokens")


def _measure(
    kernel: str, runs: dict[str, Callable], bytes_moved: int, device, repeats: int, shape: str
) -> list[Result]:
    diff = None
    if "triton" in runs:
        expected, actual = runs["reference"](), runs["triton"]()
        diff = (expected.float() - actual.float()).abs().max().item()
    results = []
    for implementation, fn in runs.items():
        ms = _time(fn, device, repeats)
        results.append(
            Result(kernel, implementation, str(device), shape, ms, bytes_moved, bytes_moved / (ms * 1e-3) / 1e9, diff)
        )
    return results


def run_all(device: torch.device, dtype: torch.dtype, repeats: int, with_triton: bool) -> list[Result]:
    torch.manual_seed(0)
    results = bench_embedding_gather(256, 64, dtype, device, repeats, with_triton)
    results += bench_kv_write(256, dtype, device, repeats, with_triton)
    for num_seqs, context in ((32, 512), (8, 2048)):
        batch = make_paged_batch(
            num_seqs, prefix_len=64, own_len=context - 64, num_queries=1, dtype=dtype, device=device
        )
        results += bench_attention(
            "paged_decode_attention",
            batch,
            paged_decode_attention_triton,
            device,
            repeats,
            f"{num_seqs} seqs x {context} context (64 shared prefix)",
            with_triton,
        )
    batch = make_paged_batch(4, prefix_len=64, own_len=256, num_queries=256, dtype=dtype, device=device)
    results += bench_attention(
        "paged_prefill_attention",
        batch,
        paged_prefill_attention_triton,
        device,
        repeats,
        "4 seqs x 256 new queries over 64 shared prefix",
        with_triton,
    )
    return results


def _device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    return torch.device(choice)


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--dtype",
        choices=["float16", "bfloat16", "float32"],
        default=None,
        help="default: float16 on CUDA, float32 on CPU",
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per kernel (median reported)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    device = _device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    print(f"device: {device} ({_describe(device)}), dtype: {str(dtype).removeprefix('torch.')}")
    if device.type != "cuda":
        print("no CUDA: torch references on CPU only; Triton figures need a GPU")
    results = run_all(device, dtype, args.repeats, with_triton=device.type == "cuda")
    print(f"{'kernel':<25} {'impl':<10} {'ms':>9} {'MB moved':>9} {'GB/s':>8} {'max|diff|':>10}  shape")
    for r in results:
        diff = "" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}"
        print(
            f"{r.kernel:<25} {r.implementation:<10} {r.median_ms:9.3f} {r.bytes_moved / 1e6:9.2f} "
            f"{r.gb_per_s:8.2f} {diff:>10}  {r.shape}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": _describe(device), "dtype": str(dtype), "results": [asdict(r) for r in results]}, f, indent=2
            )


if __name__ == "__main__":
    main()
