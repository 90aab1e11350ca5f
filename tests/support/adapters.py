"""Real PEFT prompt-learning adapters, trained for a few steps on a tiny model, and PEFT's own generate as ground truth.

`peft_generate` is the reference the server must match token for token (see shared/API.md).
"""

from __future__ import annotations

from pathlib import Path

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


def peft_generate(
    base_dir: Path,
    adapter_dir: Path,
    input_ids: list[int],
    max_new_tokens: int,
    task_ids: list[int] | None = None,
) -> list[int]:
    """Greedy new tokens of `PeftModel.from_pretrained(base, adapter_dir).generate(...)`, up to and including EOS.

    `task_ids`: one sub-task id per batch row, so `[subtask]`; MULTITASK_PROMPT_TUNING requires it.
    """
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    extra = {} if task_ids is None else {"task_ids": torch.tensor(task_ids)}
    return _greedy_new_tokens(model, base.generation_config.eos_token_id, input_ids, max_new_tokens, extra)


def base_generate(base_dir: Path, input_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy new tokens of the base model alone, up to and including EOS."""
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    return _greedy_new_tokens(base, base.generation_config.eos_token_id, input_ids, max_new_tokens, {})


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


@torch.no_grad()
def _greedy_new_tokens(model, eos_token_id, input_ids: list[int], max_new_tokens: int, extra: dict) -> list[int]:
    prompt = torch.tensor([list(input_ids)])  # [1, num_prompt_tokens]
    output = model.generate(input_ids=prompt, do_sample=False, max_new_tokens=max_new_tokens, **extra)
    new_tokens = output[0, prompt.shape[1] :].tolist()
    eos_ids = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    for index, token in enumerate(new_tokens):
        if token in eos_ids:
            return new_tokens[: index + 1]
    return new_tokens
