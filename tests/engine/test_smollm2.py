"""The real default model: PEFT-identical greedy tokens for briefly trained adapters, mixed with base requests."""

from __future__ import annotations

from tests.support.engine import make_engine, request, run_to_completion, upload_folder
from tests.support.reference import base_greedy, peft_greedy

MAX_NEW = 12
QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?"]


def test_smollm2_mixed_batch_matches_peft(smollm2_dir, adapter_factory):
    adapters = {
        "pt": adapter_factory(smollm2_dir, "PROMPT_TUNING", num_virtual_tokens=10, num_steps=3),
        "prefix": adapter_factory(smollm2_dir, "PREFIX_TUNING", num_virtual_tokens=10, num_steps=3),
    }
    engine = make_engine(smollm2_dir, num_kv_blocks=256)
    for task, adapter_dir in adapters.items():
        upload_folder(engine, task, adapter_dir)
    tokenizer = engine.tokenizer
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in QUESTIONS
    ]
    cases = [(f"{task}-{i}", task, i) for task in (None, "pt", "prefix") for i in range(len(prompts))]
    handles = {
        rid: engine.add_request(request(rid, tokenizer(prompts[i]).input_ids, MAX_NEW, task)) for rid, task, i in cases
    }
    run_to_completion(engine)
    texts = {}
    for rid, task, i in cases:
        ids = tokenizer(prompts[i]).input_ids
        expected = (
            base_greedy(smollm2_dir, ids, MAX_NEW)
            if task is None
            else peft_greedy(smollm2_dir, adapters[task], ids, MAX_NEW)
        )
        tokens, texts[rid], _ = handles[rid].result(timeout=5)
        assert tokens == expected, f"{rid}: {tokenizer.decode(tokens)!r} != PEFT {tokenizer.decode(expected)!r}"
    assert "Paris" in texts["None-0"]  # a real model: the base answers the question
