"""`LLMEngine.stats()` is the snapshot the loop thread took after its last step, published before that step's
outputs leave: a caller that has its request's last output never reads a snapshot that still runs it."""

from __future__ import annotations

from tests.support.engine import make_engine, request, run_to_completion


def test_a_finished_request_is_no_longer_running_in_the_stats_its_caller_reads(tiny_llama_dir):
    engine = make_engine(tiny_llama_dir)
    seen_at_finish = []

    def on_output(out):
        if out.finished:
            seen_at_finish.append((engine.stats().num_running, engine.stats().num_waiting))

    prompt = engine.tokenizer("Hello there").input_ids
    engine.add_request(request("a", prompt, 3), on_output=on_output)
    engine.add_request(request("b", prompt, 5), on_output=on_output)
    run_to_completion(engine)
    assert seen_at_finish == [(1, 0), (0, 0)]  # "b" still runs when "a" finishes; nothing runs when "b" does
