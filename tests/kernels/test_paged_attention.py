"""The paged-attention contract: the torch reference against a per-token spelling of it, the step metadata and the
dispatcher's routing by it, and the argument checks shared by both attention kernels."""

from __future__ import annotations

import pytest
import torch

import kernels.paged_decode_attention as decode_module
import kernels.paged_prefill_attention as prefill_module
from kernels.paged_attention import paged_attention, paged_attention_triton
from kernels.paged_attention_cpu import AttentionHeads, build_cpu_plan
from kernels.paged_attention_metadata import PagedAttentionMetadata
from kernels.paged_attention_reference import paged_attention_reference


def _plan(batch):
    return build_cpu_plan(
        batch.block_tables,
        batch.prefix_lens,
        batch.own_lens,
        batch.query_start_loc,
        batch.k_cache.shape[1],
        AttentionHeads(batch.query.shape[1], batch.k_cache.shape[2]),
    )


@pytest.mark.parametrize("scenario", ["mixed", "decode"])
@pytest.mark.parametrize("group, block_size", [(1, 1), (2, 5), (3, 4)])
def test_reference_matches_naive(make_batch, naive_attention, scenario, group, block_size):
    batch = make_batch(scenario, block_size=block_size, num_kv_heads=2, group=group, head_dim=6, seed=group)
    expected = naive_attention(*batch.args())
    rows = ~expected.isnan().flatten(1).all(1)  # rows of sequences with queries
    out = paged_attention_reference(*batch.args())
    torch.testing.assert_close(out[rows].double(), expected[rows], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", ["reference", "cpu"])
def test_decode_padding_never_reads_other_sequences(make_batch, naive_attention, path):
    """Regression: the plan padded short decode rows with slot 0, and SDPA multiplies masked values by 0, so an inf
    in whatever sequence owned slot 0 turned every shorter decode row of the batch into NaN. The CPU path pads the
    same way (its value sum multiplies by 0 too)."""
    batch = make_batch("decode", block_size=4, num_kv_heads=1, group=2, head_dim=8)
    batch.k_cache[0, 0] = float("inf")
    batch.v_cache[0, 0] = float("inf")
    expected = naive_attention(*batch.args())
    finite_rows = ~expected.isnan().flatten(1).any(1)  # sequences that do not own slot 0 themselves
    assert finite_rows.sum() >= len(finite_rows) - 1
    if path == "reference":
        out = paged_attention_reference(*batch.args())
    else:
        out = paged_attention(batch.query, batch.k_cache, batch.v_cache, batch.metadata(), batch.scale)
    torch.testing.assert_close(out[finite_rows].double(), expected[finite_rows], atol=1e-5, rtol=1e-5)


LAUNCHES = (
    (decode_module, "launch_paged_decode_attention", "decode"),
    (prefill_module, "launch_paged_prefill_attention", "prefill"),
)


def test_dispatcher_runs_the_torch_path_for_cpu_tensors(make_batch, monkeypatch):
    def no_triton(*args, **kwargs):
        raise AssertionError("CPU tensors must not reach a Triton kernel")

    for module, name, _ in LAUNCHES:
        monkeypatch.setattr(module, name, no_triton)
    monkeypatch.setattr(decode_module, "paged_decode_attention_triton", no_triton)
    monkeypatch.setattr(prefill_module, "paged_prefill_attention_triton", no_triton)
    batch = make_batch("mixed", block_size=3, num_kv_heads=1, group=2, head_dim=8)
    expected = paged_attention_reference(*batch.args())
    args = (batch.query, batch.k_cache, batch.v_cache)
    built_here = paged_attention(*args, batch.metadata(), batch.scale)
    torch.testing.assert_close(built_here, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        paged_attention(*args, batch.metadata(_plan(batch)), batch.scale), built_here, rtol=0, atol=0
    )


@pytest.mark.parametrize(
    "scenario, counts, launched",
    [
        ("mixed", (9, 3), {"decode", "prefill"}),
        ("decode", (1, 5), {"decode"}),
        ("prefill", (9, 0), {"prefill"}),
    ],
)
def test_triton_path_routes_by_host_hints(make_batch, tolerances, monkeypatch, scenario, counts, launched):
    """The metadata's host-side counts pick the kernels: a decode-only step launches the decode kernel alone."""
    calls = set()
    for module, name, kind in LAUNCHES:
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _kind=kind, **k: calls.add(_kind) or _real(*a, **k))
    batch = make_batch(scenario, block_size=5, num_kv_heads=2, group=3, head_dim=8, seed=2)
    metadata = batch.metadata()
    assert (metadata.max_query_len, metadata.num_decodes) == counts
    out = paged_attention_triton(batch.query, batch.k_cache, batch.v_cache, metadata, batch.scale)
    assert calls == launched
    torch.testing.assert_close(out, paged_attention_reference(*batch.args()), **tolerances[torch.float32])


