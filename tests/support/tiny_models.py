"""Tiny random causal LMs: saved with SmolLM2's real tokenizer, so text goes end to end through every test
(`build_tiny_*`), or built in memory to a given `ModelShape` for tests that need only PEFT's files or PEFT itself.

The saved models' weights are seeded and scaled up (`initializer_range`) so greedy decoding is far from ties: the
top-2 logit gap at each step is large next to float32 reordering error, and token-for-token equality tests stay robust.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from prompt_store.model_shape import ModelShape

INITIALIZER_RANGE = 0.2  # 10x the usual 0.02: logits spread out, greedy choices are clear
MAX_POSITIONS = 512
# The saved tiny models' dimensions: grouped-query attention (4 query heads, 2 KV heads) over more than one layer.
TINY_GQA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": MAX_POSITIONS,
    "initializer_range": INITIALIZER_RANGE,
}
TINY_VOCAB_SIZE = 128  # the in-memory models' vocabulary
TINY_SHAPES = {
    "llama": ModelShape(hidden_size=64, num_layers=2, num_kv_heads=2, head_dim=16, vocab_size=TINY_VOCAB_SIZE),
    "gpt2": ModelShape(hidden_size=64, num_layers=2, num_kv_heads=4, head_dim=16, vocab_size=TINY_VOCAB_SIZE),
}


def build_tiny_llama(tokenizer_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Llama with grouped-query attention (4 query heads, 2 KV heads, head_dim 16) and RoPE."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(**TINY_GQA, **vocab_and_special_ids(tokenizer))
    return save_tiny(LlamaForCausalLM, config, tokenizer, out_dir, seed)


def build_tiny_gpt2(tokenizer_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """GPT-2: learned absolute positions, fused c_attn, multi-head attention (4 heads, head_dim 16)."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = GPT2Config(
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=MAX_POSITIONS,
        initializer_range=INITIALIZER_RANGE,
        **vocab_and_special_ids(tokenizer),
    )
    return save_tiny(GPT2LMHeadModel, config, tokenizer, out_dir, seed)


def vocab_and_special_ids(tokenizer) -> dict:
    """The config fields a saved tiny model takes from SmolLM2's tokenizer."""
    return dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def save_tiny(model_class, config, tokenizer, out_dir: Path, seed: int, adjust=None) -> Path:
    """`model_class(config)` drawn from `seed`, then `adjust(model)` if given, saved to `out_dir` with `tokenizer`
    and a generation config."""
    torch.manual_seed(seed)
    model = model_class(config).eval()
    if adjust is not None:
        with torch.no_grad():
            adjust(model)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def random_llama(shape: ModelShape, seed: int = 1234) -> LlamaForCausalLM:
    """An in-memory Llama of `shape` with 4 query heads (GQA when `shape.num_kv_heads` < 4); the same seed gives the
    same weights, so a reference can rebuild the base an adapter was made on."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=shape.hidden_size,
        intermediate_size=2 * shape.hidden_size,
        num_attention_heads=shape.hidden_size // shape.head_dim,
        num_key_value_heads=shape.num_kv_heads,
        num_hidden_layers=shape.num_layers,
        vocab_size=shape.vocab_size,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def random_gpt2(shape: ModelShape, seed: int = 1234) -> GPT2LMHeadModel:
    """An in-memory GPT-2 of `shape` (multi-head attention: as many query heads as KV heads)."""
    torch.manual_seed(seed)
    config = GPT2Config(
        n_embd=shape.hidden_size,
        n_head=shape.num_kv_heads,
        n_layer=shape.num_layers,
        vocab_size=shape.vocab_size,
        n_positions=256,
    )
    return GPT2LMHeadModel(config).eval()


TINY_MODELS = {  # name -> a fresh copy of the same in-memory base, each call
    "llama": lambda: random_llama(TINY_SHAPES["llama"]),
    "gpt2": lambda: random_gpt2(TINY_SHAPES["gpt2"]),
}
