"""Classification tasks in the engine: SEQ_CLS and TOKEN_CLS adapters of every prompt-learning type give the logits
of PEFT's `PeftModelForSequenceClassification` / `PeftModelForTokenClassification` forward (float32, 1e-4
relative; the same argmax), in packed, chunked batches that mix several classification tasks with generation of
others, on tiny random Llama (GQA) and GPT-2."""

from __future__ import annotations

import pytest
import torch

from server.engine.errors import RequestValidationError
from server.engine.request import FinishReason, GenerationRequest, SamplingParams
from tests.support.classifiers import TEXTS, classifier_logits, load_classifier, train_classifier
from tests.support.engine import make_engine, request, run_to_completion, upload_folder
from tests.support.reference import base_greedy, peft_greedy

# task -> (task_type, peft_type, num_labels, options, subtask)
CASES = {
    "seq-prompt": ("SEQ_CLS", "PROMPT_TUNING", 2, {}, None),
    "seq-ptuning": ("SEQ_CLS", "P_TUNING", 3, {"encoder_hidden_size": 32}, None),
    "seq-ptuning-v2": ("SEQ_CLS", "PREFIX_TUNING", 2, {}, None),  # P-Tuning v2: prefix tuning, no projection
    "seq-prefix-proj": ("SEQ_CLS", "PREFIX_TUNING", 5, {"prefix_projection": True, "encoder_hidden_size": 32}, None),
    "seq-multitask": ("SEQ_CLS", "MULTITASK_PROMPT_TUNING", 3, {"num_tasks": 2}, 1),
    "tok-prompt": ("TOKEN_CLS", "PROMPT_TUNING", 4, {}, None),
    "tok-ptuning": ("TOKEN_CLS", "P_TUNING", 3, {"encoder_hidden_size": 32}, None),
    "tok-ptuning-v2": ("TOKEN_CLS", "PREFIX_TUNING", 5, {}, None),
    "tok-prefix-proj": ("TOKEN_CLS", "PREFIX_TUNING", 2, {"prefix_projection": True, "encoder_hidden_size": 32}, None),
    "tok-multitask": ("TOKEN_CLS", "MULTITASK_PROMPT_TUNING", 3, {"num_tasks": 2}, 1),
}
GENERATE_NEW = 6


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def arch(request, tiny_llama_dir, tiny_gpt2_dir, tmp_path_factory):
    base_dir = tiny_llama_dir if request.param == "llama" else tiny_gpt2_dir
    root = tmp_path_factory.mktemp(f"classifiers-{request.param}")
    adapters = {
        task: train_classifier(base_dir, task_type, peft_type, root / task, num_labels=n, seed=i, **options)
        for i, (task, (task_type, peft_type, n, options, _)) in enumerate(CASES.items())
    }
    return base_dir, adapters


@pytest.fixture(scope="module")
def served(arch, adapter_factory):
    base_dir, adapters = arch
    engine = make_engine(base_dir, block_size=4, num_kv_blocks=512, max_num_batched_tokens=16)
    for task, folder in adapters.items():
        upload_folder(engine, task, folder)
    generator = adapter_factory(base_dir, "PREFIX_TUNING")
    upload_folder(engine, "gen", generator)
    return engine, generator


def classify(task: str, rid: str, ids, subtask=None) -> GenerationRequest:
    return GenerationRequest(
        rid, tuple(ids), SamplingParams(max_new_tokens=1), task=task, subtask=subtask or 0, classify=True
    )


def test_logits_equal_pefts_in_batches_mixed_with_generation(arch, served):
    base_dir, adapters = arch
    engine, generator = served
    tokenizer = engine.tokenizer
    handles = {}
    for g, text in enumerate(TEXTS[:2]):  # generation of another task and of the base model, in the same steps
        ids = tokenizer(text).input_ids
        handles[f"gen-{g}"] = ("gen", ids, engine.add_request(request(f"gen-{g}", ids, GENERATE_NEW, "gen")))
        handles[f"base-{g}"] = (None, ids, engine.add_request(request(f"base-{g}", ids, GENERATE_NEW)))
    for task, (_, _, _, _, subtask) in CASES.items():
        for i, text in enumerate(TEXTS[:2]):
            ids = tokenizer(text).input_ids
            handles[f"{task}-{i}"] = (task, ids, engine.add_request(classify(task, f"{task}-{i}", ids, subtask)))
        engine.step()  # arrivals join running prefills and decodes
    run_to_completion(engine)
    hits = engine.prefix_cache.num_hit_tokens
    for task, (_, _, _, _, subtask) in CASES.items():  # again: sequence tasks start from the cached full blocks
        ids = tokenizer(TEXTS[0]).input_ids
        handles[f"{task}-again"] = (task, ids, engine.add_request(classify(task, f"{task}-again", ids, subtask)))
    run_to_completion(engine)

    references = {task: load_classifier(base_dir, adapters[task], CASES[task][0], CASES[task][2]) for task in CASES}
    num_classified = 0
    for rid, (task, ids, handle) in handles.items():
        outputs = list(handle.outputs(timeout=5))
        last = outputs[-1]
        if task is None or task == "gen":
            tokens = [t for out in outputs for t in out.new_token_ids]
            expected = (
                base_greedy(base_dir, ids, GENERATE_NEW)
                if task is None
                else peft_greedy(base_dir, generator, ids, GENERATE_NEW)
            )
            assert tokens == expected, rid
            continue
        task_type, _, num_labels, _, subtask = CASES[task]
        assert last.finish_reason is FinishReason.CLASSIFIED and last.new_token_ids == (), rid
        result = last.classification
        expected = classifier_logits(references[task], ids, subtask)
        actual = torch.tensor(result.logits)
        if task_type == "SEQ_CLS":
            actual = actual[0]
        assert result.per_token == (task_type == "TOKEN_CLS") and len(result.labels) == num_labels
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5, msg=rid)
        assert torch.equal(actual.argmax(-1), expected.argmax(-1)), rid
        num_classified += 1
    assert num_classified == 3 * len(CASES)
    assert engine.prefix_cache.num_hit_tokens > hits  # the repeated sequence-task inputs were served from the cache


def test_the_wrong_kind_of_task_for_a_request_is_refused_naming_the_kind(served):
    engine, _ = served
    ids = engine.tokenizer(TEXTS[0]).input_ids
    cases = [
        (request("gen-on-cls", ids, 4, "seq-prompt"), "classify-sequence"),
        (request("gen-on-tok", ids, 4, "tok-prompt"), "classify-tokens"),
        (classify("gen", "cls-on-gen", ids), "generate"),
        (GenerationRequest("cls-on-base", tuple(ids), SamplingParams(), classify=True), "base model"),
    ]
    for req, kind in cases:
        with pytest.raises(RequestValidationError) as raised:
            engine.add_request(req)
        assert raised.value.param == "model" and kind in str(raised.value), str(raised.value)
    assert not engine.has_work() and not engine.registry._pins
