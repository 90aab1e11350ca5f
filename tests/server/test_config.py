"""server/config.py: the engine's scheduling policy, from the environment, validated."""

from __future__ import annotations

import pytest

from server.config import ConfigError, EngineConfig, load_config


def test_the_scheduling_policy_is_fair_unless_set_to_fcfs():
    assert load_config(flags={}, environ={}).engine.scheduling_policy == "fair"
    config = load_config(flags={}, environ={"PROMPTSWAP_SCHEDULING_POLICY": "fcfs"})
    assert config.engine.scheduling_policy == "fcfs"
    with pytest.raises(ConfigError, match="scheduling_policy"):
        load_config(flags={}, environ={"PROMPTSWAP_SCHEDULING_POLICY": "lottery"})
    with pytest.raises(ConfigError, match="fair, fcfs"):
        EngineConfig(scheduling_policy="FAIR")
