"""Configuration of synchronous replication: the `ha.synchronous_*` seeds and tag conflicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_config import MINIMAL, load, problems_of, with_changes


def test_synchronous_settings_load_with_their_defaults(tmp_path: Path) -> None:
    ha = load(tmp_path, MINIMAL).ha
    assert (ha.synchronous_mode, ha.synchronous_node_count) == ("off", 1)
    assert (ha.synchronous_mode_strict, ha.maximum_lag_on_syncnode_bytes) == (False, -1)
    document = with_changes(
        {
            "ha.synchronous_mode": "quorum",
            "ha.synchronous_node_count": 2,
            "ha.synchronous_mode_strict": True,
            "ha.maximum_lag_on_syncnode_bytes": 1024,
        }
    )
    ha = load(tmp_path, document).ha
    assert (ha.synchronous_mode, ha.synchronous_node_count) == ("quorum", 2)
    assert (ha.synchronous_mode_strict, ha.maximum_lag_on_syncnode_bytes) == (True, 1024)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"ha.synchronous_mode": "always"}, "ha.synchronous_mode", "off, on, quorum"),
        ({"ha.synchronous_mode": True}, "ha.synchronous_mode", "quote it"),  # YAML `on`
        ({"ha.synchronous_node_count": 0}, "ha.synchronous_node_count", ">= 1"),
        ({"ha.maximum_lag_on_syncnode_bytes": -5}, "ha.maximum_lag_on_syncnode_bytes", "-1"),
        ({"ha.maximum_flush_lag_on_syncnode_s": 0}, "ha.maximum_flush_lag_on_syncnode_s", "> 0"),
        ({"ha.maximum_flush_lag_on_syncnode_s": -2}, "ha.maximum_flush_lag_on_syncnode_s", "-1"),
        ({"tags.nosync": True, "tags.sync_priority": 2}, "tags.sync_priority", "nosync"),
        (
            {"tags.nofailover": True, "tags.failover_priority": 3},
            "tags.failover_priority",
            "nofailover",
        ),
        (
            {"postgresql.parameters": {"synchronous_standby_names": "*"}},
            "postgresql.parameters",
            "synchronous_mode",
        ),
    ],
)
def test_bad_synchronous_settings_and_conflicting_tags_name_the_field(
    tmp_path: Path, changes: dict[str, object], field: str, words: str
) -> None:
    problems = problems_of(tmp_path, with_changes(changes))
    assert any(p.field.startswith(field) and words in p.rule for p in problems), problems


@pytest.mark.parametrize(
    "changes",
    [
        {"tags.nosync": True},
        {"tags.nosync": True, "tags.sync_priority": 0},
        {"tags.nofailover": True, "tags.failover_priority": 0},
        {"tags.nofailover": True, "tags.nosync": True},
    ],
)
def test_tags_that_agree_are_accepted(tmp_path: Path, changes: dict[str, object]) -> None:
    load(tmp_path, with_changes(changes))
