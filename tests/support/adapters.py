"""Real PEFT prompt-learning adapters for tests: made with `get_peft_model`, trained a few steps, saved by PEFT itself.

Three ways in, one training loop and one table of config classes:
- `train_adapter` / `AdapterFactory`: on a saved model folder (tests/support/tiny_models.py `build_tiny_*`, SmolLM2),
  trained on a short text; what engine and end-to-end tests serve and compare with PEFT (tests/support/reference.py).
- `make_adapter`: on an in-memory tiny model (`TINY_MODELS`), every kind of `peft_configs`; the prompt store's tests.
- `adapter_files`: untrained files for a random Llama of any `ModelShape`; scheduler and prompt-cache tests.
"""

from __future__ import annotations

import io
import json
import warnings
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
    TaskType,
    get_peft_model,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from prompt_store.model_shape import ModelShape
from tests.support.tiny_models import TINY_MODELS, TINY_SHAPES, TINY_VOCAB_SIZE, random_llama

PEFT_CONFIGS = {
    "PROMPT_TUNING": PromptTuningConfig,
    "P_TUNING": PromptEncoderConfig,
    "PREFIX_TUNING": PrefixTuningConfig,
    "MULTITASK_PROMPT_TUNING": MultitaskPromptTuningConfig,
}
TRAINING_TEXT = "The capital of France is Paris. The capital of Italy is Rome."
INIT_TEXT = "Answer like a geography teacher"  # prompt_tuning_init="TEXT" default text
BASE_MODEL_ID = "tiny-base"  # what the prompt store's test registries call the base model
NUM_VIRTUAL_TOKENS = 4  # `peft_configs` adapters
NUM_SUBTASKS = 3  # `peft_configs` multitask adapters, and the rows `make_adapter` trains on


def train_prompt(
    peft_model: PeftModel,
    input_ids: torch.Tensor,
    num_steps: int,
    learning_rate: float,
    task_ids: torch.Tensor | None = None,
) -> None:
    """`num_steps` Adam steps of the language-model loss on `input_ids` [batch, tokens], then eval mode."""
    peft_model.train()
    extra = {} if task_ids is None else {"task_ids": task_ids}
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=learning_rate)
    for _ in range(num_steps):
        optimizer.zero_grad()
        peft_model(input_ids=input_ids, labels=input_ids, **extra).loss.backward()
        optimizer.step()
    peft_model.eval()


# ---- on a saved model folder ----


def train_adapter(
    base_dir: Path,
    peft_type: str,
    out_dir: Path,
    *,
    num_virtual_tokens: int = 8,
    num_steps: int = 5,
    learning_rate: float = 0.05,
    seed: int = 0,
    **options,
) -> Path:
    """Wrap the base with `get_peft_model`, take `num_steps` Adam steps on a tiny text, `save_pretrained(out_dir)`.

    `options` go to the PEFT config: `prompt_tuning_init="TEXT"`, `encoder_reparameterization_type="LSTM"`,
    `prefix_projection=True`, `num_tasks=3`, ... Raises if training left the prompt at its initial value.
    """
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = get_peft_model(base, _peft_config(base_dir, peft_type, num_virtual_tokens, options))
    before = _trainable_snapshot(model)
    num_tasks = options.get("num_tasks", 1)
    input_ids = AutoTokenizer.from_pretrained(base_dir)(TRAINING_TEXT, return_tensors="pt").input_ids
    # Multitask prompt tuning trains every sub-task, so each one's prompt differs from the others'.
    task_ids = torch.arange(num_tasks) if num_tasks > 1 else None
    train_prompt(model, input_ids.repeat(num_tasks, 1), num_steps, learning_rate, task_ids)
    if all(torch.equal(before[name], param) for name, param in model.named_parameters() if param.requires_grad):
        raise AssertionError(f"{peft_type} training did not change the prompt")
    model.save_pretrained(out_dir)
    return out_dir


