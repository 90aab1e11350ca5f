"""Tiny random models of the families beyond Llama and GPT-2, each built to exercise what sets its attention or its
embeddings apart (explicit head_dim, q/k norms, biases, fused projections, scaled and tied embeddings, sliding
windows, partial rotary). Saved with SmolLM2's tokenizer, seeded and with the scaled initializer of tiny_models.py,
so greedy decoding is far from ties.

`ARCHITECTURES`: model_type -> builder(tokenizer_dir, out_dir) of the families the engine serves, proven by
tests/engine/test_architectures.py. `build_tiny_gemma2` builds one the engine refuses (attention soft-capping).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from tests.support.tiny_models import TINY_GQA, save_tiny, vocab_and_special_ids

SLIDING_WINDOW = 64  # below MAX_POSITIONS: the engine must cap max_model_len to it


def build_tiny_qwen2(tokenizer_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Qwen2: GQA with biases on q/k/v (none on o), no sliding window (use_sliding_window is off by default)."""
    return _build(Qwen2ForCausalLM, Qwen2Config, TINY_GQA, tokenizer_dir, out_dir, seed)


def build_tiny_qwen3(tokenizer_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Qwen3: RMS norms on q and k per head, and head_dim 24 set explicitly (hidden / heads would be 16)."""
    return _build(Qwen3ForCausalLM, Qwen3Config, TINY_GQA | dict(head_dim=24), tokenizer_dir, out_dir, seed)


def build_tiny_mistral(tokenizer_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Mistral: GQA and a sliding window on every layer, smaller than max_position_embeddings."""
    options = TINY_GQA | dict(sliding_window=SLIDING_WINDOW)
    return _build(MistralForCausalLM, MistralConfig, options, tokenizer_dir, out_dir, seed)


def build_tiny_gemma3(tokenizer_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Gemma 3 text: head_dim 32 (not hidden / heads), attention scaled by query_pre_attn_scalar**-0.5 instead of
    head_dim**-0.5, q/k norms, embeddings scaled by sqrt(hidden) inside the embedding module and tied to the LM
    head, one sliding-window layer (its own RoPE base) and one global one, final-logit soft-capping."""
    options = TINY_GQA | dict(
        head_dim=32,
        query_pre_attn_scalar=20,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=SLIDING_WINDOW,
        final_logit_softcapping=30.0,
        tie_word_embeddings=True,
    )
    return _build(Gemma3ForCausalLM, Gemma3TextConfig, options, tokenizer_dir, out_dir, seed, _unecho)


def build_tiny_phi3(tokenizer_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Phi-3: fused qkv_proj and gate_up_proj, GQA, partial rotary (half of each head)."""
    options = TINY_GQA | dict(partial_rotary_factor=0.5)
    return _build(Phi3ForCausalLM, Phi3Config, options, tokenizer_dir, out_dir, seed)


def build_tiny_gpt_neox(tokenizer_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """GPT-NeoX (Pythia): fused query_key_value, multi-head attention, rotary on a quarter of each head, parallel
    attention and MLP residuals, biases everywhere."""
    options = {name: value for name, value in TINY_GQA.items() if name != "num_key_value_heads"}
    options |= dict(rotary_pct=0.25, use_parallel_residual=True)
    return _build(GPTNeoXForCausalLM, GPTNeoXConfig, options, tokenizer_dir, out_dir, seed)


def build_tiny_gemma2(tokenizer_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Gemma 2 with its default attention-logit soft-capping (50): refused by the engine at start-up."""
    options = TINY_GQA | dict(head_dim=32, sliding_window=SLIDING_WINDOW)
    return _build(Gemma2ForCausalLM, Gemma2Config, options, tokenizer_dir, out_dir, seed)


def _unecho(model) -> None:
    # Tied and sqrt(hidden)-scaled embeddings dominate an untrained residual stream, so the LM head's largest logit
    # is the last input token's own and greedy echoes it whatever came before (prefixes and prompts included).
    # Final-norm gains of mean 0 (Gemma's norm multiplies by 1 + weight) take away that self-match.
    torch.nn.init.normal_(model.model.norm.weight, mean=-1.0, std=1.0)


def _build(
    model_class, config_class, options: dict, tokenizer_dir: Path, out_dir: Path, seed: int, adjust=None
) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = config_class(**options, **vocab_and_special_ids(tokenizer))
    return save_tiny(model_class, config, tokenizer, out_dir, seed, adjust)


ARCHITECTURES: dict[str, Callable[[Path, Path], Path]] = {
    "qwen2": build_tiny_qwen2,
    "qwen3": build_tiny_qwen3,
    "mistral": build_tiny_mistral,
    "gemma3_text": build_tiny_gemma3,
    "phi3": build_tiny_phi3,
    "gpt_neox": build_tiny_gpt_neox,
}
