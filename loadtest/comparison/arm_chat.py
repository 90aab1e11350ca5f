"""Arms (g) and (h): the chat workload (chat_workload.py) on promptswap's engine with prefix caching on and off.

A closed loop of `concurrency` requests in flight (a finished one is replaced at once), so later requests arrive
while earlier ones of the same task have already computed the system prompt. Time to first token counts from a
request's submission. The prompt tokens computed per request are the engine's queried minus reused tokens."""

from __future__ import annotations

import statistics
import time
from collections import deque

from loadtest.comparison.chat_workload import ChatRequest
from loadtest.comparison.results import ArmResult, decode_rate
from loadtest.loadgen.metrics import percentile
from server.engine.llm_engine import LLMEngine
from server.engine.request import GenerationRequest, RequestOutput, SamplingParams


def run_chat(
    engine: LLMEngine, requests: list[ChatRequest], new_tokens: int, concurrency: int, arm: str, description: str
) -> ArmResult:
    sampling = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    submitted = [0.0] * len(requests)
    token_times: list[list[float]] = [[] for _ in requests]
    num_live = 0

    def on_output(index: int, output: RequestOutput) -> None:
        nonlocal num_live
        token_times[index].extend([time.perf_counter()] * len(output.new_token_ids))
        num_live -= output.finished

    before = engine.stats()
    waiting = deque(requests)
    started = time.perf_counter()
    while waiting or num_live:
        while waiting and num_live < concurrency:
            request = waiting.popleft()
            submitted[request.index] = time.perf_counter()
            engine.add_request(
                GenerationRequest(f"{arm}{request.index}", request.prompt_token_ids, sampling, task=request.task),
                on_output=lambda output, index=request.index: on_output(index, output),
            )
            num_live += 1
        engine.step()
    wall_s = time.perf_counter() - started
    after = engine.stats()
    if any(len(times) != new_tokens for times in token_times):
        raise AssertionError(f"engine made {sorted({len(t) for t in token_times})} tokens per request")
    ttfts = [times[0] - submitted[i] for i, times in enumerate(token_times)]
    seen: set[str | None] = set()
    repeats_ttft = []  # requests whose context (task or base model) an earlier request already had
    for request in requests:
        if request.task in seen:
            repeats_ttft.append(ttfts[request.index])
        seen.add(request.task)
    queried = after.num_prefix_cache_queried_tokens - before.num_prefix_cache_queried_tokens
    hit = after.num_prefix_cache_hit_tokens - before.num_prefix_cache_hit_tokens
    repeats = len(requests) - len({r.task for r in requests})  # requests not the first of their context
    assert repeats == len(repeats_ttft)
    shared = requests[0].num_shared_tokens
    unique = statistics.mean(len(r.prompt_token_ids) - shared for r in requests)
    rate, batch = decode_rate(token_times, min(concurrency, len(requests)))
    extra = {
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "ttft_p50_repeat_context_s": percentile(repeats_ttft, 50),
        "repeat_context_requests": len(repeats_ttft),
        "prompt_tokens_per_request": statistics.mean(len(r.prompt_token_ids) for r in requests),
        "shared_prefix_tokens": shared,
        "unique_tokens_per_request": unique,
        "computed_prompt_tokens_per_request": (queried - hit) / len(requests),
        "hit_rate": hit / queried if queried else 0.0,
        # hits can only come from a context seen before: the share of those requests' shared prefix reused
        "shared_prefix_hit_rate_after_warm_up": hit / (repeats * shared) if repeats and shared else 0.0,
        "contexts": len({r.task for r in requests}),
        "base_requests": sum(r.task is None for r in requests),
        "concurrency": concurrency,
    }
    note = (
        f"TTFT p50 {extra['ttft_p50_s']:.2f} s, p99 {extra['ttft_p99_s']:.2f} s, p50 of the {len(repeats_ttft)} "
        f"requests of a context seen before {extra['ttft_p50_repeat_context_s']:.2f} s; prompt tokens computed per "
        f"request {extra['computed_prompt_tokens_per_request']:.1f} of {extra['prompt_tokens_per_request']:.1f} "
        f"({unique:.1f} unique); shared-prefix hit rate after warm-up "
        f"{extra['shared_prefix_hit_rate_after_warm_up']:.0%}"
    )
    return ArmResult(arm, description, len(requests), sum(map(len, token_times)), wall_s, rate, batch, note, extra)