def test_triton_path_reads_int64_metadata_views_of_one_buffer(make_batch, tolerances):
    """As the engine's step passes it (server/engine/step_inputs.py): every index tensor a view of one int64 buffer."""
    batch = make_batch("mixed", block_size=4, num_kv_heads=2, group=2, head_dim=8, seed=4)
    parts = [batch.prefix_lens, batch.own_lens, batch.query_start_loc, batch.block_tables.flatten()]
    prefix_lens, own_lens, query_start_loc, tables = torch.cat(parts).long().split([len(p) for p in parts])
    metadata = PagedAttentionMetadata.from_tensors(
        tables.view(batch.block_tables.shape), prefix_lens, own_lens, query_start_loc
    )
    out = paged_attention_triton(batch.query, batch.k_cache, batch.v_cache, metadata, batch.scale)
    torch.testing.assert_close(out, paged_attention_reference(*batch.args()), **tolerances[torch.float32])


@pytest.mark.parametrize(
    "index, breaks, message",
    [
        (3, lambda t: t.float(), "block_tables must be"),
        (3, lambda t: t[0], "block_tables must be"),
        (4, lambda t: t[:-1], "prefix_lens must have shape"),
        (5, lambda t: t.float(), "own_lens must be"),
        (6, lambda t: t[:-1], "query_start_loc must have shape"),
        (6, lambda t: t.to("meta"), "one device"),
    ],
)
def test_metadata_is_checked_once_when_built(make_batch, index, breaks, message):
    batch = make_batch("mixed", block_size=4, num_kv_heads=2, group=3, head_dim=8)
    tensors = list(batch.args()[3:7])
    tensors[index - 3] = breaks(tensors[index - 3])
    with pytest.raises(ValueError, match=message):
        PagedAttentionMetadata(*tensors, max_query_len=9, num_decodes=3)


LAUNCHERS = [decode_module.paged_decode_attention_triton, prefill_module.paged_prefill_attention_triton]


def _with(args: tuple, index: int, value) -> tuple:
    args = list(args)
    args[index] = value
    return tuple(args)


BAD_ARGUMENTS = [
    # (argument index or "out", how to break it, message)
    (0, lambda t: t[0], "query must be"),
    (0, lambda t: t.long(), "query must be"),
    (0, lambda t: t.half(), "cache dtype"),
    (0, lambda t: t[:, :5], "not a multiple"),
    (0, lambda t: t[..., :-1], "head_dim"),
    (1, lambda t: t[0], "k_cache must be"),
    (2, lambda t: t.half(), "v_cache"),
    (3, lambda t: t.float(), "block_tables must be"),
    (3, lambda t: t[0], "block_tables must be"),
    (4, lambda t: t[:-1], "prefix_lens must have shape"),
    (5, lambda t: t.float(), "own_lens must be"),
    (6, lambda t: t[:-1], "query_start_loc must have shape"),
    ("out", lambda t: t[:-1], "out must be"),
    ("out", lambda t: t.double(), "out must be"),
]


@pytest.mark.parametrize("launcher", LAUNCHERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("index, breaks, message", BAD_ARGUMENTS)
def test_launchers_reject_bad_arguments(make_batch, launcher, index, breaks, message):
    batch = make_batch("mixed", block_size=4, num_kv_heads=2, group=3, head_dim=8)
    args, kwargs = batch.args(), {}
    if index == "out":
        kwargs["out"] = breaks(batch.poisoned_out())
    else:
        args = _with(args, index, breaks(args[index]))
    with pytest.raises(ValueError, match=message):
        launcher(*args, **kwargs)


@pytest.mark.parametrize("launcher", LAUNCHERS, ids=lambda f: f.__name__)
def test_launchers_reject_mixed_devices_and_cpu_without_interpreter(make_batch, monkeypatch, launcher):
    batch = make_batch("mixed", block_size=4, num_kv_heads=2, group=3, head_dim=8)
    with pytest.raises(ValueError, match="one device"):
        launcher(*_with(batch.args(), 3, batch.block_tables.to("meta")))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        launcher(*batch.args())
