"""Every prompt-learning type, in one mixed batch with base requests, equals PEFT's uncached forward on a tiny model of
each family the README lists as proven (tests/support/tiny_architectures.py). What start-up refuses, and the
sliding-window cap, are tested in tests/server/test_model_architecture.py."""

from __future__ import annotations

import pytest

from tests.support.equivalence import assert_mixed_batch_matches_peft, mixed_cases
from tests.support.tiny_architectures import ARCHITECTURES

MAX_NEW = 8


@pytest.fixture(params=sorted(ARCHITECTURES))
def architecture_dir(request, smollm2_dir, tmp_path_factory):
    return ARCHITECTURES[request.param](smollm2_dir, tmp_path_factory.mktemp(request.param))


@pytest.mark.slow  # per architecture: trains 7 adapters and runs 10 PEFT references (~75 s on 2 busy cores)
def test_mixed_batch_matches_peft(architecture_dir, adapter_factory):
    assert_mixed_batch_matches_peft(architecture_dir, adapter_factory, mixed_cases(1), MAX_NEW, num_kv_blocks=128)
