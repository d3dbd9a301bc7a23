"""The `pgwarden` command line: `run --check-config`, exit codes, and passing through."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest
import yaml

from agent.__main__ import main

VALID = {
    "name": "pg-0",
    "cluster": "demo",
    "run_dir": "/run/pgwarden",
    "dcs": {"kind": "etcd", "etcd": {"endpoints": ["http://127.0.0.1:2379"]}},
    "postgresql": {"data_dir": "/var/lib/postgresql/data", "superuser": {"password": "su-XYZ"}},
    "api": {"token": "tok-SECRET"},
}


@pytest.fixture(autouse=True)
def _no_pgwarden_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads os.environ; a PGWARDEN_* variable of the test runner must not leak in."""
    for name in list(os.environ):
        if name.startswith("PGWARDEN_") or name in ("POD_NAME", "POD_IP", "POD_NAMESPACE"):
            monkeypatch.delenv(name)


def config_file(tmp_path: Path, document: object) -> str:
    path = tmp_path / "pgwarden.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return str(path)


def test_check_config_prints_the_effective_settings_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", "--config", config_file(tmp_path, VALID), "--check-config"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    effective = yaml.safe_load(out)
    assert effective["name"] == "pg-0"
    assert effective["timing"]["ttl_s"] == 6.0  # defaults are shown too
    assert effective["api"]["token"] == "********"
    assert effective["postgresql"]["superuser"]["password"] == "********"
    assert "tok-SECRET" not in out and "su-XYZ" not in out


def test_check_config_applies_environment_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGWARDEN_TIMING__TTL_S", "14")
    assert main(["run", "--config", config_file(tmp_path, VALID), "--check-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["timing"]["ttl_s"] == 14.0


def test_the_config_file_may_be_named_by_pgwarden_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGWARDEN_CONFIG", config_file(tmp_path, VALID))
    assert main(["run", "--check-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["cluster"] == "demo"


def test_an_invalid_config_exits_2_and_names_every_bad_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = {**VALID, "name": "Bad_Name", "timing": {"ttl_s": 3}}
    code = main(["run", "--config", config_file(tmp_path, document), "--check-config"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "name: must be a DNS label" in err
    assert "timing.ttl_s: must be >= 4" in err
    assert "tok-SECRET" not in err and "su-XYZ" not in err


def test_run_with_an_invalid_config_exits_2_before_starting_the_agent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without --check-config a valid file would start the agent; an invalid one must stop
    # here, with nothing created (run_dir points into tmp_path to make that visible).
    run_dir = tmp_path / "run"
    document = {**VALID, "run_dir": str(run_dir), "dcs": {"kind": "etcd"}}
    assert main(["run", "--config", config_file(tmp_path, document)]) == 2
    assert "dcs.etcd: is required when dcs.kind is etcd" in capsys.readouterr().err
    assert not run_dir.exists()


def test_a_missing_config_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", "/nonexistent/pgwarden.yaml", "--check-config"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: pgwarden" in capsys.readouterr().err


def test_an_unknown_option_of_run_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_ctl_receives_its_arguments_unparsed(capsys: pytest.CaptureFixture[str]) -> None:
    # `--url` is ctl's own option; pgwarden's parser must not claim or reject it.
    assert main(["ctl", "--url", "http://127.0.0.1:1", "--help"]) == 0
    assert "--url" in capsys.readouterr().out


def test_version_prints_the_installed_package_version_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out == f"pgwarden {importlib.metadata.version('pgwarden')}\n"


def test_check_config_shows_the_effective_api_url_when_connect_url_is_unset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = {"token": "tok-SECRET", "listen_host": "127.0.0.2", "port": 8010}  # no connect_url
    document = {**VALID, "api": api}
    assert main(["run", "--config", config_file(tmp_path, document), "--check-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["api"]["connect_url"] == "http://127.0.0.2:8010"
