"""Configuration: loading, defaults, environment overrides, and every validation rule."""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import (
    ConfigError,
    ConfigProblem,
    DcsKind,
    EtcdSettings,
    HaSettings,
    KubernetesSettings,
    LockKind,
    LogFormat,
    LogSettings,
    PostgresSettings,
    Secret,
    Settings,
    Tags,
    Timing,
    env_var_name,
    known_settings,
    load_settings,
    render_effective,
)
from agent.postgres.replication import AGENT_MANAGED
from agent.settings import FencerMode

DELETE = object()

MINIMAL: dict[str, Any] = {
    "name": "pg-0",
    "cluster": "demo",
    "run_dir": "/run/pgwarden",
    "dcs": {"kind": "etcd", "etcd": {"endpoints": ["http://127.0.0.1:2379"]}},
    "postgresql": {"data_dir": "/var/lib/postgresql/data"},
    "api": {"insecure_no_auth": True},
}


def write(tmp_path: Path, document: object, name: str = "pgwarden.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return str(path)


def with_changes(changes: Mapping[str, object], base: Mapping[str, Any] = MINIMAL) -> Any:
    """A copy of `base` with each dotted path set to its value (or removed for DELETE)."""
    document = copy.deepcopy(dict(base))
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = document
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return document


def load(tmp_path: Path, document: object, env: Mapping[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, document), env or {})


def problems_of(tmp_path: Path, document: object, env: Mapping[str, str] | None = None) -> Any:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, document, env)
    return info.value.problems


