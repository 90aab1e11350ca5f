"""One short real run of the comparison benchmark on a tiny Llama: every arm runs on the same requests, every
request gets exactly its tokens, and the report holds each arm, the ratios, the roofline, the chat workload's
prefix-cache figures and the plot."""

from __future__ import annotations

import json

from loadtest.comparison.cli import main

NUM_REQUESTS, NEW_TOKENS = 4, 3


def test_all_arms_run_and_the_results_hold_every_figure(tiny_llama_dir, tmp_path, capsys):
    argv = [
        "--model",
        str(tiny_llama_dir),
        "--requests",
        str(NUM_REQUESTS),
        "--concurrency",
        "4",
        "--new-tokens",
        str(NEW_TOKENS),
        "--tasks",
        "4",
        "--virtual-tokens",
        "3",
        "--arm-a-requests",
        "2",
        "--chat-requests",
        "8",
        "--chat-system-tokens",
        "40",
        "--chat-concurrency",
        "2",
        "--json",
        str(tmp_path / "comparison.json"),
        "--plot",
        str(tmp_path / "comparison.png"),
    ]
    assert main(argv) == 0
    results = json.loads((tmp_path / "comparison.json").read_text())
    best = results["best"]
    assert set(best) == set("abcdefgh")
    assert best["a"]["num_tokens"] == 2 * NEW_TOKENS  # arm (a) is timed on --arm-a-requests only
    assert all(best[arm]["num_tokens"] == NUM_REQUESTS * NEW_TOKENS for arm in "bcdef")
    assert all(best[arm]["num_tokens"] == 8 * NEW_TOKENS for arm in "gh")
    cached, uncached = best["g"]["extra"], best["h"]["extra"]
    assert cached["shared_prefix_tokens"] >= 32 and cached["hit_rate"] > 0 and uncached["hit_rate"] == 0
    assert cached["computed_prompt_tokens_per_request"] < uncached["computed_prompt_tokens_per_request"]
    assert uncached["computed_prompt_tokens_per_request"] == uncached["prompt_tokens_per_request"]
    assert set(results["chat"]) == {
        "g shared-prefix hit rate",
        "h/g ttft p50",
        "h/g ttft p50, repeated contexts",
        "g/h tok/s",
    }
    assert all(result["tokens_per_s"] > 0 for result in best.values())
    assert set(results["ratios"]) == {"e/a", "e/b", "e/c", "e/d", "e/f"}
    roofline = results["roofline"]
    assert roofline["tokens_per_s"] > 0 and roofline["linear_floor_tokens_per_s"] > 0
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    report = capsys.readouterr().out
    assert "(e)/(d)" in report and "target >= 0.97" in report and "linear floor" in report
    assert "chat: TTFT p50 without / with prefix caching" in report
