"""The settings types check their own rules when built by hand, and the pure core's import."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from agent.config import load_settings
from agent.config.field import Kind
from agent.config.fields import FIELDS
from agent.dcs_settings import KubernetesSettings
from agent.postgres_settings import PostgresSettings
from agent.settings import (
    HaSettings,
    InvalidSettings,
    LogLevel,
    LogSettings,
    SyncMode,
    Tags,
    Timing,
    unchecked,
)
from agent.value_rules import ConfigProblem, Credentials


def fields_of(error: pytest.ExceptionInfo[InvalidSettings]) -> set[str]:
    return {p.field for p in error.value.problems}


def test_a_hand_built_timing_with_a_one_second_ttl_is_refused_naming_field_and_rule() -> None:
    with pytest.raises(InvalidSettings) as error:
        Timing(ttl_s=1)
    assert ConfigProblem("ttl_s", "must be >= 4, got 1") in error.value.problems
    assert any("loop_wait_s + 2 * retry_timeout_s" in p.rule for p in error.value.problems)
    assert "ttl_s: must be >= 4" in str(error.value)


def test_a_hand_built_timing_that_breaks_only_the_lease_rule_is_refused() -> None:
    with pytest.raises(InvalidSettings) as error:
        Timing(ttl_s=5)
    assert fields_of(error) == {"ttl_s"}
    with pytest.raises(InvalidSettings) as error:
        Timing(postgres_unresponsive_s=4)
    assert fields_of(error) == {"postgres_unresponsive_s"}


def test_the_time_limits_of_clone_and_rewind_are_settings_with_their_old_values() -> None:
    assert (Timing().clone_timeout_s, Timing().rewind_timeout_s) == (600.0, 300.0)
    with pytest.raises(InvalidSettings) as error:
        Timing(clone_timeout_s=0, rewind_timeout_s=-1)
    assert fields_of(error) == {"clone_timeout_s", "rewind_timeout_s"}


def test_the_timing_limits_load_from_the_file_and_the_environment() -> None:
    env = {
        "PGWARDEN_NAME": "pg-0",
        "PGWARDEN_CLUSTER": "c",
        "PGWARDEN_RUN_DIR": "/run/x",
        "PGWARDEN_DCS__KIND": "etcd",
        "PGWARDEN_DCS__ETCD__ENDPOINTS": "http://127.0.0.1:2379",
        "PGWARDEN_POSTGRESQL__DATA_DIR": "/data",
        "PGWARDEN_API__INSECURE_NO_AUTH": "true",
        "PGWARDEN_TIMING__CLONE_TIMEOUT_S": "1200",
        "PGWARDEN_TIMING__REWIND_TIMEOUT_S": "45.5",
    }
    timing = load_settings(None, env).timing
    assert (timing.clone_timeout_s, timing.rewind_timeout_s) == (1200.0, 45.5)


def test_synchronous_mode_is_the_dcs_record_enum_and_checked() -> None:
    assert HaSettings().synchronous_mode is SyncMode.OFF
    with pytest.raises(InvalidSettings) as error:
        # a string where the type wants a SyncMode: what a hand-built value could carry
        HaSettings(synchronous_mode="always", synchronous_node_count=0)  # type: ignore[arg-type]
    assert fields_of(error) == {"synchronous_mode", "synchronous_node_count"}


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Tags(failover_priority=-1), "failover_priority"),
        (lambda: Credentials(username=""), "username"),
        (lambda: PostgresSettings(data_dir="relative"), "data_dir"),
        (lambda: PostgresSettings(data_dir="/d", pg_hba=("hots all",)), "pg_hba[0]"),
        (lambda: KubernetesSettings(primary_value="x", replica_value="x"), "replica_value"),
        (lambda: LogSettings(level="loud"), "level"),  # type: ignore[arg-type]  # the refused value
    ],
)
def test_each_settings_type_refuses_a_value_that_breaks_its_rules(
    build: Callable[[], object], field: str
) -> None:
    with pytest.raises(InvalidSettings) as error:
        build()
    assert field in fields_of(error)


def test_unchecked_builds_without_rules_so_the_loader_can_report_them_all() -> None:
    timing = unchecked(Timing, ttl_s=1.0)
    assert timing.ttl_s == 1.0 and timing.loop_wait_s == 2.0
    assert "ttl_s" in {p.field for p in timing.problems()}
    assert unchecked(LogSettings).level is LogLevel.INFO


def test_every_settings_attribute_is_a_key_or_filled_from_one() -> None:
    sources = {f.attribute_path for f in FIELDS if f.kind is not Kind.SECTION}
    for cls, section in ((Timing, "timing"), (HaSettings, "ha"), (Tags, "tags")):
        for f in dataclasses.fields(cls):
            assert f"{section}.{f.name}" in sources
