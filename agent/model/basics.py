"""The basic values: member names, WAL positions, roles and PostgreSQL states, record kinds."""

from __future__ import annotations

from enum import StrEnum
from typing import NewType

MemberName = NewType("MemberName", str)
"""A member's name: unique in its cluster, stable across restarts (a pod name in Kubernetes)."""

Lsn = int
"""A WAL position in bytes (asyncpg returns pg_lsn as int)."""


class Role(StrEnum):
    PRIMARY = "primary"
    REPLICA = "replica"
    UNINITIALIZED = "uninitialized"
    UNKNOWN = "unknown"


class PgState(StrEnum):
    """What a member says of its PostgreSQL, for people and for peers' health checks."""

    RUNNING = "running"
    STREAMING = "streaming"
    STARTING = "starting"
    STOPPED = "stopped"
    CRASHED = "crashed"
    BOOTSTRAPPING = "bootstrapping"
    CLONING = "cloning"
    REWINDING = "rewinding"
    FENCED = "fenced"
    UNKNOWN = "unknown"


class SyncMode(StrEnum):
    """`synchronous_mode` of the DCS config record."""

    OFF = "off"
    ON = "on"  # FIRST k (...): the k listed standbys confirm every commit
    QUORUM = "quorum"  # ANY k (...): any k of the listed standbys confirm every commit


class SyncRole(StrEnum):
    """A member's part in synchronous replication, as its /sync, /quorum, /async probes see it."""

    SYNC = "sync"  # a FIRST-k synchronous standby
    QUORUM = "quorum"  # a member of an ANY-k quorum
    ASYNC = "async"  # a replica that no commit waits for
    NONE = "none"  # the primary, or not a running replica


class WalSenderState(StrEnum):
    """`pg_stat_replication.state` of one walsender; UNKNOWN for a value this version does
    not know (read tolerantly, never raised)."""

    STARTUP = "startup"
    CATCHUP = "catchup"
    STREAMING = "streaming"
    BACKUP = "backup"
    STOPPING = "stopping"
    UNKNOWN = "unknown"


class StandbySyncState(StrEnum):
    """`pg_stat_replication.sync_state`: whether commits wait for this standby."""

    ASYNC = "async"
    POTENTIAL = "potential"
    SYNC = "sync"
    QUORUM = "quorum"
    UNKNOWN = "unknown"

    @property
    def confirms_commits(self) -> bool:
        """A standby commits wait for (FIRST k: sync; ANY k: quorum)."""
        return self in (StandbySyncState.SYNC, StandbySyncState.QUORUM)


class RecordKind(StrEnum):
    """Cluster-wide records besides the leader key and the member records."""

    INITIALIZE = "initialize"
    CONFIG = "config"
    SYNC = "sync"
    SWITCHOVER = "switchover"
    HISTORY = "history"
    FAILSAFE = "failsafe"
    RESTART = "restart"
    # The leader's last WAL position, bound to no lease (it outlives the leader): a heartbeat
    # that wakes nobody (agent/dcs/base.py, point 9).
    POSITION = "position"


# Records whose writes do not count as changes for `wait_for_change` (base.py, point 8).
QUIET_RECORDS = frozenset({RecordKind.POSITION})


def format_lsn(lsn: Lsn | None) -> str:
    """PostgreSQL's textual form, `16/B374D848`."""
    if lsn is None:
        return "-"
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> Lsn:
    """Inverse of `format_lsn`; raises ValueError on anything else."""
    high, sep, low = text.partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)
