"""The command line explains itself and refuses contradictory options before sending anything."""

from __future__ import annotations

import pytest

from loadtest.loadgen.cli import main
from tests.e2e.server_process import free_port


def test_help_explains_the_metrics_and_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in (
        "Open loop",
        "TTFT",
        "TPOT",
        "ITL",
        "goodput",
        "--rate",
        "--burstiness",
        "--concurrency",
        "--zipf",
        "--base-fraction",
        "--input-len",
        "--slo",
        "examples:",
    ):
        assert needle in text


@pytest.mark.parametrize(
    "argv",
    [
        [],  # neither --rate nor --concurrency
        ["--rate", "1", "--concurrency", "4"],
        ["--concurrency", "4", "--max-concurrency", "2"],
        ["--rate", "1", "--slo", "latency:5", "--tasks", "none", "--model", "m"],
        ["--rate", "1", "--input-len", "gauss:3", "--tasks", "none", "--model", "m"],
    ],
)
def test_contradictory_or_malformed_options_exit_with_usage(argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


def test_an_unreachable_server_is_reported_not_raised(capsys):
    assert main(["--url", f"http://127.0.0.1:{free_port()}", "--rate", "1", "--no-progress"]) == 1
    assert "cannot list models" in capsys.readouterr().err
