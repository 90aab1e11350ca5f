"""Real PEFT prompt-learning adapters, trained for a few steps on a tiny model (references: tests/support/reference.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import (
    MultitaskPromptTuningConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

PEFT_CONFIGS = {
    "PROMPT_TUNING": PromptTuningConfig,
    "P_TUNING": PromptEncoderConfig,
    "PREFIX_TUNING": PrefixTuningConfig,
    "MULTITASK_PROMPT_TUNING": MultitaskPromptTuningConfig,
}
TRAINING_TEXT = "The capital of France is Paris. The capital of Italy is Rome."
INIT_TEXT = "Answer like a geography teacher"  # prompt_tuning_init="TEXT" default text


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
    _train(model, AutoTokenizer.from_pretrained(base_dir), num_steps, learning_rate, options.get("num_tasks", 1))
    if all(torch.equal(before[name], param) for name, param in model.named_parameters() if param.requires_grad):
        raise AssertionError(f"{peft_type} training did not change the prompt")
    model.save_pretrained(out_dir)
    return out_dir


def _peft_config(base_dir: Path, peft_type: str, num_virtual_tokens: int, options: dict) -> PeftConfig:
    options = dict(options)
    if options.get("prompt_tuning_init") == "TEXT":
        options.setdefault("prompt_tuning_init_text", INIT_TEXT)
        options.setdefault("tokenizer_name_or_path", str(base_dir))
    config_class = PEFT_CONFIGS[peft_type]
    return config_class(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens, **options)


def _train(model, tokenizer, num_steps: int, learning_rate: float, num_tasks: int) -> None:
    model.train()
    input_ids = tokenizer(TRAINING_TEXT, return_tensors="pt").input_ids.repeat(num_tasks, 1)  # [num_tasks, tokens]
    # Multitask prompt tuning trains every sub-task, so each one's prompt differs from the others'.
    extra = {"task_ids": torch.arange(num_tasks)} if num_tasks > 1 else {}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    for _ in range(num_steps):
        optimizer.zero_grad()
        model(input_ids=input_ids, labels=input_ids, **extra).loss.backward()
        optimizer.step()
    model.eval()


def _trainable_snapshot(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}
