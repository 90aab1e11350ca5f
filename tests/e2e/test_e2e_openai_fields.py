"""The OpenAI fields of issue 15 through the official `openai` client against a real server: logprobs equal
log_softmax of PEFT's uncached forward, n samples are distinct and reproducible, penalties and logit_bias follow
their definitions (a reference written from them), response_format output validates against its schema over many
concurrent prompts, and a field the server cannot honour is a 400 naming it."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

from loadtest.peft_reference import eos_token_ids
from server.engine.request import SamplingParams
from tests.e2e.server_process import upload_adapter
from tests.support.reference import forward_logits, load_reference, sampling_controls_reference

ADAPTERS = {"prompt": ("PROMPT_TUNING", {}), "prefix": ("PREFIX_TUNING", {})}  # as test_e2e_generation trains
PROMPT = "The capital of France is"
MAX_NEW_TOKENS = 6
TOP = 5
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "rank": {"type": "integer", "minimum": 1, "maximum": 99},
        "kind": {"enum": ["capital", "town"]},
    },
    "required": ["city", "rank", "kind"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def api(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tasks(server, client, adapters):
    for task, adapter_dir in adapters.items():
        response = upload_adapter(client, server, task, adapter_dir)
        assert response.status_code == 201, response.text
    return adapters


def reference_model(tiny_llama_dir, tasks, task):
    return load_reference(tiny_llama_dir, tasks[task] if task else None)


def reference(peft, ids: list[int], **sampling) -> tuple[list[int], list[float]]:
    """Greedy tokens and their logprobs under the sampling controls, stopping on the model's EOS as served."""
    return sampling_controls_reference(peft, ids, SamplingParams(**sampling), eos_token_ids(peft))


def top_values(logits, k: int) -> list[float]:
    return logits.log_softmax(-1).topk(k).values.tolist()


def completion_alternatives(logits, chosen: int, k: int) -> list[float]:
    """A completions `top_logprobs` entry, as OpenAI's: the k best, and the chosen token when it is not among
    them. Best first."""
    logprobs = logits.log_softmax(-1)
    top = logprobs.topk(k)
    values = top.values.tolist() + ([] if chosen in top.indices.tolist() else [float(logprobs[chosen])])
    return sorted(values, reverse=True)


@pytest.mark.parametrize("task", [None, "prefix"])
def test_completion_logprobs_with_echo_are_log_softmax_of_pefts_forward(api, tokenizer, tiny_llama_dir, tasks, task):
    completion = api.completions.create(
        model=task or api.models.list().data[0].id,
        prompt=PROMPT,
        max_tokens=MAX_NEW_TOKENS,
        temperature=0,
        logprobs=TOP,
        echo=True,
    )
    ids = tokenizer(PROMPT).input_ids
    peft = reference_model(tiny_llama_dir, tasks, task)
    choice = completion.choices[0]
    logprobs = choice.logprobs
    generated = logprobs.token_logprobs[len(ids) :]
    expected_tokens, expected = reference(peft, ids, max_new_tokens=MAX_NEW_TOKENS)
    assert len(generated) == len(expected_tokens)
    assert generated == pytest.approx(expected, abs=1e-4)
    assert choice.text == PROMPT + tokenizer.decode(expected_tokens)
    # the prompt's own tokens: the first has none, each later one the log_softmax of the logits before it
    prompt_logits = forward_logits(peft, ids)
    assert logprobs.token_logprobs[0] is None
    for i in range(1, len(ids)):
        assert logprobs.token_logprobs[i] == pytest.approx(
            float(prompt_logits[i - 1].log_softmax(-1)[ids[i]]), abs=1e-4
        )
        assert sorted(logprobs.top_logprobs[i].values(), reverse=True) == pytest.approx(
            completion_alternatives(prompt_logits[i - 1], ids[i], TOP), abs=1e-4
        )
    sequence = ids + expected_tokens
    all_logits = forward_logits(peft, sequence)
    for step in range(len(expected_tokens)):
        alternatives = logprobs.top_logprobs[len(ids) + step]
        assert sorted(alternatives.values(), reverse=True) == pytest.approx(
            completion_alternatives(all_logits[len(ids) + step - 1], expected_tokens[step], TOP), abs=1e-4
        )