def error_of(path: str | None, env: Mapping[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env or {})
    return info.value


def has_problem(problems: tuple[ConfigProblem, ...], field: str, rule_part: str) -> bool:
    return any(p.field == field and rule_part in p.rule for p in problems)


def secret_file(tmp_path: Path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------- loading


def test_minimal_config_loads_with_documented_defaults(tmp_path: Path) -> None:
    s = load(tmp_path, MINIMAL)
    assert (s.name, s.cluster, s.namespace, s.run_dir) == (
        "pg-0",
        "demo",
        "pgwarden",
        "/run/pgwarden",
    )
    assert s.dcs.kind is DcsKind.ETCD
    assert s.dcs.etcd is not None and s.dcs.etcd.endpoints == ("http://127.0.0.1:2379",)
    assert s.dcs.kubernetes is None
    pg = s.postgresql
    assert pg.bin_dir == "/usr/lib/postgresql/15/bin"
    assert (pg.listen_host, pg.port, pg.connect_host) == ("127.0.0.1", 5432, "127.0.0.1")
    assert pg.socket_dir is None and pg.os_user is None
    assert pg.superuser.username == "postgres" and pg.superuser.password is None
    assert pg.replication.username == "replicator"
    assert (pg.parameters, pg.pg_hba) == ((), ())
    assert (s.api.listen_host, s.api.port, s.api.url) == (
        "127.0.0.1",
        8008,
        "http://127.0.0.1:8008",
    )
    assert s.timing == Timing(
        ttl_s=6.0,
        loop_wait_s=2.0,
        retry_timeout_s=1.5,
        fence_margin_s=1.0,
        primary_start_timeout_s=10.0,
        switchover_timeout_s=10.0,
        peer_check_timeout_s=0.5,
        shutdown_timeout_s=10.0,
    )
    assert (s.tags.nofailover, s.tags.failover_priority, s.tags.nosync) == (False, 1, False)
    assert s.ha.maximum_lag_on_failover_bytes == 1024 * 1024
    assert (s.log.level, s.log.format) == ("info", LogFormat.AUTO)


def test_default_timings_satisfy_the_timing_rule() -> None:
    t = Timing()
    assert t.loop_wait_s + 2 * t.retry_timeout_s + t.fence_margin_s <= t.ttl_s
    assert t.fence_deadline(100.0) == 105.0


def test_full_config_loads_every_field(tmp_path: Path) -> None:
    tls = {n: secret_file(tmp_path, n, "PEM\n") for n in ("ca.pem", "cert.pem", "key.pem")}
    document = {
        "name": "pg-1",
        "cluster": "prod",
        "namespace": "ha",
        "run_dir": "/run/pgw",
        "dcs": {
            "kind": "etcd",
            "etcd": {
                "endpoints": ["https://10.0.0.1:2379", "https://10.0.0.2:2379"],
                "ca_file": tls["ca.pem"],
                "cert_file": tls["cert.pem"],
                "key_file": tls["key.pem"],
                "username": "root",
                "password_file": secret_file(tmp_path, "etcdpw", "etcd-secret\n"),
            },
        },
        "postgresql": {
            "bin_dir": "/opt/pg/bin",
            "data_dir": "/data/pg",
            "listen_host": "0.0.0.0",
            "port": 5433,
            "connect_host": "10.0.0.5",
            "socket_dir": "/run/pgsock",
            "os_user": "postgres",
            "superuser": {"username": "admin", "password": "su-secret"},
            "replication": {"username": "repl", "password_file": secret_file(tmp_path, "r", "rp")},
            "parameters": {"max_connections": 100, "shared_buffers": "128MB", "fsync": True,
                           "random_page_cost": 1.1},
            "pg_hba": ["host all all 10.0.0.0/8 scram-sha-256"],
        },
        "api": {
            "listen_host": "0.0.0.0",
            "port": 8009,
            "connect_url": "https://10.0.0.5:8009",
            "token": "api-token",
            "username": "ops",
            "password": "ops-secret",
        },
        "timing": {"ttl_s": 20, "loop_wait_s": 3, "retry_timeout_s": 5.5, "fence_margin_s": 1,
                   "primary_start_timeout_s": 30, "switchover_timeout_s": 20,
                   "peer_check_timeout_s": 1, "shutdown_timeout_s": 15},
        "tags": {"nofailover": True, "failover_priority": 0, "nosync": True, "sync_priority": 0},
        "ha": {"maximum_lag_on_failover_bytes": 0},
        "log": {"level": "debug", "format": "json"},
    }  # fmt: skip
    s = load(tmp_path, document)
    assert s.namespace == "ha"
    etcd = s.dcs.etcd
    assert etcd is not None and etcd.endpoints[1] == "https://10.0.0.2:2379"
    assert (etcd.ca_file, etcd.cert_file, etcd.key_file) == tuple(tls.values())
    assert etcd.username == "root" and etcd.password == Secret("etcd-secret")
    pg = s.postgresql
    assert (pg.bin_dir, pg.data_dir, pg.port, pg.socket_dir, pg.os_user) == (
        "/opt/pg/bin", "/data/pg", 5433, "/run/pgsock", "postgres",
    )  # fmt: skip
    assert pg.superuser.username == "admin" and pg.superuser.password == Secret("su-secret")
    assert pg.replication.password == Secret("rp")
    assert pg.parameters == (
        ("max_connections", "100"),
        ("shared_buffers", "128MB"),
        ("fsync", "on"),
        ("random_page_cost", "1.1"),
    )
    assert pg.pg_hba == ("host all all 10.0.0.0/8 scram-sha-256",)
    assert s.api.url == "https://10.0.0.5:8009" and s.api.token == Secret("api-token")
    assert s.api.basic is not None and s.api.basic.username == "ops"
    assert s.api.basic.password == Secret("ops-secret")
    assert s.timing.retry_timeout_s == 5.5 and s.timing.ttl_s == 20.0
    assert s.tags.nofailover and s.tags.failover_priority == 0 and s.tags.sync_priority == 0
    assert s.ha.maximum_lag_on_failover_bytes == 0
    assert (s.log.level, s.log.format) == ("debug", LogFormat.JSON)


def test_kubernetes_settings_default_from_member_name_and_top_level_namespace(
    tmp_path: Path,
) -> None:
    s = load(tmp_path, with_changes({"dcs": {"kind": "kubernetes"}}))
    k = s.dcs.kubernetes
    assert k is not None and s.dcs.etcd is None
    assert (k.namespace, k.pod_name, k.pod_ip, k.lock) == (
        "pgwarden",
        "pg-0",
        None,
        LockKind.LEASE,
    )
    assert (k.role_label, k.primary_value, k.replica_value) == ("role", "primary", "replica")
    assert k.manage_role_label and k.kubeconfig is None and k.labels == ()


def test_kubernetes_downward_api_variables_fill_unset_pod_fields(tmp_path: Path) -> None:
    env = {"POD_NAME": "pg-7", "POD_IP": "10.1.2.3", "POD_NAMESPACE": "db"}
    s = load(tmp_path, with_changes({"dcs": {"kind": "kubernetes"}}), env)
    k = s.dcs.kubernetes
    assert k is not None and (k.pod_name, k.pod_ip, k.namespace) == ("pg-7", "10.1.2.3", "db")


def test_explicit_kubernetes_settings_win_over_downward_api_variables(tmp_path: Path) -> None:
    kube = {"kind": "kubernetes", "kubernetes": {
        "pod_name": "a-0", "pod_ip": "10.9.9.9", "namespace": "ns", "lock": "endpoints",
        "labels": {"app.kubernetes.io/name": "pg", "team": "db"},
    }}  # fmt: skip
    env = {"POD_NAME": "pg-7", "POD_IP": "10.1.2.3", "POD_NAMESPACE": "db"}
    k = load(tmp_path, with_changes({"dcs": kube}), env).dcs.kubernetes
    assert k is not None and (k.pod_name, k.pod_ip, k.namespace) == ("a-0", "10.9.9.9", "ns")
    assert k.lock is LockKind.ENDPOINTS
    assert k.labels == (("app.kubernetes.io/name", "pg"), ("team", "db"))


def test_a_bad_downward_api_value_names_the_variable(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, with_changes({"dcs": {"kind": "kubernetes"}}), {"POD_IP": "x"})
    assert has_problem(problems, "dcs.kubernetes.pod_ip", "(set by POD_IP)")


def test_config_can_come_from_the_environment_alone() -> None:
    env = {
        "PGWARDEN_NAME": "pg-2",
        "PGWARDEN_CLUSTER": "demo",
        "PGWARDEN_RUN_DIR": "/run/x",
        "PGWARDEN_DCS__KIND": "etcd",
        "PGWARDEN_DCS__ETCD__ENDPOINTS": "http://127.0.0.1:2379",
        "PGWARDEN_POSTGRESQL__DATA_DIR": "/data",
        "PGWARDEN_API__TOKEN": "t0ken",
        "HOME": "/root",  # not ours: ignored
    }
    s = load_settings(None, env)
    assert s.name == "pg-2" and s.api.token == Secret("t0ken")


def test_an_empty_file_means_all_settings_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    problems = error_of(str(path)).problems
    assert has_problem(problems, "name", "is required")


def test_a_key_without_a_value_means_the_default(tmp_path: Path) -> None:
    s = load(tmp_path, with_changes({"postgresql.port": None, "timing": None}))
    assert s.postgresql.port == 5432 and s.timing == Timing()


# ---------------------------------------------------------------------------- environment


def test_env_overrides_a_top_level_scalar(tmp_path: Path) -> None:
    assert load(tmp_path, MINIMAL, {"PGWARDEN_NAME": "pg-9"}).name == "pg-9"


def test_env_overrides_a_nested_number(tmp_path: Path) -> None:
    s = load(
        tmp_path, MINIMAL, {"PGWARDEN_TIMING__TTL_S": "12", "PGWARDEN_POSTGRESQL__PORT": "6543"}
    )
    assert s.timing.ttl_s == 12.0 and s.postgresql.port == 6543


def test_env_overrides_a_list_with_commas(tmp_path: Path) -> None:
    env = {"PGWARDEN_DCS__ETCD__ENDPOINTS": "http://a:2379, http://b:2379"}
    etcd = load(tmp_path, MINIMAL, env).dcs.etcd
    assert etcd is not None and etcd.endpoints == ("http://a:2379", "http://b:2379")


def test_env_list_and_mapping_accept_yaml_flow_syntax_for_values_with_commas(
    tmp_path: Path,
) -> None:
    env = {
        "PGWARDEN_POSTGRESQL__PG_HBA": '["host db1,db2 all 10.0.0.0/8 md5"]',
        "PGWARDEN_POSTGRESQL__PARAMETERS": "{shared_preload_libraries: 'a,b', fsync: off}",
    }
    pg = load(tmp_path, MINIMAL, env).postgresql
    assert pg.pg_hba == ("host db1,db2 all 10.0.0.0/8 md5",)
    assert pg.parameters == (("shared_preload_libraries", "a,b"), ("fsync", "off"))


def test_env_overrides_a_mapping_with_key_value_pairs(tmp_path: Path) -> None:
    env = {"PGWARDEN_DCS__KIND": "kubernetes", "PGWARDEN_DCS__KUBERNETES__LABELS": "app=pg,tier=db"}
    document = with_changes({"dcs.etcd": DELETE})
    k = load(tmp_path, document, env).dcs.kubernetes
    assert k is not None and k.labels == (("app", "pg"), ("tier", "db"))


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("ON", True), ("0", False)])
def test_env_overrides_a_boolean(tmp_path: Path, text: str, expected: bool) -> None:
    s = load(tmp_path, MINIMAL, {"PGWARDEN_TAGS__NOFAILOVER": text})
    assert s.tags.nofailover is expected


