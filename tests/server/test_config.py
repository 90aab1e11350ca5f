"""server/config.py: engine options (scheduling policy, prefix caching) and the store's place from flags and the
environment, validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from prompt_store.store_config import S3Location
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


def test_the_store_is_a_directory_or_an_s3_url():
    local = load_config(flags={"store": "/srv/prompts"}, environ={"PROMPTSWAP_S3_ENDPOINT": "http://ignored"})
    assert (local.store.directory, local.store.s3, local.audit_log_path) == (
        Path("/srv/prompts"),
        None,
        Path("/srv/prompts/audit.log"),
    )
    environ = {"PROMPTSWAP_STORE": "s3://prompt-bucket/team/prompts/", "PROMPTSWAP_S3_ENDPOINT": "http://127.0.0.1:9"}
    shared = load_config(flags={"cache_dir": Path("/cache")}, environ=environ)
    assert shared.store.s3 == S3Location("prompt-bucket", "team/prompts", "http://127.0.0.1:9")
    assert shared.store.location == "s3://prompt-bucket/team/prompts"
    assert shared.audit_log_path == Path("/cache/audit.log")  # the process's own file stays on its disk
    assert load_config(flags={"store": "s3://prompt-bucket"}, environ={}).store.s3 == S3Location("prompt-bucket")
    for bad in ("s3://", "s3://Bad_Bucket/p", "s3://prompt-bucket/a//b"):
        with pytest.raises(ConfigError, match="--store"):
            load_config(flags={"store": bad}, environ={})


def test_a_shared_store_is_polled_every_half_second_unless_set():
    assert load_config(flags={}, environ={}).store.poll_interval_s == 0.5
    environ = {"PROMPTSWAP_STORE_POLL_INTERVAL_S": "0.1"}
    assert load_config(flags={}, environ=environ).store.poll_interval_s == 0.1
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ConfigError, match="poll_interval_s|PROMPTSWAP_STORE_POLL_INTERVAL_S"):
            load_config(flags={}, environ={"PROMPTSWAP_STORE_POLL_INTERVAL_S": bad})
