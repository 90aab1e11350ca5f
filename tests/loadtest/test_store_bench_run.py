"""One short real run of the prompt-store benchmark against real servers of a tiny Llama: uploads are timed and
served by the version they created, and a store built for the start-up part opens and serves cold tasks."""

from __future__ import annotations

import json

from loadtest.store_bench import main


def test_uploads_and_startup_are_measured(tiny_llama_dir, tmp_path):
    out = tmp_path / "store_bench.json"
    argv = [
        "--model",
        str(tiny_llama_dir),
        "--uploads",
        "3",
        "--virtual-tokens",
        "4",
        "--startup-tasks",
        "6",
        "--cold-tasks",
        "2",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert {(u["peft_type"], u["num_virtual_tokens"]) for u in results["uploads"]} == {
        ("PROMPT_TUNING", 4),
        ("PREFIX_TUNING", 4),
    }
    for upload in results["uploads"]:
        assert len(upload["put_samples_ms"]) == 3
        assert 0 < upload["put"]["p50_ms"] <= upload["put"]["max_ms"] <= upload["servable"]["max_ms"]
    startup = results["startup"]
    assert startup["num_tasks"] == 6 and "6 tasks loaded" in startup["store_load"]
    assert set(startup["first_token"]) == {
        "base model",
        "prompt tuning, cold",
        "prompt tuning, warm",
        "prefix tuning, cold",
        "prefix tuning, warm",
    }
