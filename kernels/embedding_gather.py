"""Build `inputs_embeds` for a packed batch in one gather over the vocabulary and the soft-prompt rows.

Token ids below `vocab_size` read the model's embedding matrix; ids at or above it read row `id - vocab_size`
of the registry's prompt table (the TensorRT-LLM encoding of virtual tokens).
"""

from __future__ import annotations

import torch

from kernels._triton_support import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    LazyKernel,
    check_dtype,
    check_launchable,
    check_ndim,
    next_power_of_2,
    tl,
    use_triton,
)

_MAX_BLOCK_HIDDEN = 1024


def _embedding_gather_kernel(
    token_ids_ptr,  # [num_tokens]
    embedding_ptr,  # [vocab_size, hidden]
    prompt_rows_ptr,  # [num_prompt_rows, hidden]
    out_ptr,  # [num_tokens, hidden]
    vocab_size,
    num_prompt_rows,
    hidden,
    stride_embedding_row,
    stride_embedding_col,
    stride_prompt_row,
    stride_prompt_col,
    stride_out_row,
    stride_out_col,
    BLOCK_HIDDEN: tl.constexpr,
):
    # One program copies one token's row, or a BLOCK_HIDDEN-wide slice of it.
    token = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_HIDDEN + tl.arange(0, BLOCK_HIDDEN)
    in_hidden = cols < hidden
    token_id = tl.load(token_ids_ptr + token).to(tl.int64)
    # Ids outside [0, vocab_size + num_prompt_rows) break the contract; they read nothing and give a zero row
    # rather than touching memory outside the tables.
    is_known = (token_id >= 0) & (token_id < vocab_size + num_prompt_rows)
    readable = cols < tl.where(is_known, hidden, 0)
    if token_id < vocab_size:
        vocab_row = embedding_ptr + token_id * stride_embedding_row
        row = tl.load(vocab_row + cols * stride_embedding_col, mask=readable, other=0.0).to(out_ptr.dtype.element_ty)
    else:
        prompt_row = prompt_rows_ptr + (token_id - vocab_size) * stride_prompt_row
        row = tl.load(prompt_row + cols * stride_prompt_col, mask=readable, other=0.0).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + token.to(tl.int64) * stride_out_row + cols * stride_out_col, row, mask=in_hidden)


_embedding_gather = LazyKernel(_embedding_gather_kernel)


def embedding_gather_triton(
    token_ids: torch.Tensor,  # [num_tokens] int32/int64
    embedding: torch.Tensor,  # [vocab_size, hidden]
    prompt_rows: torch.Tensor,  # [num_prompt_rows, hidden], any float dtype; num_prompt_rows may be 0
    out: torch.Tensor | None = None,  # [num_tokens, hidden] in embedding.dtype; allocated when None
) -> torch.Tensor:  # [num_tokens, hidden] in embedding.dtype
    """The Triton gather (CUDA, or CPU under TRITON_INTERPRET=1); same result as `embedding_gather_reference`."""
    name = "embedding_gather"
    check_ndim(name, "token_ids", token_ids, 1, "[num_tokens]")
    check_ndim(name, "embedding", embedding, 2, "[vocab_size, hidden]")
    check_ndim(name, "prompt_rows", prompt_rows, 2, "[num_prompt_rows, hidden]")
    check_dtype(name, "token_ids", token_ids, INDEX_DTYPES)
    check_dtype(name, "embedding", embedding, FLOAT_DTYPES)
    check_dtype(name, "prompt_rows", prompt_rows, FLOAT_DTYPES)
    num_tokens, (vocab_size, hidden) = token_ids.shape[0], embedding.shape
    if prompt_rows.shape[1] != hidden:
        raise ValueError(f"{name}: prompt_rows hidden size {prompt_rows.shape[1]} != embedding hidden size {hidden}")
    if out is None:
        out = torch.empty(num_tokens, hidden, dtype=embedding.dtype, device=embedding.device)
    elif out.shape != (num_tokens, hidden) or out.dtype != embedding.dtype:
        raise ValueError(
            f"{name}: out must be {(num_tokens, hidden)} {embedding.dtype}, got {tuple(out.shape)} {out.dtype}"
        )
    check_launchable(name, token_ids=token_ids, embedding=embedding, prompt_rows=prompt_rows, out=out)
    if num_tokens == 0 or hidden == 0:
        return out
    block_hidden = min(next_power_of_2(hidden), _MAX_BLOCK_HIDDEN)
    grid = (num_tokens, -(-hidden // block_hidden))
    _embedding_gather[grid](
        token_ids,
        embedding,
        prompt_rows,
        out,
        vocab_size,
        prompt_rows.shape[0],
        hidden,
        embedding.stride(0),
        embedding.stride(1),
        prompt_rows.stride(0),
        prompt_rows.stride(1),
        out.stride(0),
        out.stride(1),
        BLOCK_HIDDEN=block_hidden,
    )
    return out


def embedding_gather_reference(
    token_ids: torch.Tensor,  # [num_tokens] int64
    embedding: torch.Tensor,  # [vocab_size, hidden]
    prompt_rows: torch.Tensor,  # [num_rows, hidden]
) -> torch.Tensor:  # [num_tokens, hidden]
    vocab_size = embedding.shape[0]
    is_virtual = token_ids >= vocab_size
    out = embedding[token_ids.clamp(max=vocab_size - 1)]
    if bool(is_virtual.any()):
        out[is_virtual] = prompt_rows[token_ids[is_virtual] - vocab_size].to(out.dtype)
    return out


def embedding_gather(
    token_ids: torch.Tensor, embedding: torch.Tensor, prompt_rows: torch.Tensor, use_reference: bool = False
) -> torch.Tensor:
    """`inputs_embeds` for `token_ids`: the Triton kernel on CUDA, the torch reference on CPU or when asked."""
    if use_triton(token_ids, use_reference):
        return embedding_gather_triton(token_ids, embedding, prompt_rows)
    return embedding_gather_reference(token_ids, embedding, prompt_rows)
