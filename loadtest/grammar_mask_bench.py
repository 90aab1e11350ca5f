"""Structured output's cost per token: xgrammar against llguidance, at batch 64 on SmolLM2's 49,152-token vocabulary.

Each of 64 rows decodes a different JSON document under its own schema (a mix of objects with strings, integers,
enums, arrays and nesting) or under "any JSON object". A step is what the engine does for constrained rows: fill
every active row's token bitmask (the library's batched, multi-threaded call), apply the masks to a
[64, 49152] float32 logits tensor, and advance each row's matcher by the row's next token (the document's own
tokenization, so every library walks the same path; a token the mask forbids is counted as a disagreement).

Baselines measured in the same run: the engine's batched sampler on the same logits without grammars, and one
SmolLM2 decode forward at batch 64 (the step the mask is added to).

    python -m loadtest.grammar_mask_bench [--batch 64] [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache

from server.config import load_config
from server.engine.request import SamplingParams
from server.engine.sampler import SampleRow, sample_rows
from server.engine.structured_output import allowed_tokens
from server.model.default_model import ensure_default_model

SCHEMAS = [
    {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "sentiment": {"enum": ["positive", "negative", "neutral"]},
            "confidence": {"type": "number"},
            "keywords": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["sentiment", "confidence", "keywords"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "location": {
                "type": "object",
                "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                "required": ["lat", "lon"],
                "additionalProperties": False,
            },
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}},
            "open": {"type": "boolean"},
        },
        "required": ["city", "location", "tags", "open"],
        "additionalProperties": False,
    },
    None,  # response_format json_object: any JSON object
]


def _document(kind: int, i: int) -> dict:
    """Row i's target: an instance of SCHEMAS[kind] (for json_object, of no particular schema)."""
    if kind == 0:
        return {"name": f"Customer number {i} of the evaluation set", "age": 20 + i}
    if kind == 1:
        words = ["latency", "prompt", "batch", "tenant", "schema", "token"]
        return {
            "sentiment": ["positive", "negative", "neutral"][i % 3],
            "confidence": i / 64,
            "keywords": words[: i % 6],
        }
    if kind == 2:
        tags = ["a", "b", "c"][: i % 4]
        return {"city": f"Paris {i}", "location": {"lat": 48.85 + i, "lon": -2.35}, "tags": tags, "open": i % 2 == 0}
    return {"answer": f"row {i}", "items": list(range(i % 5)), "nested": {"ok": True, "note": None}}


@dataclass
class LibraryResult:
    library: str
    version: str
    tokenizer_setup_s: float
    compile_ms_p50: float  # per request (schema compile + matcher), cache cold
    step_ms_p50: float  # fill + apply + accept, over the steps where all 64 rows are active
    fill_ms_p50: float
    fill_ms_p99: float
    apply_ms_p50: float
    accept_ms_p50: float
    per_token_us: float  # step_ms_p50 / active rows
    tokens: int
    disagreements: int  # document tokens the mask forbade


class XGrammar:
    name = "xgrammar"

    def __init__(self, tokenizer, vocab_size: int, eos_ids: list[int]) -> None:
        import xgrammar as xgr

        self.xgr, self.version = xgr, _dist_version("xgrammar")
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=eos_ids)
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        self.batch = xgr.BatchGrammarMatcher()
        self.vocab_size = vocab_size

    def matcher(self, schema: dict | None):
        if schema is None:
            compiled = self.compiler.compile_builtin_json_grammar()
        else:
            compiled = self.compiler.compile_json_schema(
                json.dumps(schema), any_whitespace=False, separators=(",", ":")
            )
        return self.xgr.GrammarMatcher(compiled)

    def bitmask(self, rows: int) -> torch.Tensor:
        return self.xgr.allocate_token_bitmask(rows, self.vocab_size)

    def fill(self, matchers, bitmask: torch.Tensor) -> None:
        self.batch.batch_fill_next_token_bitmask(matchers, bitmask)

    def accept(self, matcher, token_id: int) -> bool:
        return matcher.accept_token(token_id)


class LLGuidance:
    name = "llguidance"

    def __init__(self, tokenizer, vocab_size: int, eos_ids: list[int]) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.llg, self.version = llguidance, _dist_version("llguidance")
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos_ids)
        self.executor = llguidance.LLExecutor()
        self.vocab_size = vocab_size

    def matcher(self, schema: dict | None):
        schema = {"type": "object"} if schema is None else schema
        grammar = self.llg.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False}
        )
        matcher = self.llg.LLMatcher(self.tokenizer, grammar)
        assert not matcher.is_error(), matcher.get_error()
        return matcher

    def bitmask(self, rows: int) -> torch.Tensor:
        return self.llg.torch.allocate_token_bitmask(rows, self.vocab_size)

    def fill(self, matchers, bitmask: torch.Tensor) -> None:
        self.llg.torch.fill_next_token_bitmask_par(self.executor, [(m, i) for i, m in enumerate(matchers)], bitmask)

    def accept(self, matcher, token_id: int) -> bool:
        return matcher.consume_token(token_id)


