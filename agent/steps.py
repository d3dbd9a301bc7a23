"""Pure translations of actions into the values the executor's seams take: which DCS record
a record write touches, the postmaster's stop mode, the standby configuration that points
at a member (agent/executor.py runs them).
"""

from __future__ import annotations

from typing import assert_never

from agent.actions import (
    ClaimInitialize,
    ClearInitialize,
    ClearSwitchover,
    SetConfig,
    SetFailsafeRecord,
    SetInitialize,
    SetLeaderPosition,
    SetRestartSchedule,
    SetSyncRecord,
    StopMode,
)
from agent.handover import member_of
from agent.model import ClusterView, MemberName, RecordKind
from agent.postgres.process import StandbyConfig
from agent.postgres.process import StopMode as PgStopMode
from agent.postgres.replication import slot_name_for
from agent.settings import Settings

RecordWrite = (
    ClaimInitialize
    | ClearInitialize
    | SetInitialize
    | ClearSwitchover
    | SetConfig
    | SetSyncRecord
    | SetFailsafeRecord
    | SetRestartSchedule
    | SetLeaderPosition
)


def record_write(action: RecordWrite) -> tuple[RecordKind, str | None, str | None]:
    """(record, value, expected version) of a plain DCS record write; value None deletes."""
    match action:
        case ClaimInitialize():
            return RecordKind.INITIALIZE, "", None
        case ClearInitialize(version=version):
            return RecordKind.INITIALIZE, None, version
        case SetInitialize(system_id=system_id, expected_version=version):
            return RecordKind.INITIALIZE, system_id, version or None
        case ClearSwitchover(version=version):
            return RecordKind.SWITCHOVER, None, version
        case SetConfig(config=config, expected_version=version):
            return RecordKind.CONFIG, config.to_json(), version
        case SetSyncRecord(record=record, expected_version=version):
            return RecordKind.SYNC, record.to_json(), version
        case SetFailsafeRecord(record=failsafe, expected_version=version):
            return RecordKind.FAILSAFE, failsafe.to_json() if failsafe else None, version
        case SetRestartSchedule(schedule=schedule, expected_version=version):
            return RecordKind.RESTART, schedule.to_json() if schedule else None, version
        case SetLeaderPosition(position=position, expected_version=version):
            return RecordKind.POSITION, position.to_json(), version
        case _:
            assert_never(action)


def pg_mode(mode: StopMode) -> PgStopMode:
    match mode:
        case StopMode.FAST:
            return PgStopMode.FAST
        case StopMode.IMMEDIATE:
            return PgStopMode.IMMEDIATE
        case StopMode.KILL:
            return PgStopMode.KILL
        case _:
            assert_never(mode)


def standby_of(settings: Settings, view: ClusterView | None, name: MemberName) -> StandbyConfig:
    """Stream from `name`: with our replication slot when it is the leader (it keeps one per
    member), without one from a replica (cascading: the leader keeps none for us then)."""
    member = member_of(view, name)
    from_leader = view is None or view.leader is None or view.leader.name == name
    return StandbyConfig(
        primary_host=member.host,
        primary_port=member.port,
        slot_name=slot_name_for(settings.name) if from_leader else None,
        application_name=settings.name,
    )
