"""Fixtures of the scheduler tests (test_scheduler.py, test_fair_scheduling.py, test_prefix_caching.py): one
registry of real PEFT files per module, and Sims over it that are closed after each test."""

from __future__ import annotations

import pytest

from tests.support.scheduler_sim import Sim, make_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return make_registry(tmp_path_factory.mktemp("peft"))


@pytest.fixture
def sim(registry):
    """`sim(**options) -> Sim` over the module's registry; every Sim is closed (its sequences aborted) at the end,
    and the registry must then hold no pins."""
    sims = []

    def make(**options) -> Sim:
        sims.append(Sim(registry, **options))
        return sims[-1]

    yield make
    for s in sims:
        s.close()
    assert registry.stats().num_pinned_versions == 0, "a test left registry refs pinned"
