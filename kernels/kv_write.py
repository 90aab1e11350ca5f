"""Write a step's new keys and values into their paged-cache slots."""

from __future__ import annotations

import torch

from kernels._triton_support import (
    FLOAT_DTYPES,
    LazyKernel,
    check_dtype,
    check_launchable,
    check_ndim,
    next_power_of_2,
    tl,
    use_triton,
)

_MAX_BLOCK_ELEMENTS = 1024


def _kv_write_kernel(
    key_ptr,
    value_ptr,  # [num_tokens, num_kv_heads, head_dim]
    k_cache_ptr,
    v_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping_ptr,  # [num_tokens]
    block_size,
    num_kv_heads,
    head_dim,
    stride_key_token,
    stride_key_head,
    stride_key_dim,
    stride_value_token,
    stride_value_head,
    stride_value_dim,
    stride_kc_block,
    stride_kc_slot,
    stride_kc_head,
    stride_kc_dim,
    stride_vc_block,
    stride_vc_slot,
    stride_vc_head,
    stride_vc_dim,
    BLOCK_ELEMENTS: tl.constexpr,
):
    # One program copies one token's keys and values, or a BLOCK_ELEMENTS-wide slice of its heads x head_dim.
    token = tl.program_id(0).to(tl.int64)
    elements = tl.program_id(1) * BLOCK_ELEMENTS + tl.arange(0, BLOCK_ELEMENTS)
    head = elements // head_dim
    dim = elements % head_dim
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    # A negative slot marks a padding token: nothing is written for it.
    writable = elements < tl.where(slot >= 0, num_kv_heads * head_dim, 0)
    block = slot // block_size
    offset = slot % block_size

    key = tl.load(key_ptr + token * stride_key_token + head * stride_key_head + dim * stride_key_dim, mask=writable)
    k_dst = k_cache_ptr + block * stride_kc_block + offset * stride_kc_slot + head * stride_kc_head
    tl.store(k_dst + dim * stride_kc_dim, key.to(k_cache_ptr.dtype.element_ty), mask=writable)

    value = tl.load(
        value_ptr + token * stride_value_token + head * stride_value_head + dim * stride_value_dim, mask=writable
    )
    v_dst = v_cache_ptr + block * stride_vc_block + offset * stride_vc_slot + head * stride_vc_head
    tl.store(v_dst + dim * stride_vc_dim, value.to(v_cache_ptr.dtype.element_ty), mask=writable)


_kv_write = LazyKernel(_kv_write_kernel)


def _check_kv_write_args(key, value, k_cache, v_cache, slot_mapping) -> None:
    name = "kv_write"
    check_ndim(name, "key", key, 3, "[num_tokens, num_kv_heads, head_dim]")
    check_ndim(name, "k_cache", k_cache, 4, "[num_blocks, block_size, num_kv_heads, head_dim]")
    check_ndim(name, "slot_mapping", slot_mapping, 1, "[num_tokens]")
    if value.shape != key.shape:
        raise ValueError(f"{name}: value shape {tuple(value.shape)} != key shape {tuple(key.shape)}")
    if v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype:
        raise ValueError(
            f"{name}: v_cache {tuple(v_cache.shape)} {v_cache.dtype} != k_cache {tuple(k_cache.shape)} {k_cache.dtype}"
        )
    if key.shape[1:] != k_cache.shape[2:]:
        raise ValueError(f"{name}: key heads x head_dim {tuple(key.shape[1:])} != cache's {tuple(k_cache.shape[2:])}")
    if slot_mapping.shape[0] != key.shape[0]:
        raise ValueError(f"{name}: slot_mapping has {slot_mapping.shape[0]} slots for {key.shape[0]} tokens")
    for arg, tensor in (("key", key), ("value", value), ("k_cache", k_cache)):
        check_dtype(name, arg, tensor, FLOAT_DTYPES)
    check_dtype(name, "slot_mapping", slot_mapping, (torch.int32, torch.int64))


def kv_write_triton(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim], any strides (a slice of a fused qkv is fine)
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens] int32/int64: block * block_size + offset; negative = skip
) -> None:
    """The Triton scatter (CUDA, or CPU under TRITON_INTERPRET=1): `kv_write_reference`'s effect on valid slots."""
    _check_kv_write_args(key, value, k_cache, v_cache, slot_mapping)
    check_launchable("kv_write", key=key, value=value, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    launch_kv_write(key, value, k_cache, v_cache, slot_mapping)


def launch_kv_write(key, value, k_cache, v_cache, slot_mapping) -> None:
    """The launch alone, for a caller whose arguments hold by construction (the engine, every layer)."""
    num_tokens, num_kv_heads, head_dim = key.shape
    row_elements = num_kv_heads * head_dim
    if num_tokens == 0 or row_elements == 0:
        return
    block_elements = min(next_power_of_2(row_elements), _MAX_BLOCK_ELEMENTS)
    grid = (num_tokens, -(-row_elements // block_elements))
    _kv_write[grid](
        key,
        value,
        k_cache,
        v_cache,
        slot_mapping,
        k_cache.shape[1],
        num_kv_heads,
        head_dim,
        *key.stride(),
        *value.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        BLOCK_ELEMENTS=block_elements,
    )


def kv_write_reference(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [num_tokens] int64: block * block_size + offset
) -> None:
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, key.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, value.to(v_cache.dtype))


def kv_write(key, value, k_cache, v_cache, slot_mapping, use_reference: bool = False) -> None:
    """Store this step's K/V at `slot_mapping`: the Triton kernel on CUDA, the torch reference on CPU or when asked.

    Called once per layer, so it checks nothing: `kv_write_triton` is the checked entry point.
    """
    if use_triton(key, use_reference):
        launch_kv_write(key, value, k_cache, v_cache, slot_mapping)
    else:
        kv_write_reference(key, value, k_cache, v_cache, slot_mapping)
