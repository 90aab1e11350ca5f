"""Real PEFT classification adapters (SEQ_CLS, TOKEN_CLS) on a saved model folder, and their reference logits.

`train_classifier` trains the soft prompt and the head together for a few steps (each input alone, so no padding
is involved), then `save_pretrained`: the head lands in adapter_model.safetensors as PEFT's `modules_to_save` copy.
`classifier_logits` is the reference every classification test compares with: the
`PeftModelForSequenceClassification` / `PeftModelForTokenClassification` forward on one input.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

from tests.support.adapters import PEFT_CONFIGS

TEXTS = [
    "I loved this film, its music and every one of its actors",
    "A dull, slow story",
    "Paris is in France",
    "Rome is lovely in spring",
]
MODEL_CLASSES = {"SEQ_CLS": AutoModelForSequenceClassification, "TOKEN_CLS": AutoModelForTokenClassification}


def train_classifier(
    base_dir: Path,
    task_type: str,
    peft_type: str,
    out_dir: Path,
    *,
    num_labels: int = 3,
    num_virtual_tokens: int = 6,
    num_steps: int = 4,
    learning_rate: float = 0.05,
    seed: int = 0,
    **options,
) -> Path:
    """`num_steps` Adam steps of the classification loss over TEXTS (labels i % num_labels), saved to `out_dir`."""
    torch.manual_seed(seed)
    base = MODEL_CLASSES[task_type].from_pretrained(base_dir, num_labels=num_labels)
    config = PEFT_CONFIGS[peft_type](task_type=TaskType(task_type), num_virtual_tokens=num_virtual_tokens, **options)
    model = get_peft_model(base, config)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    num_tasks = options.get("num_tasks", 1)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    model.train()
    for step in range(num_steps):
        for i, text in enumerate(TEXTS):
            ids = tokenizer(text, return_tensors="pt").input_ids
            label = (i + step) % num_labels
            labels = torch.tensor([label]) if task_type == "SEQ_CLS" else torch.full_like(ids, label)
            if task_type == "TOKEN_CLS" and peft_type != "PREFIX_TUNING":
                # PEFT's token logits include the virtual positions, which no label may score
                labels = torch.cat([torch.full((1, num_virtual_tokens), -100), labels], dim=1)
            extra = {"task_ids": torch.tensor([i % num_tasks])} if num_tasks > 1 else {}
            optimizer.zero_grad()
            model(input_ids=ids, labels=labels, **extra).loss.backward()
            optimizer.step()
    model.eval()
    model.save_pretrained(out_dir)
    return out_dir


def load_classifier(base_dir: Path, adapter_dir: Path, task_type: str, num_labels: int):
    base = MODEL_CLASSES[task_type].from_pretrained(base_dir, num_labels=num_labels)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


def classifier_logits(model, input_ids: list[int], subtask: int | None = None) -> torch.Tensor:
    """PEFT's logits for one input: [num_labels] (sequence task) or [len(input_ids), num_labels] (token task;
    the virtual positions dropped)."""
    extra = {} if subtask is None else {"task_ids": torch.tensor([subtask])}
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids]), **extra).logits[0].float()
    return logits if logits.dim() == 1 else logits[-len(input_ids) :]