def test_env_sets_a_secret(tmp_path: Path) -> None:
    document = with_changes({"api.insecure_no_auth": DELETE})
    env = {"PGWARDEN_API__TOKEN": "s3cret", "PGWARDEN_POSTGRESQL__SUPERUSER__PASSWORD": "pw"}
    s = load(tmp_path, document, env)
    assert s.api.token == Secret("s3cret")
    assert s.postgresql.superuser.password == Secret("pw")


def test_an_empty_env_value_unsets_the_file_setting(tmp_path: Path) -> None:
    document = with_changes({"postgresql.socket_dir": "/run/sock"})
    s = load(tmp_path, document, {"PGWARDEN_POSTGRESQL__SOCKET_DIR": ""})
    assert s.postgresql.socket_dir is None


def test_a_bad_env_value_names_the_variable_and_the_field(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, MINIMAL, {"PGWARDEN_TIMING__TTL_S": "ten"})
    assert has_problem(problems, "timing.ttl_s", "PGWARDEN_TIMING__TTL_S must be a number")


def test_postgres_nice_defaults_to_0_and_is_set_by_its_env_variable(tmp_path: Path) -> None:
    assert load(tmp_path, MINIMAL).postgresql.nice == 0
    assert load(tmp_path, MINIMAL, {"PGWARDEN_POSTGRESQL__NICE": "10"}).postgresql.nice == 10
    problems = problems_of(tmp_path, MINIMAL, {"PGWARDEN_POSTGRESQL__NICE": "25"})
    assert has_problem(problems, "postgresql.nice", "set by PGWARDEN_POSTGRESQL__NICE")


