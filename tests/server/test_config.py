"""server/config.py: engine options (scheduling policy, prefix caching) from flags and the environment, validated."""

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


def test_prefix_caching_is_on_unless_the_flag_or_the_environment_turns_it_off():
    import argparse

    from server.config import add_serve_flags

    assert load_config(flags={}, environ={}).engine.enable_prefix_caching
    assert not load_config(flags={}, environ={"PROMPTSWAP_PREFIX_CACHING": "0"}).engine.enable_prefix_caching
    parser = argparse.ArgumentParser()
    add_serve_flags(parser)
    flags = vars(parser.parse_args(["--no-prefix-caching"]))
    assert not load_config(flags=flags, environ={}).engine.enable_prefix_caching
    assert load_config(flags=vars(parser.parse_args([])), environ={}).engine.enable_prefix_caching
