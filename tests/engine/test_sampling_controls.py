"""Presence and frequency penalties, logit_bias, min_tokens, stop_token_ids and sample groups do what their
definitions say: the engine's tokens and logprobs equal a reference that applies the definitions to PEFT's
uncached forward, written here independently of the engine's code."""

from __future__ import annotations

import pytest

from server.engine.request import FinishReason, GenerationRequest, SamplingParams
from tests.support.engine import make_engine, request, run_to_completion, upload_folder
from tests.support.equivalence import PROMPTS
from tests.support.reference import load_reference
from tests.support.reference import sampling_controls_reference as reference

MAX_NEW = 8


@pytest.fixture(scope="module")
def prefix_adapter(tiny_llama_dir, adapter_factory):
    return adapter_factory(tiny_llama_dir, "PREFIX_TUNING", num_virtual_tokens=9)


@pytest.fixture(scope="module")
def engine(tiny_llama_dir, prefix_adapter):
    engine = make_engine(tiny_llama_dir, block_size=4, num_kv_blocks=256, max_num_batched_tokens=32)
    upload_folder(engine, "prefix", prefix_adapter)
    return engine


def serve(engine, rid: str, ids, task=None, **sampling):
    handle = engine.add_request(request(rid, ids, MAX_NEW, task, logprobs=0, **sampling))
    run_to_completion(engine)
    outputs = list(handle.outputs(timeout=5))
    tokens = [t for out in outputs for t in out.new_token_ids]
    return tokens, [lp.logprob for out in outputs for lp in out.new_logprobs], outputs[-1]


@pytest.mark.parametrize("task", [None, "prefix"])
def test_presence_frequency_penalties_and_logit_bias_follow_their_definitions(
    engine, tiny_llama_dir, prefix_adapter, task
):
    model = load_reference(tiny_llama_dir, prefix_adapter if task else None)
    ids = engine.tokenizer(PROMPTS[0]).input_ids
    plain, _, _ = serve(engine, f"plain-{task}", ids, task)
    # +12 lifts a token far above the others (logits within ~7): it is taken again until its count outweighs it
    bias = ((plain[1], -3.0), (plain[0] + 1, 12.0))
    params = SamplingParams(max_new_tokens=MAX_NEW, presence_penalty=0.8, frequency_penalty=1.3, logit_bias=bias)
    tokens, logprobs, _ = serve(
        engine, f"penalized-{task}", ids, task, presence_penalty=0.8, frequency_penalty=1.3, logit_bias=bias
    )
    expected, expected_logprobs = reference(model, ids, params, engine.eos_token_ids)
    assert tokens == expected
    assert logprobs == pytest.approx(expected_logprobs, abs=1e-4)
    assert tokens != plain  # the controls changed the output, so the comparison above means something


def test_sampled_logprobs_are_of_the_tempered_distribution(engine, tiny_llama_dir):
    model = load_reference(tiny_llama_dir, None)
    ids = engine.tokenizer(PROMPTS[1]).input_ids
    sampling = dict(do_sample=True, temperature=0.7, top_k=50, seed=3, frequency_penalty=0.5)
    tokens, logprobs, _ = serve(engine, "sampled", ids, **sampling)
    params = SamplingParams(max_new_tokens=MAX_NEW, **sampling)
    _, expected = reference(model, ids, params, engine.eos_token_ids, chosen=tokens)
    assert logprobs == pytest.approx(expected, abs=1e-4)  # top-k cuts the draw, not the reported distribution


def test_min_tokens_holds_eos_back_and_stop_token_ids_end_generation(engine):
    ids = engine.tokenizer(PROMPTS[2]).input_ids
    eos = min(engine.eos_token_ids)
    # A huge bias makes EOS the greedy choice at every step: only min_tokens keeps it out
    tokens, _, last = serve(engine, "min", ids, logit_bias=((eos, 100.0),), min_tokens=3)
    assert len(tokens) == 4 and eos not in tokens[:3] and tokens[3] == eos
    assert last.finish_reason is FinishReason.EOS
    plain, _, _ = serve(engine, "plain-stop", ids)
    stop = plain[2]
    tokens, _, last = serve(engine, "stop-id", ids, stop_token_ids=(stop,))
    assert tokens == plain[: plain.index(stop) + 1] and last.finish_reason is FinishReason.EOS
    assert not last.new_text.endswith(engine.tokenizer.decode([stop]))  # its text is not produced
    tokens, _, _ = serve(engine, "stop-held", ids, stop_token_ids=(stop,), min_tokens=MAX_NEW)
    assert len(tokens) == MAX_NEW and stop not in tokens


def _group(prefix: str, n: int, ids, **sampling) -> list[GenerationRequest]:
    return [
        GenerationRequest(f"{prefix}-{i}", tuple(ids), SamplingParams(max_new_tokens=MAX_NEW, **sampling), group=prefix)
        for i in range(n)
    ]


def test_samples_of_one_prompt_share_its_blocks_and_are_reproducible(tiny_llama_dir):
    runs = []
    for _ in range(2):
        engine = make_engine(tiny_llama_dir, block_size=4, num_kv_blocks=256)
        ids = (engine.tokenizer(PROMPTS[1]).input_ids * 3)[:13]  # 3 full blocks before the last token
        requests = [
            GenerationRequest(
                f"s-{i}",
                tuple(ids),
                SamplingParams(max_new_tokens=MAX_NEW, do_sample=True, temperature=1.0, seed=40 + i),
                group="s",
            )
            for i in range(4)
        ]
        handles = [engine.add_request(r) for r in requests]
        run_to_completion(engine)
        runs.append([h.result(timeout=5)[0] for h in handles])
        # the first computed the prompt; the other three found its 12 full-block tokens in the cache
        assert engine.prefix_cache.num_hit_tokens == 3 * 12
    assert runs[0] == runs[1]  # seeds make the samples reproducible
    assert len({tuple(tokens) for tokens in runs[0]}) == 4  # and independent: distinct with temperature
    greedy = _group("g", 3, ids)
    handles = [engine.add_request(r) for r in greedy]
    run_to_completion(engine)
    assert len({tuple(h.result(timeout=5)[0]) for h in handles}) == 1


def test_bad_token_ids_in_sampling_controls_are_refused(engine):
    from server.engine.errors import RequestValidationError

    vocab = engine.registry.shape.vocab_size
    cases = [("logit_bias", ((vocab, 1.0),)), ("stop_token_ids", (-1,))]
    for field, value in cases:
        with pytest.raises(RequestValidationError) as raised:
            engine.add_request(request(f"bad-{field}", [1, 2], 4, **{field: value}))
        assert raised.value.param == field
