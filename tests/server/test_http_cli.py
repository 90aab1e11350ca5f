"""The command line's own failures: bad configuration exits 2, client errors exit 1 with the reason."""

from __future__ import annotations

from test_http_fake_engine import free_port_url

from server.cli import main


def test_invalid_serve_configuration_exits_2_with_the_reason(capsys):
    assert main(["serve", "--port", "70000"]) == 2
    assert "port must be in 1..65535" in capsys.readouterr().err


def test_client_commands_report_what_failed(tmp_path, capsys):
    assert main(["upload", "geo", str(tmp_path), "--url", free_port_url(), "--admin-token", "some-token-value"]) == 1
    assert f"cannot read {tmp_path / 'adapter_config.json'}" in capsys.readouterr().err
    assert main(["list", "--url", free_port_url(), "--admin-token", "some-token-value"]) == 1
    assert "cannot reach http://127.0.0.1:" in capsys.readouterr().err


def test_serve_cluster_refuses_several_replicas_on_a_directory_store(tmp_path, capsys):
    assert main(["serve-cluster", "--replicas", "2", "--store", str(tmp_path / "store")]) == 2
    assert "--replicas 2 needs a shared prompt store" in capsys.readouterr().err
    assert main(["serve-cluster", "--replicas", "0", "--store", str(tmp_path / "store")]) == 2
    assert "--replicas must be at least 1" in capsys.readouterr().err