def test_chat_logprobs_are_log_softmax_of_pefts_forward(api, client, tiny_llama_dir, tasks):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = api.chat.completions.create(
        model="prompt", messages=messages, max_tokens=MAX_NEW_TOKENS, temperature=0, logprobs=True, top_logprobs=3
    )
    ids = client.post("/tokenize", json={"model": "prompt", "messages": messages}).json()["tokens"]
    peft = reference_model(tiny_llama_dir, tasks, "prompt")
    tokens, expected = reference(peft, ids, max_new_tokens=MAX_NEW_TOKENS)
    content = chat.choices[0].logprobs.content
    assert [entry.logprob for entry in content] == pytest.approx(expected, abs=1e-4)
    all_logits = forward_logits(peft, ids + tokens)
    for step, entry in enumerate(content):
        assert [alt.logprob for alt in entry.top_logprobs] == pytest.approx(
            top_values(all_logits[len(ids) + step - 1], 3), abs=1e-4
        )


def test_n_samples_are_distinct_with_temperature_and_reproducible_with_seed(api, tasks):
    runs = [
        api.completions.create(model="prompt", prompt=PROMPT, max_tokens=8, temperature=1.0, n=4, seed=11)
        for _ in range(2)
    ]
    texts = [[choice.text for choice in sorted(run.choices, key=lambda c: c.index)] for run in runs]
    assert texts[0] == texts[1]
    assert len(set(texts[0])) == 4
    assert runs[0].usage.completion_tokens == 4 * 8
    greedy = api.completions.create(model="prompt", prompt=PROMPT, max_tokens=8, temperature=0, n=3)
    assert len({choice.text for choice in greedy.choices}) == 1


def test_penalties_and_logit_bias_follow_their_definitions(api, tokenizer, tiny_llama_dir, tasks):
    ids = tokenizer(PROMPT).input_ids
    peft = reference_model(tiny_llama_dir, tasks, "prefix")
    plain, _ = reference(peft, ids, max_new_tokens=8)
    bias = ((plain[0], -4.0), (plain[1] + 7, 12.0))
    controls = dict(presence_penalty=0.7, frequency_penalty=1.1, logit_bias=bias)
    expected, expected_logprobs = reference(peft, ids, max_new_tokens=8, **controls)
    completion = api.completions.create(
        model="prefix",
        prompt=PROMPT,
        max_tokens=8,
        temperature=0,
        presence_penalty=0.7,
        frequency_penalty=1.1,
        logit_bias={str(token): value for token, value in bias},
        logprobs=0,
    )
    assert completion.choices[0].text == tokenizer.decode(expected)
    assert completion.choices[0].logprobs.token_logprobs == pytest.approx(expected_logprobs, abs=1e-4)
    assert expected != plain


def test_json_schema_output_validates_over_many_concurrent_prompts(api, tasks):
    prompts = [f"Record {i}: describe a city as JSON." for i in range(12)] + ["{", "Hello", "1 2 3", '{"city":']
    response_format = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}
    base_id = api.models.list().data[0].id

    def ask(i: int):
        model = [base_id, "prompt", "prefix"][i % 3]
        return api.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompts[i]}],
            max_tokens=60,
            temperature=0 if i % 2 else 1.0,
            seed=i,
            response_format=response_format,
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(len(prompts))))
    for answer in answers:
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    streamed = api.completions.create(
        model="prompt", prompt=PROMPT, max_tokens=60, stream=True, extra_body={"response_format": response_format}
    )
    jsonschema.validate(json.loads("".join(chunk.choices[0].text for chunk in streamed if chunk.choices)), SCHEMA)


@pytest.mark.parametrize(
    "fields, param",
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
            "response_format",
        ),
        ({"response_format": {"type": "json_object"}, "min_tokens": 2}, "min_tokens"),
        ({"suffix": "!"}, "suffix"),
        ({"best_of": 3}, "best_of"),
    ],
)
def test_fields_that_cannot_be_honoured_are_a_400_naming_them(api, tasks, fields, param):
    with pytest.raises(openai.BadRequestError) as raised:
        api.completions.create(model="prompt", prompt=PROMPT, max_tokens=4, extra_body=fields)
    assert raised.value.status_code == 400 and raised.value.body["param"] == param, raised.value.body
