"""Many random PEFT soft prompts, fast: one `get_peft_model` per kind, then new random values and a
`save_pretrained` per task. Real PEFT files (what users upload), no training: benchmarks need the shapes and
the serving work, not good prompts. Needs peft (the `test` / `loadtest` extras)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

KIND_PREFIXES = {"PROMPT_TUNING": "pt", "PREFIX_TUNING": "px"}  # task names: pt-000, px-001, ...


@dataclass(frozen=True)
class RandomAdapter:
    task: str  # the task name it is served as
    peft_type: str  # a key of KIND_PREFIXES
    path: Path  # folder with adapter_config.json and adapter_model.safetensors

    def files(self) -> tuple[bytes, bytes]:
        """(adapter_config.json, adapter_model.safetensors) bytes, as the upload API takes them."""
        return (self.path / "adapter_config.json").read_bytes(), (self.path / "adapter_model.safetensors").read_bytes()


def write_random_adapters(
    model,
    out_dir: Path,
    num_tasks: int,
    num_virtual_tokens: int = 20,
    peft_types: tuple[str, ...] = ("PROMPT_TUNING", "PREFIX_TUNING"),
    seed: int = 0,
) -> list[RandomAdapter]:
    """`num_tasks` adapters for `model` (left untouched), kinds alternating over `peft_types`."""
    wrapped = {peft_type: _wrap(model, peft_type, num_virtual_tokens) for peft_type in peft_types}
    generator = torch.Generator().manual_seed(seed)
    adapters = []
    for index in range(num_tasks):
        peft_type = peft_types[index % len(peft_types)]
        peft_model = wrapped[peft_type]
        _randomize(peft_model, peft_type, generator)
        adapter = RandomAdapter(
            f"{KIND_PREFIXES[peft_type]}-{index:03d}", peft_type, out_dir / f"{KIND_PREFIXES[peft_type]}-{index:03d}"
        )
        peft_model.save_pretrained(adapter.path)
        adapters.append(adapter)
    return adapters


def _wrap(model, peft_type: str, num_virtual_tokens: int):
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    config_class = {"PROMPT_TUNING": PromptTuningConfig, "PREFIX_TUNING": PrefixTuningConfig}[peft_type]
    # A copy: get_peft_model marks the model it wraps, and the caller keeps serving the original.
    return get_peft_model(
        copy.deepcopy(model), config_class(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens)
    )


@torch.no_grad()
def _randomize(peft_model, peft_type: str, generator: torch.Generator) -> None:
    weight = peft_model.prompt_encoder["default"].embedding.weight  # [virtual tokens, hidden or layers*2*kv dim]
    if peft_type == "PROMPT_TUNING":
        # Rows of the word embedding (PEFT's SAMPLE_VOCAB init): virtual tokens of the scale real ones have.
        vocab = peft_model.get_input_embeddings().weight  # [vocab, hidden]
        rows = torch.randint(0, vocab.shape[0], (weight.shape[0],), generator=generator)
        weight.copy_(vocab[rows])
    else:
        weight.copy_(torch.randn(weight.shape, generator=generator))  # PEFT's own init: N(0, 1)