def test_the_fencer_is_spawned_on_the_run_dir_unless_set_external_by_its_env_variables(
    tmp_path: Path,
) -> None:
    fencer = load(tmp_path, MINIMAL).fencer
    assert (fencer.mode, fencer.socket) == (FencerMode.SPAWN, None)
    env = {"PGWARDEN_FENCER__MODE": "external", "PGWARDEN_FENCER__SOCKET": "/run/f/fencer.sock"}
    fencer = load(tmp_path, MINIMAL, env).fencer
    assert (fencer.mode, fencer.socket) == (FencerMode.EXTERNAL, "/run/f/fencer.sock")


def test_a_rule_broken_by_an_env_value_says_which_variable_set_it(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, MINIMAL, {"PGWARDEN_TIMING__TTL_S": "3"})
    assert has_problem(
        problems, "timing.ttl_s", "must be >= 4, got 3 (set by PGWARDEN_TIMING__TTL_S)"
    )


@pytest.mark.parametrize("var", ["PGWARDEN_TIMING__TTL", "PGWARDEN_TIMING", "PGWARDEN_NOPE__X"])
def test_an_env_variable_that_names_no_setting_is_an_error(tmp_path: Path, var: str) -> None:
    problems = problems_of(tmp_path, MINIMAL, {var: "1"})
    assert any(p.field == var for p in problems)


def test_every_setting_has_an_env_variable_that_reaches_it() -> None:
    for path, kind in known_settings().items():
        if kind != "mapping":
            name = env_var_name(path)
            assert name.startswith("PGWARDEN_") and name.isupper()
    assert env_var_name("dcs.etcd.endpoints") == "PGWARDEN_DCS__ETCD__ENDPOINTS"


# ---------------------------------------------------------------------------- bad input

