"""docker/prepare.py's pure part: merging the settings files and filling the per-pod values.
(The script as the container runs it, with directories and exec, is tested in
tests/integration/test_entrypoint.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.manifests import prepare_module

prepare = prepare_module()
POD = {"POD_NAME": "pg-2", "POD_IP": "10.1.2.3", "PGDATA": "/data/pgdata"}


def render(document: dict[str, Any], env: dict[str, str] = POD) -> dict[str, Any]:
    result: dict[str, Any] = prepare.render(document, env)
    return result


def test_later_files_merge_into_earlier_ones_key_by_key_and_replace_other_values() -> None:
    base = {"a": {"x": 1, "y": [1, 2]}, "b": "keep", "c": {"d": 1}}
    override = {"a": {"y": [3], "z": 2}, "c": "scalar"}
    assert prepare.merge(base, override) == {
        "a": {"x": 1, "y": [3], "z": 2},
        "b": "keep",
        "c": "scalar",
    }
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": "keep", "c": {"d": 1}}, "inputs unchanged"


def test_the_per_pod_values_are_filled_from_the_downward_api() -> None:
    out = render({"cluster": "c", "api": {"port": 8009}})
    assert out["name"] == "pg-2"
    assert out["postgresql"] == {"connect_host": "10.1.2.3", "data_dir": "/data/pgdata"}
    assert out["api"] == {"port": 8009, "connect_url": "http://10.1.2.3:8009"}


def test_the_filled_api_url_is_https_when_the_api_serves_tls() -> None:
    out = render({"api": {"tls": {"cert_file": "/t/tls.crt", "key_file": "/t/tls.key"}}})
    assert out["api"]["connect_url"] == "https://10.1.2.3:8008"
    from_env = render({}, {"POD_IP": "10.1.2.3", "PGWARDEN_API__TLS__CERT_FILE": "/t/c"})
    assert from_env["api"]["connect_url"].startswith("https://")


def test_explicit_settings_are_never_replaced() -> None:
    document = {
        "name": "fixed",
        "postgresql": {"connect_host": "db.example", "data_dir": "/elsewhere"},
        "api": {"connect_url": "https://pg-2.example:8443"},
    }
    assert render(document) == document


def test_an_ipv6_pod_address_is_bracketed_in_the_api_url_and_the_env_port_wins() -> None:
    out = render({}, {"POD_IP": "fd00::1:7", "PGWARDEN_API__PORT": "9000"})
    assert out["api"]["connect_url"] == "http://[fd00::1:7]:9000"
    assert out["postgresql"]["connect_host"] == "fd00::1:7"
    assert "name" not in out, "nothing to fill without POD_NAME"


def test_without_downward_api_variables_nothing_is_added() -> None:
    assert render({"cluster": "c"}, {}) == {"cluster": "c", "postgresql": {}}


@pytest.mark.parametrize(
    ("document", "env", "message"),
    [
        ({}, {"POD_IP": "not-an-ip"}, "POD_IP: must be an IP address"),
        ({"api": {"port": "8008"}}, {"POD_IP": "10.0.0.1"}, "api.port: must be an integer"),
        ({}, {"POD_IP": "10.0.0.1", "PGWARDEN_API__PORT": "x"}, "PGWARDEN_API__PORT"),
        ({"postgresql": ["a"]}, {}, "postgresql: must be a mapping"),
    ],
)
def test_unusable_input_is_refused_with_the_field_and_the_rule(
    document: dict[str, Any], env: dict[str, str], message: str
) -> None:
    with pytest.raises(prepare.PrepareError, match=message):
        render(document, env)


def test_a_directory_source_merges_its_yaml_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "10-dcs.yaml").write_text("dcs: {kind: etcd}\ncluster: second\n")
    (tmp_path / "00-base.yaml").write_text("cluster: first\nrun_dir: /run/x\n")
    (tmp_path / "20-empty.yml").write_text("")
    (tmp_path / "notes.txt").write_text("not: settings\n")
    (tmp_path / "..data").mkdir()  # a mounted ConfigMap's internals are skipped
    out = prepare.render_sources(tmp_path, {})
    assert out == {
        "cluster": "second",
        "run_dir": "/run/x",
        "dcs": {"kind": "etcd"},
        "postgresql": {},
    }


def test_a_source_without_settings_files_or_with_a_list_at_the_top_is_refused(
    tmp_path: Path,
) -> None:
    with pytest.raises(prepare.PrepareError, match=r"no \*\.yaml file"):
        prepare.render_sources(tmp_path, {})
    (tmp_path / "a.yaml").write_text("- 1\n")
    with pytest.raises(prepare.PrepareError, match="must be a mapping at the top level"):
        prepare.render_sources(tmp_path, {})
    with pytest.raises(prepare.PrepareError, match="no such file or directory"):
        prepare.render_sources(tmp_path / "missing", {})


def test_a_yaml_error_names_the_place_but_never_quotes_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("api:\n  token: 'hunter2\n")
    with pytest.raises(prepare.PrepareError) as caught:
        prepare.render_sources(tmp_path, {})
    assert "a.yaml: not valid YAML at line" in str(caught.value)
    assert "hunter2" not in str(caught.value)
