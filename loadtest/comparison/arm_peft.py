"""Arms (a) and (b): PEFT alone, as users run it without a server."""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from loadtest.comparison.results import ArmResult
from loadtest.comparison.workload import BenchRequest


def run_one_at_a_time(base, requests: list[BenchRequest], new_tokens: int, pad_token_id: int) -> ArmResult:
    """(a) Per request: `PeftModel.from_pretrained(base, adapter)` then `generate` for that request alone.
    The adapter load is part of the pattern and of the timing; its share is reported in `extra`."""
    from peft import PeftModel

    load_s, num_tokens = 0.0, 0
    started = time.perf_counter()
    for request in requests:
        loading = time.perf_counter()
        model = PeftModel.from_pretrained(base, request.adapter.path).eval()
        load_s += time.perf_counter() - loading
        num_tokens += _generate(model, [request.prompt_token_ids], new_tokens, pad_token_id)
    wall_s = time.perf_counter() - started
    return ArmResult(
        "a",
        "PEFT: one PeftModel per request, generate one at a time",
        len(requests),
        num_tokens,
        wall_s,
        None,
        None,
        extra={"adapter_load_s": round(load_s, 3)},
    )


def run_grouped_by_task(
    base, requests: list[BenchRequest], new_tokens: int, max_batch: int, pad_token_id: int
) -> ArmResult:
    """(b) Requests grouped by task; per group one PeftModel and batched `generate` calls (left padding) of at
    most `max_batch` requests. PEFT can not mix tasks in one batch, so this is as well as it can do."""
    from peft import PeftModel

    groups: dict[str, list[BenchRequest]] = defaultdict(list)
    for request in requests:
        groups[request.adapter.task].append(request)
    num_tokens, batch_sizes = 0, []
    started = time.perf_counter()
    for members in groups.values():
        model = PeftModel.from_pretrained(base, members[0].adapter.path).eval()
        for first in range(0, len(members), max_batch):
            batch = [request.prompt_token_ids for request in members[first : first + max_batch]]
            num_tokens += _generate(model, batch, new_tokens, pad_token_id)
            batch_sizes.append(len(batch))
    wall_s = time.perf_counter() - started
    return ArmResult(
        "b",
        "PEFT: grouped by task, batched generate per group (left padding)",
        len(requests),
        num_tokens,
        wall_s,
        None,
        None,
        note=f"{len(groups)} task groups, {len(batch_sizes)} generate calls",
        extra={"num_groups": len(groups), "batch_sizes": sorted(batch_sizes, reverse=True)},
    )


def warm_up(base, request: BenchRequest, pad_token_id: int) -> None:
    from peft import PeftModel

    _generate(PeftModel.from_pretrained(base, request.adapter.path).eval(), [request.prompt_token_ids], 2, pad_token_id)


@torch.inference_mode()
def _generate(model, prompts: list[tuple[int, ...]], new_tokens: int, pad_token_id: int) -> int:
    """Greedy, exactly `new_tokens` per row (min = max, so EOS can not end a row early); returns tokens made."""
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.tensor([[pad_token_id] * (width - len(p)) + list(p) for p in prompts])  # [batch, width]
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # left padding
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=pad_token_id,
    )
    generated = output.shape[1] - width
    if generated != new_tokens:
        raise AssertionError(f"generate made {generated} tokens per row, expected {new_tokens}")
    return generated * len(prompts)