BAD_CASES: list[tuple[str, dict[str, object], str, str]] = [
    ("name missing", {"name": DELETE}, "name", "is required"),
    ("cluster missing", {"cluster": DELETE}, "cluster", "is required"),
    ("run_dir missing", {"run_dir": DELETE}, "run_dir", "is required"),
    ("dcs.kind missing", {"dcs.kind": DELETE}, "dcs.kind", "is required"),
    ("data_dir missing", {"postgresql.data_dir": DELETE}, "postgresql.data_dir", "is required"),
    ("name not a DNS label", {"name": "PG_0"}, "name", "must be a DNS label"),
    ("cluster too long", {"cluster": "c" * 64}, "cluster", "must be a DNS label"),
    ("namespace leading dash", {"namespace": "-x"}, "namespace", "must be a DNS label"),
    ("name not a string", {"name": 12}, "name", "must be a string, not a number"),
    ("unknown top-level key", {"nmae": "x"}, "nmae", "unknown key"),
    ("unknown nested key", {"timing.ttl": 5}, "timing.ttl",
     "expected one of: clone_timeout_s, fence_margin_s"),
    ("port a string", {"postgresql.port": "abc"}, "postgresql.port", "must be an integer"),
    ("ttl a boolean", {"timing.ttl_s": True}, "timing.ttl_s", "not a boolean"),
    ("port a boolean", {"api.port": True}, "api.port", "must be an integer, not a boolean"),
    ("bool a string", {"tags.nofailover": "yes"}, "tags.nofailover", "must be a boolean"),
    ("section a list", {"timing": [1]}, "timing", "must be a mapping"),
    ("port zero", {"postgresql.port": 0}, "postgresql.port", "1..65535"),
    ("port too high", {"api.port": 70000}, "api.port", "1..65535"),
    ("nice negative", {"postgresql.nice": -1}, "postgresql.nice", "nice value in 0..19, got -1"),
    ("nice above 19", {"postgresql.nice": 20}, "postgresql.nice", "nice value in 0..19, got 20"),
    ("run_dir relative", {"run_dir": "run"}, "run_dir", "absolute path"),
    ("fencer mode unknown", {"fencer.mode": "sidecar"}, "fencer.mode",
     "one of spawn, external, got 'sidecar'"),
    ("fencer socket relative", {"fencer.socket": "f.sock"}, "fencer.socket", "absolute path"),
    ("data_dir relative", {"postgresql.data_dir": "data"}, "postgresql.data_dir", "absolute"),
    ("no endpoints", {"dcs.etcd.endpoints": []}, "dcs.etcd.endpoints", "at least one"),
    ("endpoints a string", {"dcs.etcd.endpoints": "http://a:1"}, "dcs.etcd.endpoints", "list"),
    ("endpoint ftp", {"dcs.etcd.endpoints": ["ftp://a:1"]}, "dcs.etcd.endpoints[0]", "http"),
    ("endpoint no port", {"dcs.etcd.endpoints": ["http://a"]}, "dcs.etcd.endpoints[0]", "port"),
    ("endpoint no host", {"dcs.etcd.endpoints": ["http://:1"]}, "dcs.etcd.endpoints[0]", "host"),
    ("unknown dcs kind", {"dcs.kind": "zookeeper"}, "dcs.kind", "one of etcd, kubernetes"),
    ("etcd section missing", {"dcs.etcd": DELETE}, "dcs.etcd", "required when dcs.kind is etcd"),
    ("etcd section with k8s", {"dcs.kind": "kubernetes"}, "dcs.etcd", "only allowed when"),
    ("ttl below 4", {"timing.ttl_s": 3}, "timing.ttl_s", "must be >= 4"),
    ("ttl infinite", {"timing.ttl_s": float("inf")}, "timing.ttl_s", "finite"),
    ("loop_wait zero", {"timing.loop_wait_s": 0}, "timing.loop_wait_s", "must be > 0"),
    ("margin too small", {"timing.fence_margin_s": 0.2}, "timing.fence_margin_s", ">= 0.5"),
    ("peer check too long", {"timing.peer_check_timeout_s": 2}, "timing.peer_check_timeout_s",
     "must be < timing.loop_wait_s"),
    ("timing rule", {"timing.retry_timeout_s": 4}, "timing.ttl_s",
     "loop_wait_s + 2 * retry_timeout_s + fence_margin_s = 2 + 2 * 4 + 1 = 11, got 6"),
    ("negative priority", {"tags.failover_priority": -1}, "tags.failover_priority", ">= 0"),
    ("negative lag", {"ha.maximum_lag_on_failover_bytes": -1}, "ha.maximum_lag_on_failover_bytes",
     ">= 0"),
    ("log level", {"log.level": "verbose"}, "log.level", "one of debug, info, warning, error"),
    ("log format", {"log.format": "xml"}, "log.format", "one of auto, json, console"),
    ("no api auth", {"api.insecure_no_auth": DELETE}, "api.token",
     "set a token or basic credentials, or api.insecure_no_auth: true"),
    ("auth and insecure", {"api.token": "t"}, "api.insecure_no_auth", "must not be true"),
    ("api user without password", {"api.insecure_no_auth": DELETE, "api.username": "u"},
     "api.password", "is required when api.username is set"),
    ("connect_url scheme", {"api.connect_url": "ftp://h"}, "api.connect_url", "http or https"),
    ("wildcard api without url", {"api.listen_host": "0.0.0.0"}, "api.connect_url", "wildcard"),
    ("wildcard connect_host", {"postgresql.connect_host": "0.0.0.0"}, "postgresql.connect_host",
     "wildcard"),
    ("same port", {"api.port": 5432}, "api.port", "must differ from postgresql.port"),
    ("managed parameter", {"postgresql.parameters": {"port": 1}}, "postgresql.parameters",
     "'port' is set by pgwarden"),
    ("wal_level minimal", {"postgresql.parameters": {"wal_level": "minimal"}},
     "postgresql.parameters", "wal_level must be replica or logical"),
    ("bad parameter name", {"postgresql.parameters": {"a b": 1}}, "postgresql.parameters",
     "not a PostgreSQL parameter name"),
    ("parameter value a list", {"postgresql.parameters": {"a": [1]}}, "postgresql.parameters",
     "value of 'a' must be"),
    ("bad hba line", {"postgresql.pg_hba": ["hots all all"]}, "postgresql.pg_hba[0]",
     "connection type"),
    ("empty superuser", {"postgresql.superuser.username": ""}, "postgresql.superuser.username",
     "must not be empty"),
    ("password and file", {"postgresql.superuser.password": "a",
                           "postgresql.superuser.password_file": "/x"},
     "postgresql.superuser.password", "not both"),
    ("relative secret file", {"postgresql.replication.password_file": "pw"},
     "postgresql.replication.password_file", "absolute path"),
    ("missing ca_file", {"dcs.etcd.ca_file": "/nonexistent/ca.pem"}, "dcs.etcd.ca_file",
     "file does not exist"),
    ("etcd password without user", {"dcs.etcd.password": "p"}, "dcs.etcd.username",
     "is required when dcs.etcd.password is set"),
    ("k8s lock", {"dcs": {"kind": "kubernetes", "kubernetes": {"lock": "configmap"}}},
     "dcs.kubernetes.lock", "one of endpoints, lease"),
    ("k8s label key", {"dcs": {"kind": "kubernetes", "kubernetes": {"labels": {"a b": "x"}}}},
     "dcs.kubernetes.labels", "label key 'a b'"),
    ("k8s label value", {"dcs": {"kind": "kubernetes", "kubernetes": {"labels": {"a": "-x"}}}},
     "dcs.kubernetes.labels", "label value '-x'"),
    ("k8s label value type", {"dcs": {"kind": "kubernetes", "kubernetes": {"labels": {"a": 1}}}},
     "dcs.kubernetes.labels", "value of 'a' must be a string"),
    ("k8s role label in labels",
     {"dcs": {"kind": "kubernetes", "kubernetes": {"labels": {"role": "x"}}}},
     "dcs.kubernetes.labels", "must not contain the role label"),
    ("k8s same role values",
     {"dcs": {"kind": "kubernetes", "kubernetes": {"replica_value": "primary"}}},
     "dcs.kubernetes.replica_value", "must differ"),
    ("k8s pod ip", {"dcs": {"kind": "kubernetes", "kubernetes": {"pod_ip": "10.0.0"}}},
     "dcs.kubernetes.pod_ip", "IP address"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "field", "rule"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_input_is_rejected_naming_the_field_and_the_rule(
    tmp_path: Path, changes: dict[str, object], field: str, rule: str
) -> None:
    problems = problems_of(tmp_path, with_changes(changes))
    assert has_problem(problems, field, rule), [str(p) for p in problems]


def test_cert_file_requires_key_file(tmp_path: Path) -> None:
    cert = secret_file(tmp_path, "cert.pem", "PEM")
    document = with_changes(
        {"dcs.etcd.cert_file": cert, "dcs.etcd.endpoints": ["https://127.0.0.1:2379"]}
    )
    problems = problems_of(tmp_path, document)
    assert has_problem(problems, "dcs.etcd.key_file", "required when dcs.etcd.cert_file is set")


def test_tls_files_with_plain_http_endpoints_are_rejected(tmp_path: Path) -> None:
    document = with_changes({"dcs.etcd.ca_file": secret_file(tmp_path, "ca.pem", "PEM")})
    assert has_problem(problems_of(tmp_path, document), "dcs.etcd.endpoints", "must use https")


def test_a_password_file_that_is_a_directory_is_unreadable(tmp_path: Path) -> None:
    document = with_changes({"postgresql.superuser.password_file": str(tmp_path)})
    problems = problems_of(tmp_path, document)
    assert has_problem(problems, "postgresql.superuser.password_file", "is a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_password_file_without_read_permission_is_unreadable(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "pw", "secret")
    os.chmod(path, 0)
    document = with_changes({"postgresql.superuser.password_file": path})
    problems = problems_of(tmp_path, document)
    assert has_problem(problems, "postgresql.superuser.password_file", "permission denied")


def test_an_empty_password_file_is_rejected(tmp_path: Path) -> None:
    document = with_changes({"api.token_file": secret_file(tmp_path, "t", "\n"),
                             "api.insecure_no_auth": DELETE})  # fmt: skip
    assert has_problem(problems_of(tmp_path, document), "api.token_file", "file is empty")


def test_a_missing_password_file_is_rejected(tmp_path: Path) -> None:
    document = with_changes({"postgresql.replication.password_file": "/nonexistent/pw"})
    problems = problems_of(tmp_path, document)
    assert has_problem(problems, "postgresql.replication.password_file", "does not exist")


def test_secret_files_are_read_at_load_time_without_the_trailing_newline(tmp_path: Path) -> None:
    document = with_changes(
        {
            "api.insecure_no_auth": DELETE,
            "api.token_file": secret_file(tmp_path, "token", "tok-123\n"),
            "postgresql.superuser.password_file": secret_file(tmp_path, "su", "su pw\r\n"),
        }
    )
    s = load(tmp_path, document)
    assert s.api.token == Secret("tok-123")
    assert s.postgresql.superuser.password == Secret("su pw")


def test_a_duplicate_key_in_the_file_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(write_text_with_duplicate(), encoding="utf-8")
    problems = error_of(str(path)).problems
    assert any("duplicate key 'ttl_s'" in p.rule and "line 3" in p.rule for p in problems)


def write_text_with_duplicate() -> str:
    return "timing:\n  ttl_s: 10\n  ttl_s: 20\n"


def test_invalid_yaml_reports_the_position_but_not_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("api:\n  token: hunter2: x\n", encoding="utf-8")
    error = error_of(str(path))
    assert "not valid YAML at line 2" in str(error) and "hunter2" not in str(error)


def test_a_missing_config_file_is_reported() -> None:
    error = error_of("/nonexistent/pgwarden.yaml")
    assert error.problems[0].field == "file /nonexistent/pgwarden.yaml"
    assert "does not exist" in error.problems[0].rule


def test_a_top_level_list_is_reported(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, [1, 2])
    assert "must hold a YAML mapping at the top level" in problems[0].rule


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    document = with_changes(
        {
            "name": "Bad_Name",
            "postgresql.port": "abc",
            "timing.ttl_s": 3,
            "log.level": "loud",
            "api.insecure_no_auth": DELETE,
            "bogus": 1,
        }
    )
    problems = problems_of(tmp_path, document)
    fields = {p.field for p in problems}
    assert {"name", "postgresql.port", "timing.ttl_s", "log.level", "api.token", "bogus"} <= fields
    # and the exception's message lists each of them
    error = ConfigError(list(problems))
    for problem in problems:
        assert f"  - {problem.field}: {problem.rule}" in str(error)


def test_a_wrongly_typed_field_is_reported_once_not_as_a_cascade(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, with_changes({"name": 12}))
    assert [p.field for p in problems] == ["name"]


# ---------------------------------------------------------------------------- secrets

SECRETS = ("tok-AAA", "su-BBB", "repl-CCC", "etcd-DDD", "api-EEE")


def config_with_all_secrets(tmp_path: Path) -> Any:
    return with_changes(
        {
            "api.insecure_no_auth": DELETE,
            "api.token": SECRETS[0],
            "api.username": "ops",
            "api.password": SECRETS[4],
            "postgresql.superuser.password": SECRETS[1],
            "postgresql.replication.password_file": secret_file(tmp_path, "r", SECRETS[2]),
            "dcs.etcd.username": "root",
            "dcs.etcd.password": SECRETS[3],
        }
    )


def test_secrets_never_appear_in_repr_or_rendered_settings(tmp_path: Path) -> None:
    s = load(tmp_path, config_with_all_secrets(tmp_path))
    for text in (repr(s), str(s), render_effective(s)):
        assert not any(secret in text for secret in SECRETS)
    rendered = yaml.safe_load(render_effective(s))
    assert rendered["api"]["token"] == "********"
    assert rendered["postgresql"]["replication"]["password"] == "********"
    assert rendered["dcs"]["etcd"]["password"] == "********"


def test_secrets_never_appear_in_config_errors(tmp_path: Path) -> None:
    document = config_with_all_secrets(tmp_path)
    document["api"]["insecure_no_auth"] = True  # a problem next to every secret
    document["api"]["tokn"] = SECRETS[0]  # a secret under an unknown key
    document["postgresql"]["superuser"]["password_file"] = "/x"  # both forms
    document["dcs"]["etcd"]["endpoints"] = [f"http://u:{SECRETS[3]}@h:1"]  # credentials in URL
    env = {"PGWARDEN_API__PASSWORD_FILE": "relative"}
    error = error_of(write(tmp_path, document), env)
    assert len(error.problems) >= 4
    text = str(error) + repr(error.problems)
    assert not any(secret in text for secret in SECRETS)


def test_rendered_settings_load_back_to_the_same_settings(tmp_path: Path) -> None:
    s = load(tmp_path, with_changes({"postgresql.parameters": {"fsync": False, "work_mem": "4MB"}}))
    again = load_settings(write(tmp_path, yaml.safe_load(render_effective(s)), "again.yaml"), {})
    # The rendering shows the effective API URL, so it loads back as an explicit connect_url.
    assert again == dataclasses.replace(s, api=dataclasses.replace(s.api, connect_url=s.api.url))


def test_ctl_connection_variables_in_the_agent_environment_are_not_settings(
    tmp_path: Path,
) -> None:
    env = {"PGWARDEN_URL": "http://127.0.0.1:8008", "PGWARDEN_TOKEN": "t", "PGWARDEN_CONFIG": "/x"}
    # `pgwarden ctl`'s TLS files too (a pod sets them for `kubectl exec ... pgwarden ctl`).
    env |= {f"PGWARDEN_{n}_FILE": "/etc/tls/x" for n in ("CA", "CERT", "KEY")}
    assert load(tmp_path, MINIMAL, env).api.token is None


def test_every_parameter_the_agent_manages_is_refused_in_postgresql_parameters(
    tmp_path: Path,
) -> None:
    for name in AGENT_MANAGED:
        document = with_changes({"postgresql.parameters": {name: "x"}})
        problems = problems_of(tmp_path, document)
        assert has_problem(problems, "postgresql.parameters", f"{name!r} is set by pgwarden")


def test_every_setting_is_documented_in_the_configuration_reference() -> None:
    reference = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text("utf-8")
    chapters = {
        part.split("`")[1] if part.startswith("`") else "": part
        for part in reference.split("\n### ")[1:]
    }
    for path, kind in known_settings().items():
        if kind == "mapping":
            continue
        parts = path.split(".")
        # the longest documented section holding the setting, then its row there
        for cut in range(len(parts) - 1, -1, -1):
            section, rest = ".".join(parts[:cut]), ".".join(parts[cut:])
            if section in chapters:
                assert f"`{rest}`" in chapters[section], path
                break
        else:
            raise AssertionError(f"{path}: no section documents it")


def test_the_api_url_brackets_an_ipv6_listen_host(tmp_path: Path) -> None:
    s = load(tmp_path, with_changes({"api.listen_host": "::1"}))
    assert s.api.url == "http://[::1]:8008"


@pytest.mark.parametrize(
    ("section", "cls"),
    [
        ("dcs.etcd", EtcdSettings),
        ("dcs.kubernetes", KubernetesSettings),
        ("postgresql", PostgresSettings),
        ("timing", Timing),
        ("tags", Tags),
        ("ha", HaSettings),
        ("log", LogSettings),
        ("", Settings),
    ],
)
def test_every_settings_field_can_be_configured(section: str, cls: type) -> None:
    # A field added to a settings class without a key in the loader would silently keep its
    # default for ever; this catches it.
    known = known_settings()
    for f in dataclasses.fields(cls):
        path = f"{section}.{f.name}" if section else f.name
        assert path in known, f"{path} has no configuration key"


def test_an_etcd_cluster_inside_kubernetes_may_configure_pod_role_labels(tmp_path: Path) -> None:
    document = with_changes({"dcs.kubernetes": {"role_label": "pgrole", "pod_name": "pg-0"}})
    settings = load(tmp_path, document)
    assert settings.dcs.etcd is not None
    assert settings.dcs.kubernetes is not None
    assert settings.dcs.kubernetes.role_label == "pgrole"
