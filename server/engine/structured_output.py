"""Structured output (`response_format`): each constrained request gets a grammar matcher, and each step masks its
row of logits to the tokens that keep its text a prefix of a valid document.

The library is xgrammar, chosen by measurement (docs/benchmarks.md, "Structured output"): at batch 64 on
SmolLM2's 49,152-token vocabulary its batched mask fill costs ~6 µs per token against llguidance's ~17 µs.
Compiling a schema is the costlier half (ms): the HTTP layer has it done on its offload pool first
(EngineClient.compile_response_format), and the compiler's cache then serves admission, the n samples of one
request and an agent's every call with the same schema.

What JSON the model may write: one line, `, ` and `: ` between items (json.dumps' default, which models have seen
most), no other whitespace. Flexible whitespace lets a small model spend its whole budget on newlines.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Sequence as Seq

import numpy as np
import torch
import xgrammar as xgr

from server.engine.errors import RequestValidationError
from server.engine.request import ResponseFormat

# The mask's bits are read as bytes on the host (numpy.unpackbits), which is the words' bit order only on a
# little-endian machine; every platform torch ships for is one.
assert sys.byteorder == "little", "structured output reads token bitmasks as little-endian words"


_SOURCE_LOCATION = re.compile(r"^\[[^\]]*\] \S+:\d+: ")  # what xgrammar puts before its messages


class GrammarMatcher:
    """One request's position in its grammar; advanced by each token the request takes (engine thread only)."""

    def __init__(self, matcher: xgr.GrammarMatcher, batch: xgr.BatchGrammarMatcher) -> None:
        self._matcher = matcher
        self._batch = batch  # its compiler's: fills many rows' masks in parallel

    def accept(self, token_id: int) -> bool:
        """Take the request's next token; False if the grammar does not allow it (the matcher is then unchanged)."""
        return bool(self._matcher.accept_token(token_id))


class GrammarCompiler:
    """Turns a request's `response_format` into its matcher, on the thread that admits the request. Built on
    first use: reading the vocabulary costs ~0.4 s, which engines that never see a response_format never pay."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: frozenset[int]) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos_token_ids = sorted(eos_token_ids)
        self._compiler: xgr.GrammarCompiler | None = None
        self._batch: xgr.BatchGrammarMatcher | None = None
        self._lock = threading.Lock()

    def matcher(self, response_format: ResponseFormat) -> GrammarMatcher:
        """Raises RequestValidationError (param `response_format`) for a schema that cannot be compiled."""
        if not self._eos_token_ids:
            raise RequestValidationError(
                "this model has no end-of-sequence token, so a constrained output could not end",
                param="response_format",
            )
        compiler, batch = self._ready_compiler()
        try:
            if response_format.kind == "json_object":
                # Any object: strict mode would forbid every property of a schema that names none.
                compiled = compiler.compile_json_schema('{"type": "object"}', any_whitespace=False, strict_mode=False)
            else:
                assert response_format.json_schema is not None  # ResponseFormat checks kind and schema together
                compiled = compiler.compile_json_schema(response_format.json_schema, any_whitespace=False)
        except Exception as exc:  # xgrammar's RuntimeError: "[time] file.cc:line: what is wrong"
            reason = _SOURCE_LOCATION.sub("", str(exc).strip())
            raise RequestValidationError(
                f"response_format: the JSON schema cannot be used: {reason}", param="response_format"
            ) from None
        return GrammarMatcher(xgr.GrammarMatcher(compiled), batch)

    def _ready_compiler(self) -> tuple[xgr.GrammarCompiler, xgr.BatchGrammarMatcher]:
        with self._lock:
            if self._compiler is None or self._batch is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._eos_token_ids
                )
                self._compiler, self._batch = xgr.GrammarCompiler(info), xgr.BatchGrammarMatcher()
            return self._compiler, self._batch


def mask_logits(logits: torch.Tensor, rows: Seq[int], matchers: Seq[GrammarMatcher]) -> None:
    """In place: every token that `matchers[i]` does not allow next becomes -inf in row `rows[i]` of logits
    [num_rows, vocab]. One batched fill on the host, then one masked write per step for all constrained rows."""
    if not rows:
        return
    vocab = logits.shape[-1]
    bitmask = xgr.allocate_token_bitmask(len(rows), vocab)  # int32 [num_rows, ceil(vocab / 32)], all allowed
    matchers[0]._batch.batch_fill_next_token_bitmask([m._matcher for m in matchers], bitmask)
    allowed = allowed_tokens(bitmask, vocab, logits.device)  # bool [num_rows, vocab]
    index = torch.tensor(list(rows), device=logits.device)
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))


def allowed_tokens(bitmask: torch.Tensor, vocab: int, device: torch.device) -> torch.Tensor:
    """int32 [num_rows, words] bitmask (bit j of word w: token 32 * w + j) -> bool [num_rows, vocab]. On the CPU
    numpy unpacks the bytes in one pass (shifting 32 copies of the words costs ~20× more); on an accelerator the
    small bitmask is sent and unpacked there."""
    if device.type == "cpu":
        return unpack_on_host(bitmask, vocab)
    return unpack_on_device(bitmask.to(device), vocab)


def unpack_on_host(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")[:, :vocab]
    return torch.from_numpy(bits).view(torch.bool)


def unpack_on_device(words: torch.Tensor, vocab: int) -> torch.Tensor:
    """Every word shifted 32 ways where it lies: cheap on an accelerator, and no host round trip."""
    shifts = torch.arange(32, dtype=torch.int32, device=words.device)
    return ((words.unsqueeze(-1) >> shifts) & 1).flatten(1)[:, :vocab].bool()
