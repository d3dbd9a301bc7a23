"""Permanent slots in the DCS `config` record: parsing, PATCH /config, and what the leader plans
(agent/slot_config.py, agent/decide/leader.py `synchronized_standbys`)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.actions import EnsureSlots
from agent.config import PostgresSettings
from agent.decide import decide
from agent.model import ClusterView, DynamicConfig, MemberName, RawRecord, parse_config
from agent.slot_config import PermanentSlot, SlotType, parse_slots
from tests.unit.api_harness import (
    AUTH,
    Api,
    config_record,
)
from tests.unit.test_decide import (
    LEASED,
    ME_PRIMARY,
    A,
    member,
    obs,
    streamed_by,
    view,
)

CDC = PermanentSlot(name="cdc", type=SlotType.LOGICAL, database="app", plugin="pgoutput")
KEEP = PermanentSlot(name="keep", type=SlotType.PHYSICAL)
SPEC = {
    "keep": {"type": "physical"},
    "cdc": {"type": "logical", "database": "app", "plugin": "pgoutput"},
}


def test_the_config_record_carries_the_declared_slots_sorted_by_name() -> None:
    config = DynamicConfig(slots=(CDC, KEEP))
    assert parse_config(RawRecord(value=config.to_json(), version="1")).slots == (CDC, KEEP)
    assert parse_slots(SPEC) == (CDC, KEEP)
    assert '"slots"' not in DynamicConfig().to_json()  # none declared: the record as before


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "slots: expected an object"),
        ({"Bad-Name": {"type": "physical"}}, "slots.Bad-Name: a slot name is"),
        ({"s": {"type": "logcal"}}, "slots.s.type: must be physical or logical"),
        ({"s": {"type": "logical", "plugin": "pgoutput"}}, "slots.s.database: required"),
        ({"s": {"type": "logical", "database": "app"}}, "slots.s.plugin: required"),
        ({"s": {"type": "physical", "plugin": "x"}}, "slots.s: a physical slot has no"),
        ({"s": {"type": "physical", "size": 1}}, "slots.s: unknown keys ['size']"),
    ],
)
def test_a_bad_slot_declaration_is_an_error_naming_the_slot(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_slots(value)


async def test_patch_config_declares_slots_and_refuses_bad_ones(api: Api) -> None:
    bad = await api.client.patch("/config", json={"slots": {"s": {"type": "x"}}}, headers=AUTH)
    assert bad.status == 400
    assert (await bad.json())["error"].startswith("slots.s.type:")
    assert await config_record(api) is None
    good = await api.client.patch("/config", json={"slots": SPEC}, headers=AUTH)
    assert good.status == 200
    record = await config_record(api)
    assert isinstance(record, dict) and record["slots"] == SPEC


def _leader_view(*slots: PermanentSlot) -> ClusterView:
    cluster = view("a", ME_PRIMARY, member("b"), member("c", nofailover=True))
    return replace(cluster, config=DynamicConfig(slots=slots))


LOGICAL_A = replace(
    A, postgresql=PostgresSettings(data_dir="/data", parameters=(("wal_level", "logical"),))
)


def test_the_leader_ensures_the_declared_slots_once() -> None:
    cluster = _leader_view(CDC, KEEP)
    decision, _ = decide(obs(cluster, streamed_by("b", "c")), LEASED, A)
    ensure = [a for a in decision.actions if isinstance(a, EnsureSlots)]
    assert ensure == [EnsureSlots(names=LEASED.slots or (), permanent=(CDC, KEEP))]
    done = replace(LEASED, permanent_slots=(CDC, KEEP))
    decision, _ = decide(obs(cluster, streamed_by("b", "c")), done, A)
    assert not [a for a in decision.actions if isinstance(a, EnsureSlots)]


def test_on_17_the_primary_holds_logical_changes_for_its_streaming_candidates() -> None:
    local = replace(streamed_by("b", "c"), pg_major=18)
    decision, _ = decide(obs(_leader_view(CDC), local), LEASED, LOGICAL_A)
    ensure = [a for a in decision.actions if isinstance(a, EnsureSlots)]
    # c is nofailover: it is never promoted, so logical consumers need not wait for it.
    assert ensure and ensure[0].synchronized == (MemberName("b"),)
    # Before 17 the setting does not exist: left alone.
    decision, _ = decide(obs(_leader_view(CDC), streamed_by("b", "c")), LEASED, LOGICAL_A)
    ensure = [a for a in decision.actions if isinstance(a, EnsureSlots)]
    assert ensure and ensure[0].synchronized is None


def test_a_standby_that_stops_streaming_leaves_the_list() -> None:
    memory = replace(LEASED, permanent_slots=(CDC,), synchronized_slots=(MemberName("b"),))
    local = replace(streamed_by("c"), pg_major=18)
    decision, _ = decide(obs(_leader_view(CDC), local), memory, LOGICAL_A)
    ensure = [a for a in decision.actions if isinstance(a, EnsureSlots)]
    assert ensure and ensure[0].synchronized == ()
    still = replace(streamed_by("b"), pg_major=18)
    decision, _ = decide(obs(_leader_view(CDC), still), memory, LOGICAL_A)
    assert not [a for a in decision.actions if isinstance(a, EnsureSlots)]


async def test_a_former_primary_restarting_with_no_leader_keeps_its_logical_slots() -> None:
    # Its own copies are stale only once another member leads (whose slots are the real
    # ones); restarting with no leader (a whole cluster stopped and started) it may well win
    # the race again, and dropping them first made the leader create them anew at its
    # current position: a logical consumer behind it skipped every change in between.
    import json  # noqa: PLC0415 - only here

    from agent.config import Tags  # noqa: PLC0415
    from agent.model import LocalRequestKind, RecordKind  # noqa: PLC0415
    from tests.unit.fakes.loop_cluster import LoopCluster  # noqa: PLC0415

    c = LoopCluster(("a", "b"), tags={"b": Tags(nofailover=True)})
    await c.bootstrap()
    a, b = c["a"], c["b"]
    view = await a.dcs.get_cluster()
    record = json.loads(view.config.to_json())
    record["slots"] = {"cdc": SPEC["cdc"]}
    assert await a.dcs.write_record(
        RecordKind.CONFIG, json.dumps(record), expected_version=view.config.version
    )
    await c.round()
    a.alive = False  # the node went down, PostgreSQL with it
    a.pg.crash()
    await c.run_until(lambda: c.leader() is None)
    a.alive = True
    await c.run_until(lambda: c.leader() == "a" and a.pg.is_primary)
    assert "drop_stale_logical_slots" not in a.pg.calls
    assert "cdc" in a.pg.slots
    # A standby's synchronized copy is not its own: kept across its restart (a former
    # primary's own copy goes: tests/unit/test_stale_slot_copies.py).
    b.loop.submit(LocalRequestKind.RESTART)
    await c.run_until(lambda: "stop" in b.pg.calls and c.healthy("a"))
    assert "cdc" in b.pg.synced and "drop_stale_logical_slots" not in b.pg.calls
