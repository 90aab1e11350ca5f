"""Real PEFT adapters on tiny random models: built with get_peft_model, trained a few steps, saved by PEFT itself."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from peft import (
    MultitaskPromptTuningConfig,
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from common.model_shape import ModelShape

BASE_MODEL_ID = "tiny-base"  # what the registries in these tests call the base model
VOCAB_SIZE = 128
NUM_VIRTUAL_TOKENS = 4
NUM_SUBTASKS = 3


def tiny_llama() -> LlamaForCausalLM:
    """GQA: 4 query heads share 2 KV heads; head_dim 16."""
    torch.manual_seed(1234)  # the same base weights every call: adapters and references must share them
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(1234)
    config = GPT2Config(n_embd=64, n_head=4, n_layer=2, vocab_size=VOCAB_SIZE, n_positions=256)
    return GPT2LMHeadModel(config).eval()


BASE_MODELS: dict[str, Callable[[], torch.nn.Module]] = {"llama": tiny_llama, "gpt2": tiny_gpt2}
SHAPES = {
    "llama": ModelShape(hidden_size=64, num_layers=2, num_kv_heads=2, head_dim=16, vocab_size=VOCAB_SIZE),
    "gpt2": ModelShape(hidden_size=64, num_layers=2, num_kv_heads=4, head_dim=16, vocab_size=VOCAB_SIZE),
}


def word_level_tokenizer(folder: Path) -> Path:
    """A local tokenizer (no hub access) for PROMPT_TUNING's TEXT init."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(VOCAB_SIZE - 1)} | {"[UNK]": VOCAB_SIZE - 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(folder)
    return folder


def peft_configs(tokenizer_dir: Path) -> dict[str, Callable[[], PeftConfig]]:
    common = {"task_type": "CAUSAL_LM", "num_virtual_tokens": NUM_VIRTUAL_TOKENS}
    return {
        "prompt_tuning_random": lambda: PromptTuningConfig(**common),
        "prompt_tuning_sample_vocab": lambda: PromptTuningConfig(**common, prompt_tuning_init="SAMPLE_VOCAB"),
        "prompt_tuning_text": lambda: PromptTuningConfig(
            **common,
            prompt_tuning_init="TEXT",
            prompt_tuning_init_text="w1 w2 w3",
            tokenizer_name_or_path=str(tokenizer_dir),
        ),
        "p_tuning_mlp": lambda: PromptEncoderConfig(
            **common, encoder_reparameterization_type="MLP", encoder_hidden_size=32
        ),
        "p_tuning_lstm": lambda: PromptEncoderConfig(
            **common, encoder_reparameterization_type="LSTM", encoder_hidden_size=32
        ),
        "prefix": lambda: PrefixTuningConfig(**common),
        "prefix_projection": lambda: PrefixTuningConfig(**common, prefix_projection=True, encoder_hidden_size=32),
        "multitask": lambda: MultitaskPromptTuningConfig(**common, num_tasks=NUM_SUBTASKS, num_ranks=2),
    }


@dataclass
class SavedAdapter:
    name: str  # "<model>/<peft kind>"
    model_name: str  # key of BASE_MODELS
    folder: Path  # what save_pretrained wrote
    config_bytes: bytes
    model_bytes: bytes
    trained: PeftModel  # the model that saved it, in eval mode

    @property
    def shape(self) -> ModelShape:
        return SHAPES[self.model_name]

    @property
    def is_multitask(self) -> bool:
        return "multitask" in self.name

    def load_with_peft(self) -> PeftModel:
        """What users serve today: PeftModel.from_pretrained on a fresh copy of the same base."""
        return PeftModel.from_pretrained(BASE_MODELS[self.model_name](), self.folder).eval()

    def config(self) -> dict:
        return json.loads(self.config_bytes)

    def tensors(self) -> dict[str, torch.Tensor]:
        return safetensors.torch.load(self.model_bytes)


def make_adapter(
    model_name: str, kind: str, make_config: Callable[[], PeftConfig], folder: Path, seed: int = 0
) -> SavedAdapter:
    torch.manual_seed(seed)
    peft_model = get_peft_model(BASE_MODELS[model_name](), make_config())
    _train_a_little(peft_model, is_multitask=kind == "multitask")
    peft_model.save_pretrained(folder)
    peft_model.eval()
    return SavedAdapter(
        name=f"{model_name}/{kind}",
        model_name=model_name,
        folder=folder,
        config_bytes=(folder / "adapter_config.json").read_bytes(),
        model_bytes=(folder / "adapter_model.safetensors").read_bytes(),
        trained=peft_model,
    )


def _train_a_little(peft_model: PeftModel, is_multitask: bool, steps: int = 2) -> None:
    """Move the prompt parameters off their initial values, so a reader that ignores them would be caught."""
    peft_model.train()
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=0.05)
    input_ids = torch.randint(0, VOCAB_SIZE, (NUM_SUBTASKS, 6))
    extra = {"task_ids": torch.arange(NUM_SUBTASKS)} if is_multitask else {}
    for _ in range(steps):
        loss = peft_model(input_ids=input_ids, labels=input_ids, **extra).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def resave(adapter: SavedAdapter, tensors: dict[str, torch.Tensor] | None = None, config: dict | None = None):
    """(config_bytes, model_bytes) with some tensors or config fields replaced."""
    config_bytes = adapter.config_bytes if config is None else json.dumps(config).encode()
    model_bytes = adapter.model_bytes if tensors is None else safetensors.torch.save(tensors)
    return config_bytes, model_bytes


def torch_saved(tensors: dict[str, torch.Tensor], legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensors, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()
