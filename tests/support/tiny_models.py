"""Tiny random causal LMs with SmolLM2's real tokenizer, so text goes end to end through every test.

The weights are seeded and scaled up (`initializer_range`) so greedy decoding is far from ties: the top-2 logit gap
at each step is large next to float32 reordering error, and token-for-token equality tests stay robust.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

INITIALIZER_RANGE = 0.2  # 10x the usual 0.02: logits spread out, greedy choices are clear
MAX_POSITIONS = 512


def build_tiny_llama(tokenizer_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Llama with grouped-query attention (4 query heads, 2 KV heads, head_dim 16) and RoPE."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        initializer_range=INITIALIZER_RANGE,
        **_vocab_and_special_ids(tokenizer),
    )
    return _save(LlamaForCausalLM, config, tokenizer, out_dir, seed)


def build_tiny_gpt2(tokenizer_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """GPT-2: learned absolute positions, fused c_attn, multi-head attention (4 heads, head_dim 16)."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = GPT2Config(
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=MAX_POSITIONS,
        initializer_range=INITIALIZER_RANGE,
        **_vocab_and_special_ids(tokenizer),
    )
    return _save(GPT2LMHeadModel, config, tokenizer, out_dir, seed)


def _vocab_and_special_ids(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _save(model_class, config, tokenizer, out_dir: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