class AdapterFactory:
    """`adapter_factory(base_dir, peft_type, **options) -> adapter_dir`, trained once per session per arguments."""

    def __init__(self, root: Path):
        self._root = root
        self._adapters: dict[tuple, Path] = {}

    def __call__(self, base_dir: Path, peft_type: str, **options) -> Path:
        key = (str(base_dir), peft_type, tuple(sorted((name, repr(value)) for name, value in options.items())))
        if key not in self._adapters:
            out_dir = self._root / f"{peft_type.lower()}-{len(self._adapters)}"
            self._adapters[key] = train_adapter(base_dir, peft_type, out_dir, **options)
        return self._adapters[key]


def _peft_config(base_dir: Path, peft_type: str, num_virtual_tokens: int, options: dict) -> PeftConfig:
    options = dict(options)
    if options.get("prompt_tuning_init") == "TEXT":
        options.setdefault("prompt_tuning_init_text", INIT_TEXT)
        options.setdefault("tokenizer_name_or_path", str(base_dir))
    config_class = PEFT_CONFIGS[peft_type]
    return config_class(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens, **options)


def _trainable_snapshot(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}


# ---- on an in-memory tiny model: every kind the prompt store reads ----


def word_level_tokenizer(folder: Path) -> Path:
    """A local tokenizer (no hub access) for PROMPT_TUNING's TEXT init."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(TINY_VOCAB_SIZE - 1)} | {"[UNK]": TINY_VOCAB_SIZE - 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(folder)
    return folder


def peft_configs(tokenizer_dir: Path) -> dict[str, Callable[[], PeftConfig]]:
    """kind -> its PEFT config: every prompt-learning type and init the server reads."""
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
    model_name: str  # key of TINY_MODELS
    folder: Path  # what save_pretrained wrote
    config_bytes: bytes
    model_bytes: bytes
    trained: PeftModel  # the model that saved it, in eval mode

    @property
    def shape(self) -> ModelShape:
        return TINY_SHAPES[self.model_name]

    @property
    def is_multitask(self) -> bool:
        return "multitask" in self.name

    def load_with_peft(self) -> PeftModel:
        """What users serve today: PeftModel.from_pretrained on a fresh copy of the same base."""
        return PeftModel.from_pretrained(TINY_MODELS[self.model_name](), self.folder).eval()

    def config(self) -> dict:
        return json.loads(self.config_bytes)

    def tensors(self) -> dict[str, torch.Tensor]:
        return safetensors.torch.load(self.model_bytes)


def make_adapter(
    model_name: str, kind: str, make_config: Callable[[], PeftConfig], folder: Path, seed: int = 0
) -> SavedAdapter:
    """Two training steps on random ids move the prompt off its initial value, so a reader that ignores it shows."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(TINY_MODELS[model_name](), make_config())
    input_ids = torch.randint(0, TINY_VOCAB_SIZE, (NUM_SUBTASKS, 6))
    task_ids = torch.arange(NUM_SUBTASKS) if kind == "multitask" else None
    train_prompt(peft_model, input_ids, num_steps=2, learning_rate=0.05, task_ids=task_ids)
    peft_model.save_pretrained(folder)
    return SavedAdapter(
        name=f"{model_name}/{kind}",
        model_name=model_name,
        folder=folder,
        config_bytes=(folder / "adapter_config.json").read_bytes(),
        model_bytes=(folder / "adapter_model.safetensors").read_bytes(),
        trained=peft_model,
    )


def torch_saved(tensors: dict[str, torch.Tensor], legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensors, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


# ---- untrained files for a random Llama of any shape ----


def adapter_files(
    folder: Path,
    shape: ModelShape,
    peft_type: str,
    num_virtual_tokens: int,
    seed: int = 0,
    random_prefix: bool = False,
    **options,
) -> tuple[bytes, bytes]:
    """adapter_config.json and adapter_model.safetensors as PEFT saves them for `random_llama(shape, seed)`.

    `random_prefix`: PEFT initializes a prefix at zero; draw it from N(0, 1) instead, so cache slots tell apart.
    """
    config_class = PEFT_CONFIGS[peft_type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(
            random_llama(shape, seed),
            config_class(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens, **options),
        )
        if random_prefix and peft_type == "PREFIX_TUNING":
            torch.nn.init.normal_(model.prompt_encoder["default"].embedding.weight)
        model.save_pretrained(folder)
    return (folder / "adapter_config.json").read_bytes(), (folder / "adapter_model.safetensors").read_bytes()
