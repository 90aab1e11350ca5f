"""The real default model: PEFT-identical greedy tokens for briefly trained adapters, mixed with base requests."""

from __future__ import annotations

import torch

from server.engine.request import GenerationRequest, SamplingParams
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


def test_smollm2_classification_heads_match_peft_beside_generation(smollm2_dir, tmp_path):
    """A P-Tuning v2 sentiment head (prefix tuning without projection, SEQ_CLS) and a prompt-tuning token tagger
    (TOKEN_CLS), each trained a few steps, classify beside a generation request: PEFT's logits and labels."""
    from tests.support.classifiers import TEXTS, classifier_logits, load_classifier, train_classifier

    adapters = {
        "sentiment": train_classifier(
            smollm2_dir, "SEQ_CLS", "PREFIX_TUNING", tmp_path / "sentiment", num_labels=2, num_steps=2
        ),
        "tagger": train_classifier(
            smollm2_dir, "TOKEN_CLS", "PROMPT_TUNING", tmp_path / "tagger", num_labels=3, num_steps=2
        ),
    }
    engine = make_engine(smollm2_dir, num_kv_blocks=256)
    for task, folder in adapters.items():
        upload_folder(engine, task, folder)
    tokenizer = engine.tokenizer
    question = tokenizer(QUESTIONS[0]).input_ids
    generation = engine.add_request(request("generate", question, MAX_NEW))
    texts = [*TEXTS, "The service was terrible", "What a wonderful day"]
    handles = {
        (task, i): engine.add_request(
            GenerationRequest(
                f"{task}-{i}", tuple(tokenizer(text).input_ids), SamplingParams(), task=task, classify=True
            )
        )
        for task in adapters
        for i, text in enumerate(texts)
    }
    run_to_completion(engine)
    assert generation.result(timeout=5)[0] == base_greedy(smollm2_dir, question, MAX_NEW)
    agree = 0
    for task, task_type, num_labels in [("sentiment", "SEQ_CLS", 2), ("tagger", "TOKEN_CLS", 3)]:
        peft = load_classifier(smollm2_dir, adapters[task], task_type, num_labels)
        for i, text in enumerate(texts):
            result = list(handles[(task, i)].outputs(timeout=5))[-1].classification
            expected = classifier_logits(peft, tokenizer(text).input_ids)
            actual = torch.tensor(result.logits)
            actual = actual[0] if task_type == "SEQ_CLS" else actual
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4, msg=f"{task} {text!r}")
            agree += int(torch.equal(actual.argmax(-1), expected.argmax(-1)))
    assert agree == 2 * len(texts)  # every label (each token's, for the tagger) is PEFT's
