"""The embedding + soft-prompt gather: Triton (on CPU under the interpreter) against the torch reference, and the
reference against a per-token spelling of the contract."""

from __future__ import annotations

import pytest
import torch

import kernels.embedding_gather as module
from kernels.embedding_gather import embedding_gather, embedding_gather_reference, embedding_gather_triton

pytest.importorskip("triton")

VOCAB = 37


def _inputs(num_tokens: int, hidden: int, num_prompt_rows: int, dtype, prompt_dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    embedding = torch.randn(VOCAB, hidden, generator=gen).to(dtype)
    prompt_rows = torch.randn(num_prompt_rows, hidden, generator=gen).to(prompt_dtype)
    token_ids = torch.randint(0, VOCAB + num_prompt_rows, (num_tokens,), generator=gen)
    edges = torch.tensor([0, VOCAB - 1, VOCAB][: 2 + (num_prompt_rows > 0)])  # both sides of the vocabulary's end
    token_ids[: len(edges)] = edges[:num_tokens]
    return token_ids, embedding, prompt_rows


def naive_embedding_gather(token_ids, embedding, prompt_rows) -> torch.Tensor:
    rows = []
    for token_id in token_ids.tolist():
        row = embedding[token_id] if token_id < embedding.shape[0] else prompt_rows[token_id - embedding.shape[0]]
        rows.append(row.to(embedding.dtype))
    return torch.stack(rows) if rows else embedding[:0]


# Exact except where the interpreter converts float32 prompt rows to bfloat16: it truncates where CUDA rounds
# to nearest, one ulp (2**-8 relative) apart.
EXACT = dict(atol=0, rtol=0)


@pytest.mark.parametrize(
    "dtype, prompt_dtype, hidden, tolerance",
    [
        (torch.float32, torch.float32, 13, EXACT),
        (torch.float16, torch.float32, 1030, EXACT),  # two column tiles of 1024
        (torch.bfloat16, torch.bfloat16, 24, EXACT),
        (torch.bfloat16, torch.float32, 24, dict(atol=0, rtol=2**-7)),
        (torch.float32, torch.float16, 7, EXACT),
    ],
    ids=str,
)
def test_triton_matches_reference(dtype, prompt_dtype, hidden, tolerance):
    token_ids, embedding, prompt_rows = _inputs(29, hidden, 11, dtype, prompt_dtype)
    out = torch.full((29, hidden), float("nan"), dtype=dtype)
    embedding_gather_triton(token_ids, embedding, prompt_rows, out=out)
    torch.testing.assert_close(out, embedding_gather_reference(token_ids, embedding, prompt_rows), **tolerance)


def test_int32_ids_strided_tables_and_no_prompt_rows():
    token_ids = _inputs(9, 10, 0, torch.float32)[0]
    wide = torch.randn(VOCAB, 20)
    strided = wide[:, ::2]  # column stride 2
    out = embedding_gather_triton(token_ids.int(), strided, torch.empty(0, 10))
    torch.testing.assert_close(out, strided[token_ids], **EXACT)


def test_empty_batch():
    _, embedding, prompt_rows = _inputs(0, 8, 3, torch.float32)
    out = embedding_gather_triton(torch.zeros(0, dtype=torch.int64), embedding, prompt_rows)
    assert out.shape == (0, 8)


def test_ids_outside_both_tables_read_nothing():
    """A contract breach (a stale prompt row id, say) must not read outside the tables: the kernel writes zeros."""
    _, embedding, prompt_rows = _inputs(0, 8, 3, torch.float32)
    out = embedding_gather_triton(torch.tensor([-1, VOCAB + 3, VOCAB + 2]), embedding, prompt_rows)
    assert out[:2].eq(0).all()
    torch.testing.assert_close(out[2], prompt_rows[2], **EXACT)


@pytest.mark.parametrize("dtype, prompt_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float32)])
def test_reference_matches_naive(dtype, prompt_dtype):
    token_ids, embedding, prompt_rows = _inputs(31, 9, 6, dtype, prompt_dtype, seed=4)
    torch.testing.assert_close(
        embedding_gather_reference(token_ids, embedding, prompt_rows),
        naive_embedding_gather(token_ids, embedding, prompt_rows),
        **EXACT,
    )


def test_dispatcher_runs_the_reference_for_cpu_tensors(monkeypatch):
    monkeypatch.setattr(module, "embedding_gather_triton", lambda *a, **k: pytest.fail("CPU went to Triton"))
    token_ids, embedding, prompt_rows = _inputs(5, 4, 2, torch.float32)
    torch.testing.assert_close(
        embedding_gather(token_ids, embedding, prompt_rows),
        embedding_gather_reference(token_ids, embedding, prompt_rows),
        **EXACT,
    )


def _good():
    return dict(zip(("token_ids", "embedding", "prompt_rows"), _inputs(6, 8, 2, torch.float32)))


@pytest.mark.parametrize(
    "arg, breaks, message",
    [
        ("token_ids", lambda t: t[None], "token_ids must be"),
        ("token_ids", lambda t: t.float(), "token_ids must be"),
        ("embedding", lambda t: t[0], "embedding must be"),
        ("embedding", lambda t: t.long(), "embedding must be"),
        ("prompt_rows", lambda t: t[:, :5], "hidden size"),
        ("prompt_rows", lambda t: t.to("meta"), "one device"),
        ("out", lambda t: torch.empty(6, 7), "out must be"),
        ("out", lambda t: torch.empty(6, 8, dtype=torch.float16), "out must be"),
    ],
)
def test_launcher_rejects_bad_arguments(arg, breaks, message):
    kwargs = _good()
    kwargs[arg] = breaks(kwargs.get(arg))
    with pytest.raises(ValueError, match=message):
        embedding_gather_triton(**kwargs)


def test_launcher_refuses_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        embedding_gather_triton(**_good())
