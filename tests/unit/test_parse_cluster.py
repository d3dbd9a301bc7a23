"""`parse_cluster` (agent/model/parsing.py): an unreadable record reads as absent and is
reported, except where absent would be unsafe or would leave the record undeletable."""

from __future__ import annotations

from agent.model import (
    DynamicConfig,
    MemberName,
    RawCluster,
    RawRecord,
    RecordKind,
    RestartSchedule,
    SyncRecord,
    parse_cluster,
)

GARBAGE = "{not json"


def test_an_unreadable_sync_record_assumes_nobody_holds_every_commit() -> None:
    view, problems = parse_cluster(
        RawCluster(records={RecordKind.SYNC: RawRecord(value=GARBAGE, version="7")})
    )
    assert view.sync == SyncRecord(leader=MemberName(""), members=(), quorum=1, version="7")
    assert view.sync_version == "7"
    assert [p.split(":")[0] for p in problems] == ["sync"]


def test_an_unreadable_restart_schedule_reads_as_empty_but_keeps_its_version() -> None:
    view, problems = parse_cluster(
        RawCluster(records={RecordKind.RESTART: RawRecord(value=GARBAGE, version="9")})
    )
    assert view.restart == RestartSchedule(members=(), scheduled_at=0.0, version="9")
    assert [p.split(":")[0] for p in problems] == ["restart"]


def test_other_unreadable_records_read_as_absent_with_their_version() -> None:
    kinds = (
        RecordKind.SWITCHOVER,
        RecordKind.HISTORY,
        RecordKind.CONFIG,
        RecordKind.FAILSAFE,
        RecordKind.POSITION,
    )
    view, problems = parse_cluster(
        RawCluster(records={kind: RawRecord(value=GARBAGE, version="3") for kind in kinds})
    )
    assert view.switchover is None
    assert (view.history, view.history_version) == ((), "3")
    assert view.config == DynamicConfig(version="3")
    assert (view.failsafe, view.failsafe_version) == (None, "3")
    assert (view.position, view.position_version) == (None, "3")
    assert [p.split(":")[0] for p in problems] == [
        "switchover",
        "history",
        "config",
        "failsafe",
        "position",
    ]


def test_absent_records_are_absent_and_no_problem() -> None:
    view, problems = parse_cluster(RawCluster())
    assert (view.sync, view.sync_version, view.restart) == (None, "", None)
    assert view.config == DynamicConfig()
    assert problems == ()


def test_an_unusable_leader_name_reads_as_no_leader_and_is_reported_first() -> None:
    view, problems = parse_cluster(
        RawCluster(
            leader=RawRecord(value="  ", version="1"),
            members={"m1": RawRecord(value=GARBAGE, version="2")},
            records={RecordKind.SYNC: RawRecord(value=GARBAGE, version="3")},
        )
    )
    assert view.leader is None
    assert view.members == ()
    assert [p.split(":")[0] for p in problems] == ["leader", "members/m1", "sync"]
