"""Slots that fall far behind are reported: parsed from the probe's JSON, named in /health,
one series per slot in the metrics (gone with the slot). The real server's side is
tests/integration/postgres/test_slot_states.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.api.views import status_body
from agent.metrics import Metrics
from agent.slot_config import SlotState, parse_slot_states
from tests.unit.test_metrics import primary, scrape, value

LAGGING = SlotState(
    name="cdc", type="logical", active=False, wal_status="lost", retained_bytes=3 << 24
)
FINE = SlotState(name="pg_1", type="physical", active=True, wal_status="reserved", retained_bytes=0)


def test_the_probe_json_is_read_into_slot_states() -> None:
    text = (
        '[{"name": "cdc", "type": "logical", "active": false, "wal_status": "lost",'
        ' "retained_bytes": 50331648},'
        ' {"name": "pg_1", "type": "physical", "active": true, "wal_status": "reserved",'
        ' "retained_bytes": 0}]'
    )
    assert parse_slot_states(text) == (LAGGING, FINE)
    assert parse_slot_states("[]") == ()
    with pytest.raises(ValueError):
        parse_slot_states('{"name": "x"}')


@pytest.mark.parametrize(
    ("wal_status", "far"),
    [("reserved", False), ("extended", False), ("unreserved", True), ("lost", True), (None, False)],
)
def test_far_behind_means_its_wal_may_go_or_is_gone(wal_status: str | None, far: bool) -> None:
    assert replace(FINE, wal_status=wal_status).far_behind is far


def test_health_names_the_slots_far_behind() -> None:
    body = status_body(replace(primary(), slots=(LAGGING, FINE)), age_s=0.1)
    assert body["slots_far_behind"] == ["cdc"]
    assert status_body(primary(), age_s=0.1)["slots_far_behind"] == []


def test_metrics_carry_each_slot_and_drop_a_dropped_one() -> None:
    metrics = Metrics()
    metrics.update(replace(primary(), slots=(LAGGING, FINE)))
    s = scrape(metrics)
    assert value(s, "pgwarden_replication_slot_far_behind", slot="cdc") == 1
    assert value(s, "pgwarden_replication_slot_far_behind", slot="pg_1") == 0
    assert value(s, "pgwarden_replication_slot_retained_bytes", slot="cdc") == 3 << 24
    metrics.update(replace(primary(), slots=(FINE,)))
    s = scrape(metrics)
    with pytest.raises(KeyError):
        value(s, "pgwarden_replication_slot_far_behind", slot="cdc")
