"""The task name rule, and that a valid name is always one safe path component."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prompt_store.errors import InvalidTaskNameError
from prompt_store.task_names import is_valid_task_name, validate_task_name

BASE = "smollm2-135m-instruct"


@pytest.mark.parametrize("name", ["a", "A1", "summarize-v2", "qa_en.fr", "9", "x" * 64, "a..b", "smollm2-135m"])
def test_valid_names(name):
    assert validate_task_name(name, BASE) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-a",
        "_a",
        ".a",
        ".",
        "..",
        "a/b",
        "../etc",
        "a\\b",
        "a b",
        "x" * 65,
        "ok\n",
        "\nok",
        "é",
        "a\x00",
        None,
        7,
        b"ab",
    ],
)
def test_invalid_names_say_the_rule(name):
    with pytest.raises(InvalidTaskNameError, match="1 to 64 characters"):
        validate_task_name(name, BASE)


def test_base_model_id_is_taken():
    with pytest.raises(InvalidTaskNameError, match="base model's id"):
        validate_task_name(BASE, BASE)


@given(st.text(max_size=80))
def test_valid_names_are_single_safe_path_components(name):
    if is_valid_task_name(name):
        assert "/" not in name and "\\" not in name and name not in (".", "..") and not name.startswith(".")
        assert name.isascii() and name.isprintable() and 1 <= len(name) <= 64
