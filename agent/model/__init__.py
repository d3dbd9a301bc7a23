"""Value types shared by every layer: DCS records, PostgreSQL snapshots, the published status.

Everything here is a frozen, slotted dataclass. Records read from the DCS are parsed at the
boundary by tolerant `parse_*` functions: a corrupt or foreign value is reported as a problem
and read as absent, never raised (DESIGN.md section 3, invariant 6).

The package by concern: basics.py (names, positions, roles, states), local.py (what the
probe reads), records.py (the DCS records and the cluster view), parsing.py (reading them at
the boundary), status.py (what the agent publishes). Every public name is importable from
`agent.model`.
"""

from __future__ import annotations

from agent.model.basics import (
    QUIET_RECORDS,
    Lsn,
    MemberName,
    PgState,
    RecordKind,
    Role,
    StandbySyncState,
    SyncMode,
    SyncRole,
    WalSenderState,
    format_lsn,
    parse_lsn,
)
from agent.model.local import ControlData, LocalState, ReplicationRow, SyncStandbys
from agent.model.parsing import (
    RawCluster,
    RawRecord,
    history_to_json,
    parameter_value,
    parse_cluster,
    parse_config,
    parse_failsafe,
    parse_history,
    parse_member,
    parse_pg_config,
    parse_position,
    parse_restart,
    parse_switchover,
    parse_sync,
)
from agent.model.records import (
    ClusterView,
    DynamicConfig,
    FailsafeRecord,
    HistoryEntry,
    LeaderPosition,
    LeaderRecord,
    Member,
    MemberTags,
    PgConfig,
    RestartSchedule,
    SwitchoverRequest,
    SyncRecord,
)
from agent.model.status import AgentStatus, LocalRequestKind

__all__ = [
    "QUIET_RECORDS",
    "AgentStatus",
    "ClusterView",
    "ControlData",
    "DynamicConfig",
    "FailsafeRecord",
    "HistoryEntry",
    "LeaderPosition",
    "LeaderRecord",
    "LocalRequestKind",
    "LocalState",
    "Lsn",
    "Member",
    "MemberName",
    "MemberTags",
    "PgConfig",
    "PgState",
    "RawCluster",
    "RawRecord",
    "RecordKind",
    "ReplicationRow",
    "RestartSchedule",
    "Role",
    "StandbySyncState",
    "SwitchoverRequest",
    "SyncMode",
    "SyncRecord",
    "SyncRole",
    "SyncStandbys",
    "WalSenderState",
    "format_lsn",
    "history_to_json",
    "parameter_value",
    "parse_cluster",
    "parse_config",
    "parse_failsafe",
    "parse_history",
    "parse_lsn",
    "parse_member",
    "parse_pg_config",
    "parse_position",
    "parse_restart",
    "parse_switchover",
    "parse_sync",
]
