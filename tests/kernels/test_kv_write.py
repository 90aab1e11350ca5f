"""Writing K/V into cache slots: Triton (on CPU under the interpreter) against the torch reference, and the
reference against a per-token spelling of the contract."""

from __future__ import annotations

import pytest
import torch

import kernels.kv_write as module
from kernels.kv_write import kv_write, kv_write_reference, kv_write_triton

pytest.importorskip("triton")

NAN = float("nan")


def _inputs(num_tokens, num_blocks, block_size, num_kv_heads, head_dim, cache_dtype, key_dtype, seed=0):
    """Keys as the engine passes them (a transposed view of [kv_heads, tokens, dim]), a NaN-poisoned cache so an
    unwritten element shows, and distinct random slots."""
    gen = torch.Generator().manual_seed(seed)
    key = torch.randn(num_kv_heads, num_tokens, head_dim, generator=gen).to(key_dtype).transpose(0, 1)
    value = torch.randn(num_kv_heads, num_tokens, head_dim, generator=gen).to(key_dtype).transpose(0, 1)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    return key, value, torch.full(shape, NAN, dtype=cache_dtype), torch.full(shape, NAN, dtype=cache_dtype), slots


def naive_kv_write(key, value, k_cache, v_cache, slot_mapping) -> None:
    block_size = k_cache.shape[1]
    for token, slot in enumerate(slot_mapping.tolist()):
        k_cache[slot // block_size, slot % block_size] = key[token]
        v_cache[slot // block_size, slot % block_size] = value[token]


# Exact except float32 -> bfloat16, which the interpreter truncates where CUDA rounds to nearest (one ulp apart).
EXACT = dict(atol=0, rtol=0, equal_nan=True)


@pytest.mark.parametrize(
    "cache_dtype, key_dtype, num_kv_heads, head_dim, tolerance",
    [
        (torch.float32, torch.float32, 3, 12, EXACT),
        (torch.float16, torch.float16, 2, 7, EXACT),
        (torch.float16, torch.float32, 1, 5, EXACT),
        (torch.bfloat16, torch.bfloat16, 3, 10, EXACT),
        (torch.bfloat16, torch.float32, 3, 10, dict(atol=0, rtol=2**-7, equal_nan=True)),
        (torch.float32, torch.float32, 3, 400, EXACT),  # 1200 elements a token: two tiles of 1024
    ],
    ids=str,
)
@pytest.mark.parametrize("slot_dtype", [torch.int64, torch.int32], ids=str)
def test_triton_matches_reference(cache_dtype, key_dtype, num_kv_heads, head_dim, tolerance, slot_dtype):
    key, value, k_cache, v_cache, slots = _inputs(19, 6, 5, num_kv_heads, head_dim, cache_dtype, key_dtype)
    k_expected, v_expected = k_cache.clone(), v_cache.clone()
    kv_write_reference(key, value, k_expected, v_expected, slots)
    kv_write_triton(key, value, k_cache, v_cache, slots.to(slot_dtype))
    torch.testing.assert_close(k_cache, k_expected, **tolerance)
    torch.testing.assert_close(v_cache, v_expected, **tolerance)


def test_negative_slots_write_nothing():
    key, value, k_cache, v_cache, slots = _inputs(7, 3, 4, 2, 6, torch.float32, torch.float32)
    slots[[1, 4]] = -1
    kv_write_triton(key, value, k_cache, v_cache, slots)
    kept = slots >= 0
    k_expected, v_expected = torch.full_like(k_cache, NAN), torch.full_like(v_cache, NAN)
    kv_write_reference(key[kept], value[kept], k_expected, v_expected, slots[kept])
    torch.testing.assert_close(k_cache, k_expected, **EXACT)
    torch.testing.assert_close(v_cache, v_expected, **EXACT)


def test_empty_step_is_a_no_op():
    key, value, k_cache, v_cache, slots = _inputs(0, 2, 4, 2, 6, torch.float32, torch.float32)
    kv_write_triton(key, value, k_cache, v_cache, slots)
    assert k_cache.isnan().all() and v_cache.isnan().all()


def test_reference_matches_naive():
    key, value, k_cache, v_cache, slots = _inputs(23, 7, 5, 2, 3, torch.float16, torch.float32, seed=2)
    k_expected, v_expected = k_cache.clone(), v_cache.clone()
    naive_kv_write(key, value, k_expected, v_expected, slots)
    kv_write_reference(key, value, k_cache, v_cache, slots)
    torch.testing.assert_close(k_cache, k_expected, **EXACT)
    torch.testing.assert_close(v_cache, v_expected, **EXACT)


def test_dispatcher_runs_the_reference_for_cpu_tensors(monkeypatch):
    monkeypatch.setattr(module, "kv_write_triton", lambda *a, **k: pytest.fail("CPU went to Triton"))
    monkeypatch.setattr(module, "launch_kv_write", lambda *a, **k: pytest.fail("CPU went to Triton"))
    key, value, k_cache, v_cache, slots = _inputs(4, 2, 4, 1, 2, torch.float32, torch.float32)
    kv_write(key, value, k_cache, v_cache, slots)
    assert not k_cache.view(-1, 1, 2)[slots].isnan().any()


def _good() -> dict:
    key, value, k_cache, v_cache, slots = _inputs(5, 3, 4, 2, 6, torch.float32, torch.float32)
    return dict(key=key, value=value, k_cache=k_cache, v_cache=v_cache, slot_mapping=slots)


def _narrow_caches(kwargs: dict) -> None:
    kwargs["k_cache"], kwargs["v_cache"] = kwargs["k_cache"][..., :-1], kwargs["v_cache"][..., :-1]


@pytest.mark.parametrize(
    "breaks, message",
    [
        (lambda kw: kw.update(key=kw["key"][0]), "key must be"),
        (lambda kw: kw.update(key=kw["key"].long(), value=kw["value"].long()), "key must be"),
        (lambda kw: kw.update(value=kw["value"][:-1]), "value shape"),
        (lambda kw: kw.update(k_cache=kw["k_cache"][0]), "k_cache must be"),
        (_narrow_caches, "heads x head_dim"),
        (lambda kw: kw.update(v_cache=kw["v_cache"].half()), "v_cache"),
        (lambda kw: kw.update(slot_mapping=kw["slot_mapping"][:-1]), "slot_mapping has"),
        (lambda kw: kw.update(slot_mapping=kw["slot_mapping"].float()), "slot_mapping must be"),
        (lambda kw: kw.update(slot_mapping=kw["slot_mapping"].to("meta")), "one device"),
    ],
)
def test_launcher_rejects_bad_arguments(breaks, message):
    kwargs = _good()
    breaks(kwargs)
    with pytest.raises(ValueError, match=message):
        kv_write_triton(**kwargs)


def test_launcher_refuses_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        kv_write_triton(**_good())
