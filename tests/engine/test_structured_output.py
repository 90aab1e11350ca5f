"""response_format in the engine: every constrained output is a JSON document valid against its schema, greedy
constrained tokens are the argmax of PEFT's uncached forward among the tokens the grammar allows (a reference
matcher built here, not the engine's), and requests without a grammar beside them are untouched."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
import xgrammar as xgr

from server.engine.errors import RequestValidationError
from server.engine.request import FinishReason, ResponseFormat
from server.engine.structured_output import allowed_tokens, unpack_on_device
from tests.support.engine import make_engine, request, run_to_completion, upload_folder
from tests.support.equivalence import PROMPTS
from tests.support.reference import forward_logits, load_reference

# Bounded schemas: a random model's greedy choice among allowed tokens then always reaches the end.
SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 10},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "label": {"enum": ["positive", "negative", "neutral"]},
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3},
        },
        "required": ["label", "ok", "tags"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "point": {
                "type": "object",
                "properties": {
                    "x": {"type": "integer", "minimum": -5, "maximum": 5},
                    "y": {"type": "integer", "minimum": -5, "maximum": 5},
                },
                "required": ["x", "y"],
                "additionalProperties": False,
            },
            "note": {"anyOf": [{"type": "string", "maxLength": 6}, {"type": "null"}]},
        },
        "required": ["point", "note"],
        "additionalProperties": False,
    },
]
MAX_NEW = 80
JSON_PROMPTS = [*PROMPTS, "Reply in JSON:", "A user record", "Classify this review: great", "Where is the point?"]


def schema_format(schema: dict) -> ResponseFormat:
    return ResponseFormat("json_schema", json.dumps(schema))


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir, adapter_factory):
    return {
        "prompt": adapter_factory(tiny_llama_dir, "PROMPT_TUNING"),
        "prefix": adapter_factory(tiny_llama_dir, "PREFIX_TUNING", num_virtual_tokens=9),
    }


@pytest.fixture(scope="module")
def engine(tiny_llama_dir, adapters):
    engine = make_engine(tiny_llama_dir, block_size=4, num_kv_blocks=1024, max_num_batched_tokens=256)
    for name, folder in adapters.items():
        upload_folder(engine, name, folder)
    return engine


def collect(handle) -> tuple[list[int], str, object]:
    outputs = list(handle.outputs(timeout=5))
    return [t for out in outputs for t in out.new_token_ids], "".join(out.new_text for out in outputs), outputs[-1]


@pytest.mark.parametrize("vocab", [49152, 1003])
def test_unpacked_masks_equal_xgrammars_own_apply(vocab):
    words = (vocab + 31) // 32
    bitmask = torch.randint(
        -(2**31), 2**31 - 1, (5, words), dtype=torch.int32, generator=torch.Generator().manual_seed(0)
    )
    logits = torch.randn(5, vocab)
    expected = logits.clone()
    xgr.apply_token_bitmask_inplace(expected, bitmask)
    # the host path allowed_tokens takes on the CPU, and the accelerator's path, run here on the CPU
    for path, allowed in [
        ("host", allowed_tokens(bitmask, vocab, torch.device("cpu"))),
        ("device", unpack_on_device(bitmask, vocab)),
    ]:
        assert torch.equal(logits.masked_fill(~allowed, float("-inf")), expected), path


def test_every_constrained_output_is_valid_json_of_its_schema_in_a_mixed_batch(engine):
    """3 schemas × 8 prompts × (greedy, sampled) = 48 documents, on the base model and both tasks, with free-text
    requests in the same batches; the free-text ones equal their outputs served alone."""
    tokenizer = engine.tokenizer
    free_alone = {}
    for i, prompt in enumerate(PROMPTS[:4]):
        handle = engine.add_request(request(f"alone-{i}", tokenizer(prompt).input_ids, 12, "prefix"))
        run_to_completion(engine)
        free_alone[i] = collect(handle)[0]
    handles = {}
    tasks = [None, "prompt", "prefix"]
    for s, schema in enumerate(SCHEMAS):
        for p, prompt in enumerate(JSON_PROMPTS):
            for sampled in (False, True):
                rid = f"json-{s}-{p}-{int(sampled)}"
                sampling = {"do_sample": True, "temperature": 1.0, "seed": p} if sampled else {}
                ids = tokenizer(prompt).input_ids
                task = tasks[(s + p) % 3]
                handles[rid] = (
                    schema,
                    engine.add_request(
                        request(rid, ids, MAX_NEW, task, response_format=schema_format(schema), **sampling)
                    ),
                )
        for i, prompt in enumerate(PROMPTS[:4]):
            handles[f"free-{s}-{i}"] = (
                i,
                engine.add_request(request(f"free-{s}-{i}", tokenizer(prompt).input_ids, 12, "prefix")),
            )
        engine.step()  # the next schema's requests join while these run
    run_to_completion(engine)
    documents = 0
    for rid, (what, handle) in handles.items():
        tokens, text, last = collect(handle)
        if rid.startswith("free"):
            assert tokens == free_alone[what], rid
            continue
        assert last.finish_reason is FinishReason.EOS, (rid, text)
        jsonschema.validate(json.loads(text), what)
        documents += 1
    assert documents == 48


def test_greedy_constrained_tokens_are_peft_argmax_among_allowed_tokens(engine, tiny_llama_dir, adapters):
    """The reference walks its own xgrammar matcher over PEFT's uncached logits; the engine's tokens and logprobs
    (log_softmax of the masked logits) must be the same."""
    info = xgr.TokenizerInfo.from_huggingface(
        engine.tokenizer, vocab_size=engine.registry.shape.vocab_size, stop_token_ids=sorted(engine.eos_token_ids)
    )
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    for task, schema in [(None, SCHEMAS[0]), ("prefix", SCHEMAS[2]), ("prompt", SCHEMAS[1])]:
        ids = engine.tokenizer(PROMPTS[1]).input_ids
        handle = engine.add_request(
            request(f"ref-{task}", ids, MAX_NEW, task, response_format=schema_format(schema), logprobs=0)
        )
        run_to_completion(engine)
        outputs = list(handle.outputs(timeout=5))
        tokens = [t for out in outputs for t in out.new_token_ids]
        logprobs = [lp.logprob for out in outputs for lp in out.new_logprobs]

        model = load_reference(tiny_llama_dir, adapters[task] if task else None)
        matcher = xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(schema), any_whitespace=False))
        bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
        sequence, expected, expected_logprobs = list(ids), [], []
        while not matcher.is_terminated() and len(expected) < MAX_NEW:
            logits = forward_logits(model, sequence)[-1].clone().unsqueeze(0)
            matcher.fill_next_token_bitmask(bitmask)
            xgr.apply_token_bitmask_inplace(logits, bitmask)
            token = int(logits.argmax())
            expected.append(token)
            expected_logprobs.append(float(logits.log_softmax(-1)[0, token]))
            assert matcher.accept_token(token)
            sequence.append(token)
        assert tokens == expected, task
        assert logprobs == pytest.approx(expected_logprobs, abs=1e-4)
        unconstrained = engine.add_request(request(f"ref-free-{task}", ids, len(tokens), task))
        run_to_completion(engine)
        assert collect(unconstrained)[0] != tokens  # the mask changed the output: the comparison means something


def test_json_object_gives_an_object(engine):
    """Any object: a strong bias towards `}` makes the random model close it at once."""
    close = engine.tokenizer.convert_tokens_to_ids("}")
    handle = engine.add_request(
        request(
            "object",
            engine.tokenizer(PROMPTS[0]).input_ids,
            16,
            response_format=ResponseFormat("json_object"),
            logit_bias=((close, 30.0),),
        )
    )
    run_to_completion(engine)
    _, text, last = collect(handle)
    assert last.finish_reason is FinishReason.EOS and isinstance(json.loads(text), dict), text


@pytest.mark.parametrize(
    "fields, param, message",
    [
        (
            {"response_format": ResponseFormat("json_schema", '{"type": "nonsense"}')},
            "response_format",
            'Unsupported type "nonsense"',
        ),
        ({"response_format": ResponseFormat("json_schema", "[1]")}, "response_format", "should be an object"),
        ({"response_format": ResponseFormat("json_object"), "min_tokens": 2}, "min_tokens", "min_tokens"),
        ({"response_format": ResponseFormat("json_object"), "ignore_eos": True}, "ignore_eos", "ignore_eos"),
    ],
)
def test_unusable_formats_are_refused_naming_the_field_and_pin_nothing(engine, fields, param, message):
    pins = dict(engine.registry._pins)
    with pytest.raises(RequestValidationError) as raised:
        engine.add_request(request("bad", [1, 2, 3], 8, "prompt", **fields))
    assert raised.value.param == param and message in str(raised.value)
    assert not engine.has_work() and engine.registry._pins == pins
