"""The mixed-batch equivalence check every model family goes through: each served prompt type (ADAPTERS), trained
on the model, next to base requests in one batch served in chunks; each request's greedy tokens must equal PEFT's
uncached forward (tests/support/reference.py)."""

from __future__ import annotations

from pathlib import Path

from tests.support.adapters import AdapterFactory
from tests.support.engine import make_engine, serve_interleaved, upload_folder
from tests.support.reference import base_greedy, peft_greedy

PROMPTS = ["The capital of France is", "Once upon a time, in a land far", "1 2 3", "Hello"]
# (task name, peft type, options): every served type, several num_virtual_tokens
ADAPTERS = [
    ("pt-random", "PROMPT_TUNING", dict(num_virtual_tokens=5)),
    ("pt-text", "PROMPT_TUNING", dict(num_virtual_tokens=8, prompt_tuning_init="TEXT")),
    ("ptune-mlp", "P_TUNING", dict(num_virtual_tokens=6, encoder_hidden_size=32)),
    (
        "ptune-lstm",
        "P_TUNING",
        dict(num_virtual_tokens=7, encoder_hidden_size=32, encoder_reparameterization_type="LSTM"),
    ),
    ("prefix", "PREFIX_TUNING", dict(num_virtual_tokens=9)),
    ("prefix-proj", "PREFIX_TUNING", dict(num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=32)),
    ("multitask", "MULTITASK_PROMPT_TUNING", dict(num_virtual_tokens=6, num_tasks=3)),
]
MULTITASK_SUBTASKS = (0, 2)


def mixed_cases(prompts_per_adapter: int) -> list[tuple[str, str | None, int, str]]:
    """(request id, task, subtask, prompt text): two base requests, then `prompts_per_adapter` per adapter (and per
    sub-task of the multitask one), prompts of different lengths."""
    cases: list[tuple[str, str | None, int, str]] = [(f"base-{i}", None, 0, text) for i, text in enumerate(PROMPTS[:2])]
    for n, (task, peft_type, _) in enumerate(ADAPTERS):
        subtasks = MULTITASK_SUBTASKS if peft_type == "MULTITASK_PROMPT_TUNING" else (0,)
        for subtask in subtasks:
            for k in range(prompts_per_adapter):
                text = PROMPTS[(n + k) % len(PROMPTS)]
                cases.append((f"{task}-{subtask}-{k}", task, subtask, text))
    return cases


def assert_mixed_batch_matches_peft(
    base_dir: Path, adapter_factory: AdapterFactory, cases, max_new_tokens: int, num_kv_blocks: int
) -> None:
    adapters = {task: adapter_factory(base_dir, peft_type, **options) for task, peft_type, options in ADAPTERS}
    # block size 4 and a 24-token budget: prefixes that end mid-block, prompts prefilled in chunks
    engine = make_engine(base_dir, block_size=4, num_kv_blocks=num_kv_blocks, max_num_batched_tokens=24)
    for task, adapter_dir in adapters.items():
        upload_folder(engine, task, adapter_dir)
    handles = serve_interleaved(engine, cases, max_new_tokens)
    for rid, task, subtask, text in cases:
        ids = engine.tokenizer(text).input_ids
        if task is None:
            expected = base_greedy(base_dir, ids, max_new_tokens)
        else:
            multitask_id = subtask if task == "multitask" else None
            expected = peft_greedy(base_dir, adapters[task], ids, max_new_tokens, subtask=multitask_id)
        tokens, _, last = handles[rid].result(timeout=5)
        assert tokens == expected, f"{rid} ({task}, subtask {subtask}): {tokens} != PEFT {expected}"
        assert last.task == task
