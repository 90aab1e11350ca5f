"""One short real run of the cold-load benchmark on a tiny Llama: both kinds of round run, the cold requests are
served, and the streams' inter-token gaps inside the window are measured and compared."""

from __future__ import annotations

import json

from loadtest.cold_load_bench import main


def test_streams_are_measured_with_and_without_cold_loads(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "cold.json"
    argv = [
        "--model",
        str(tiny_llama_dir),
        "--streams",
        "3",
        "--cold-tasks",
        "3",
        "--virtual-tokens",
        "8",
        "--new-tokens",
        "96",
        "--interval-s",
        "0.01",
        "--rounds",
        "1",
        "--json",
        str(out),
    ]
    assert main(argv) == 0  # nothing failed
    results = json.loads(out.read_text())
    rounds = results["rounds"]
    assert [r["with_cold_loads"] for r in rounds] == [False, True]
    assert all(r["num_gaps"] > 0 and r["itl_p99_ms"] >= r["itl_p50_ms"] > 0 for r in rounds)
    assert rounds[0]["cold_first_token_p50_ms"] is None and rounds[1]["cold_first_token_p50_ms"] > 0
    assert set(results["summary"]) >= {"p50_ratio", "p99_ratio"}
    assert "ITL with / without cold loads" in capsys.readouterr().out