def apply_masks(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """The engine's own mask write (structured_output.mask_logits), the same for both libraries: xgrammar's CPU
    apply is a plain loop, llguidance's a torch.compile kernel that needs a C++ compiler at run time."""
    logits.masked_fill_(~allowed_tokens(bitmask, logits.shape[-1], logits.device), float("-inf"))


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def run_library(library, tokenizer, batch: int, eos_id: int, setup_s: float) -> LibraryResult:
    """`setup_s`: how long building the library's vocabulary tables took (once per library)."""
    kinds = [i % len(SCHEMAS) for i in range(batch)]
    targets = [
        tokenizer.encode(json.dumps(_document(k, i), separators=(",", ":")), add_special_tokens=False) + [eos_id]
        for i, k in enumerate(kinds)
    ]
    compile_times, matchers = [], []
    for kind in kinds:
        start = time.perf_counter()
        matchers.append(library.matcher(SCHEMAS[kind]))
        compile_times.append(time.perf_counter() - start)
    bitmask = library.bitmask(batch)
    logits = torch.randn(batch, library.vocab_size)
    fills, applies, accepts, steps = [], [], [], []
    tokens = disagreements = 0
    for step in range(max(len(t) for t in targets)):
        active = [i for i in range(batch) if step < len(targets[i])]
        t0 = time.perf_counter()
        library.fill([matchers[i] for i in active], bitmask)
        t1 = time.perf_counter()
        rows = logits[: len(active)].clone()
        t1b = time.perf_counter()
        apply_masks(rows, bitmask[: len(active)])
        t2 = time.perf_counter()
        for row, i in enumerate(active):
            token = targets[i][step]
            if rows[row, token] == float("-inf") or not library.accept(matchers[i], token):
                disagreements += 1
            tokens += 1
        t3 = time.perf_counter()
        if len(active) == batch:
            fills.append(t1 - t0)
            applies.append(t2 - t1b)
            accepts.append(t3 - t2)
            steps.append((t1 - t0) + (t2 - t1b) + (t3 - t2))
    step_ms = statistics.median(steps) * 1e3
    return LibraryResult(
        library=library.name,
        version=library.version,
        tokenizer_setup_s=setup_s,
        compile_ms_p50=statistics.median(compile_times) * 1e3,
        step_ms_p50=step_ms,
        fill_ms_p50=statistics.median(fills) * 1e3,
        fill_ms_p99=_p99(fills) * 1e3,
        apply_ms_p50=statistics.median(applies) * 1e3,
        accept_ms_p50=statistics.median(accepts) * 1e3,
        per_token_us=step_ms * 1e3 / batch,
        tokens=tokens,
        disagreements=disagreements,
    )


def _p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(0.99 * len(values)))]


def sampler_baseline_ms(batch: int, vocab_size: int, repeats: int = 20) -> float:
    """The batched sampler on a [batch, vocab] float32 tensor, sampling at temperature 0.7 with a generator per
    row and no logprobs: what a step costs past the forward, without grammars."""
    logits = torch.randn(batch, vocab_size)
    rows = [
        SampleRow(
            SamplingParams(do_sample=True, temperature=0.7, seed=i), [1, 2, 3], 3, torch.Generator().manual_seed(i)
        )
        for i in range(batch)
    ]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sample_rows(logits, rows)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def forward_baseline_ms(model_dir: Path, batch: int, context: int = 128, repeats: int = 5) -> float:
    """One SmolLM2 decode forward at `batch` sequences of `context` cached tokens (transformers, float32)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.randint(0, 1000, (batch, context))
    times = []
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(ids, past_key_values=cache, use_cache=True)
        for _ in range(repeats):
            start = time.perf_counter()
            model(ids[:, -1:], past_key_values=cache, use_cache=True)
            times.append(time.perf_counter() - start)
            cache.crop(-1)  # the next repeat decodes at the same length
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="runs per library; the best median step is kept")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    model_dir = ensure_default_model(load_config(flags={}).cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab_size = AutoConfig.from_pretrained(model_dir).vocab_size
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    results = []
    for cls in (XGrammar, LLGuidance):
        start = time.perf_counter()
        library = cls(tokenizer, vocab_size, [eos_id])
        setup = time.perf_counter() - start
        runs = [run_library(library, tokenizer, args.batch, eos_id, setup) for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r.step_ms_p50)
        results.append(best)
    sampler_ms = sampler_baseline_ms(args.batch, vocab_size)
    forward_ms = forward_baseline_ms(model_dir, args.batch)
    print(f"batch {args.batch}, vocab {vocab_size}, torch threads {torch.get_num_threads()}")
    print(
        f"baselines: sampler at temperature 0.7, no grammar: {sampler_ms:.2f} ms/step; "
        f"SmolLM2 decode forward: {forward_ms:.1f} ms/step"
    )
    print(
        "library     version  setup    compile  fill p50  fill p99  mask/token  apply  accept  step p50  "
        "/sampler  /forward  disagree"
    )
    for r in results:
        print(
            f"{r.library:<11} {r.version:<8} {r.tokenizer_setup_s:4.2f} s {r.compile_ms_p50:6.2f} ms"
            f" {r.fill_ms_p50:5.2f} ms {r.fill_ms_p99:5.2f} ms {r.fill_ms_p50 * 1e3 / args.batch:7.1f} µs"
            f" {r.apply_ms_p50:5.2f} ms {r.accept_ms_p50:4.2f} ms {r.step_ms_p50:6.2f} ms"
            f" {r.step_ms_p50 / sampler_ms:7.3f}× {r.step_ms_p50 / forward_ms:7.3f}× {r.disagreements:4d}/{r.tokens}"
        )
    if args.json:
        payload = {
            "batch": args.batch,
            "vocab_size": vocab_size,
            "sampler_ms": sampler_ms,
            "forward_ms": forward_ms,
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
