"""agent/pgparams.py: values checked as PostgreSQL reads them (units, ranges, enums, booleans),
pg_hba lines that would lock the agent or its replicas out, and the PATCH /config path that
refuses a bad change without writing anything."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from agent.api.errors import ApiError
from agent.api.pgconfig import PgPatch, apply_pg_patch, parse_pg_patch
from agent.model import PgConfig
from agent.pgparams import (
    SettingInfo,
    hba_problems,
    is_bool,
    parameter_problems,
    precedence_comment,
    value_problem,
)
from tests.unit.test_decide import make_settings

SHARED_BUFFERS = SettingInfo(
    name="shared_buffers",
    vartype="integer",
    context="postmaster",
    unit="8kB",
    min_val="16",
    max_val="1073741823",
)
TIMEOUT = SettingInfo(
    name="statement_timeout",
    vartype="integer",
    context="user",
    unit="ms",
    min_val="0",
    max_val="2147483647",
)
COMPRESSION = SettingInfo(
    name="wal_compression",
    vartype="enum",
    context="superuser",
    enumvals=("pglz", "lz4", "zstd", "on", "off"),
)
FACTOR = SettingInfo(
    name="cpu_tuple_cost", vartype="real", context="user", min_val="0", max_val="1.79769e+308"
)
CATALOG = {
    i.name: i
    for i in (
        SHARED_BUFFERS,
        TIMEOUT,
        COMPRESSION,
        FACTOR,
        SettingInfo(name="enable_seqscan", vartype="bool", context="user"),
        SettingInfo(name="block_size", vartype="integer", context="internal"),
        SettingInfo(name="application_name", vartype="string", context="user"),
        SettingInfo(
            name="synchronous_commit",
            vartype="enum",
            context="user",
            enumvals=("local", "remote_write", "remote_apply", "on", "off"),
        ),
    )
}


@pytest.mark.parametrize(
    ("info", "value", "problem"),
    [
        (SHARED_BUFFERS, "128MB", None),
        (SHARED_BUFFERS, "16384", None),
        (SHARED_BUFFERS, "64kB", "out of range"),  # 8 pages of 8 kB < 16
        (SHARED_BUFFERS, "1PB", "unit 'PB' is not valid"),
        (SHARED_BUFFERS, "10s", "unit 's' is not valid"),
        (SHARED_BUFFERS, "lots", "expected an integer"),
        (SHARED_BUFFERS, "1.5", "expected an integer"),
        (TIMEOUT, "5min", None),
        (TIMEOUT, "-1", "out of range"),
        (TIMEOUT, "30 s", None),
        (COMPRESSION, "ZSTD", None),
        (COMPRESSION, "brotli", "not one of pglz, lz4, zstd, on, off"),
        (FACTOR, "0.5", None),
        (FACTOR, "-0.1", "out of range"),
    ],
)
def test_values_are_checked_as_postgresql_reads_them(
    info: SettingInfo, value: str, problem: str | None
) -> None:
    found = value_problem(info, value)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_booleans_take_postgresqls_spellings_and_prefixes() -> None:
    assert all(is_bool(v) for v in ("on", "OFF", "t", "tru", "yes", "n", "1", "0", "of"))
    assert not any(is_bool(v) for v in ("o", "maybe", "2", "", "truex"))


def test_every_problem_names_its_parameter() -> None:
    settings = make_settings("a")
    problems = list(
        parameter_problems(
            {
                "shared_bufers": "1",
                "enable_seqscan": "maybe",
                "block_size": "16384",
                "port": "6000",
                "wal_level": "minimal",
                "auto_explain.log_min_duration": "5s",
                "application_name": "anything",
            },
            CATALOG,
            settings,
        )
    )
    assert sorted(p.split(":")[0] for p in problems) == [
        "block_size",
        "enable_seqscan",
        "port",
        "shared_bufers",
        "wal_level",
    ]


def test_hba_lines_that_would_lock_the_agent_or_its_replicas_out_are_refused() -> None:
    settings = make_settings("a")
    user = settings.postgresql.superuser.username
    bad = (
        "local all all scram-sha-256",
        f"local postgres {user} reject",
        "host replication all 0.0.0.0/0 reject",
        "hostssl replication all 10.0.0.1 255.255.255.255 reject",
        "include other.conf",
        "nonsense all all trust",
    )
    problems = list(hba_problems(bad, settings))
    assert [p.split(":")[0] for p in problems] == [f"pg_hba[{i}]" for i in range(6)]
    fine = (
        "local all all trust",
        "local sales all peer",
        "host all all 10.0.0.0/8 scram-sha-256",
        "host replication all 10.0.0.0/8 scram-sha-256",
        "host all all 0.0.0.0/0 reject",  # `all` does not match replication connections
    )
    assert list(hba_problems(fine, settings)) == []


def test_a_patch_merges_parameters_removes_nulls_and_replaces_hba_lines() -> None:
    config = PgConfig(
        parameters=(("a_one", "1"), ("work_mem", "4MB")), pg_hba=("local all all trust",)
    )
    patch = parse_pg_patch({"parameters": {"work_mem": None, "max_wal_size": 2048, "jit": False}})
    assert apply_pg_patch(config, patch) == PgConfig(
        parameters=(("a_one", "1"), ("jit", "off"), ("max_wal_size", "2048")),
        pg_hba=("local all all trust",),
    )
    assert apply_pg_patch(config, PgPatch(pg_hba=())).pg_hba == ()
    bodies: list[object] = [{"parameters": []}, {"parameters": {"x y": 1}}, {"other": 1}]
    for body in [*bodies, {"pg_hba": "x"}]:
        with pytest.raises(ApiError) as raised:
            parse_pg_patch(body)
        assert raised.value.status == 400


def test_check_config_shows_the_precedence_with_this_files_parameters() -> None:
    settings = make_settings("a")
    settings = replace(
        settings, postgresql=replace(settings.postgresql, parameters=(("work_mem", "8MB"),))
    )
    text = precedence_comment(settings)
    assert all(line.startswith("#") for line in text.splitlines())
    assert "postgresql.parameters: work_mem" in text
    assert text.index("set by pgwarden") < text.index("this file") < text.index("DCS")
    assert json.dumps(text)  # plain text
