"""The tree stays formatted, lint-clean and typed: ruff and mypy with the configuration in pyproject.toml.

Fix a failure with `ruff format .` and `ruff check --fix .` (then by hand), or by fixing the types mypy reports.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def _assert_clean(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"{' '.join(map(str, result.args[2:]))} failed:\n{result.stdout}{result.stderr}"


def test_the_tree_is_formatted():
    _assert_clean(_run("ruff", "format", "--check", "."))


def test_the_tree_is_lint_clean():
    _assert_clean(_run("ruff", "check", "."))


@pytest.mark.slow  # about 40 s from a cold cache
def test_the_product_packages_type_check():
    _assert_clean(_run("mypy"))  # server, prompt_store, kernels: [tool.mypy] in pyproject.toml
