"""Value types shared by every layer: DCS records, PostgreSQL snapshots, the published status.

Everything here is a frozen, slotted dataclass. Records read from the DCS are parsed at the
boundary by tolerant `parse_*` functions: a corrupt or foreign value is reported as a problem
and read as absent, never raised (DESIGN.md section 3, invariant 6).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import NewType, TypeVar

from agent.archiving import ArchiverStats, BackupPg, stats_from_dict
from agent.slot_config import PermanentSlot, SlotState, parse_slots, slots_to_json

_T = TypeVar("_T")

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


# --------------------------------------------------------------------------- local PostgreSQL


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicationRow:
    """One row of pg_stat_replication on a primary."""

    application_name: str
    state: WalSenderState
    sync_state: StandbySyncState
    sent_lsn: Lsn | None
    write_lsn: Lsn | None
    flush_lsn: Lsn | None
    replay_lsn: Lsn | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncStandbys:
    """What `synchronous_standby_names` asks of commits: `count` confirmations from `names`
    (the `count` first-listed connected ones with `quorum=False`, any `count` with True).
    `count == 0` (no names) is asynchronous replication."""

    quorum: bool
    count: int
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlData:
    """The parts of pg_controldata the agent needs while PostgreSQL is stopped."""

    system_id: str
    cluster_state: str  # "in production", "shut down", "shut down in recovery", ...
    timeline: int
    checkpoint_lsn: Lsn
    min_recovery_end_lsn: Lsn | None
    # The timeline of min_recovery_end_lsn: a standby that replayed into a newer timeline
    # before it stopped (and made no restartpoint there yet) is on that timeline.
    min_recovery_end_timeline: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalState:
    """One probe of the local PostgreSQL. `running=False` leaves the SQL fields None.

    `wal_lsn` is the member's WAL position for comparing candidates: on a primary the
    current write LSN; on a replica the larger of received and replayed, and, while it is not
    streaming and still replaying what it holds, the end of the valid WAL in its pg_wal (a
    restarted standby must not look further behind than it is: agent/postgres/probe.py).
    """

    data_dir_initialized: bool
    running: bool
    postmaster_pid: int | None = None
    # A postmaster process exists but did not answer the probe's query in time (stopped,
    # stuck in I/O): hung, not down. A server that answers with an error (starting up,
    # shutting down) is not unresponsive.
    unresponsive: bool = False
    # A primary that answers queries but could not commit the probe's heartbeat transaction
    # in time (storage under pg_wal hung or failing): it cannot acknowledge writes.
    commit_stalled: bool = False
    in_recovery: bool | None = None
    system_id: str | None = None
    timeline: int | None = None
    wal_lsn: Lsn | None = None
    receive_lsn: Lsn | None = None
    replay_lsn: Lsn | None = None
    streaming: bool = False
    upstream: str | None = None  # application-level name of who we stream from, if known
    replication: tuple[ReplicationRow, ...] = ()
    control: ControlData | None = None
    # current_setting('synchronous_standby_names') as parsed by the probe; None when not read.
    # A value the agent cannot read is reported as FIRST 1 ("*") (any standby: the worst case).
    sync_standbys: SyncStandbys | None = None
    # pg_settings: the parameters whose new value waits for a restart, and what the server
    # runs with for the settings a hot standby needs at least as high as its primary.
    pending_restart: tuple[str, ...] = ()
    hot_standby: tuple[tuple[str, int], ...] = ()
    # pg_stat_archiver (agent/archiving.py); None while archive_mode is off or unread.
    archiver: ArchiverStats | None = None
    # The major version of the local PostgreSQL binaries (`postgres --version`); None until
    # known. A member never clones, rewinds or streams from a leader of another major.
    pg_major: int | None = None
    slots: tuple[SlotState, ...] = ()  # pg_replication_slots

    @property
    def is_primary(self) -> bool:
        return self.running and self.in_recovery is False

    @property
    def is_replica(self) -> bool:
        return self.running and self.in_recovery is True


# --------------------------------------------------------------------------- DCS records


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberTags:
    nofailover: bool = False
    failover_priority: int = 1
    nosync: bool = False
    sync_priority: int = 1
    replicatefrom: MemberName | None = None
    clonefrom: bool = False
    noloadbalance: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    """A member's self-description, published in the DCS every cycle it changes."""

    name: MemberName
    role: Role
    state: PgState
    api_url: str
    host: str
    port: int
    timeline: int | None = None
    wal_lsn: Lsn | None = None
    replay_lsn: Lsn | None = None
    system_id: str | None = None
    tags: MemberTags = field(default_factory=MemberTags)
    # On a primary: the standbys pg_stat_replication reports as sync or quorum (so that each
    # replica can answer its own /sync probe from the DCS).
    sync_standbys: tuple[MemberName, ...] = ()
    # pre_promote vetoed this member's promotion within the last ttl: not a candidate now.
    promotion_vetoed: bool = False
    # Parameters whose new value waits for a restart, and the hot-standby settings its
    # PostgreSQL runs with (agent/pgparams.py reads the leader's and the replicas').
    pending_restart: tuple[str, ...] = ()
    hot_standby: tuple[tuple[str, int], ...] = ()
    # A replica: the member it was last pointed at (the leader, or its replicatefrom).
    upstream: MemberName | None = None
    archiver: ArchiverStats | None = None  # WAL archiving (agent/archiving.py)
    pg_major: int | None = None  # the major version of its PostgreSQL binaries, if known
    backup_pg: BackupPg | None = None  # with pgBackRest: its PostgreSQL for pgBackRest
    version: str = ""  # the DCS's version of this record; not part of the payload

    def to_json(self) -> str:
        return json.dumps(
            {
                **({"archiver": self.archiver.to_dict()} if self.archiver else {}),
                **({"backup_pg": self.backup_pg.to_dict()} if self.backup_pg else {}),
                "pending_restart": list(self.pending_restart),
                "hot_standby": dict(self.hot_standby),
                "pg_major": self.pg_major,
                "role": self.role.value,
                "state": self.state.value,
                "api_url": self.api_url,
                "host": self.host,
                "port": self.port,
                "timeline": self.timeline,
                "wal_lsn": self.wal_lsn,
                "replay_lsn": self.replay_lsn,
                "system_id": self.system_id,
                "tags": {
                    "nofailover": self.tags.nofailover,
                    "failover_priority": self.tags.failover_priority,
                    "nosync": self.tags.nosync,
                    "sync_priority": self.tags.sync_priority,
                    "replicatefrom": self.tags.replicatefrom,
                    "clonefrom": self.tags.clonefrom,
                    "noloadbalance": self.tags.noloadbalance,
                },
                "sync_standbys": list(self.sync_standbys),
                "promotion_vetoed": self.promotion_vetoed,
                "upstream": self.upstream,
            },
            sort_keys=True,
            separators=(",", ":"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderRecord:
    """Who holds the leader lease. `version` changes on every write of the record."""

    name: MemberName
    version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SwitchoverRequest:
    """An operator's request, written to the DCS so that every member sees the same one.

    `leader` is the member that must hand over (None for a failover to `candidate` when there
    is no healthy leader). `scheduled_at` is a wall-clock epoch, informational except for
    when the leader starts acting on it. `handover_lsn` is written by the leader last, just
    before it releases the lease: its shutdown checkpoint, which it saw the candidate receive.
    Until it is there the hand-over is not complete, and nobody may take the lease on the
    strength of this record alone (agent/decide/candidates.py, `named_candidate`).
    """

    leader: MemberName | None
    candidate: MemberName | None
    scheduled_at: float | None = None
    handover_lsn: Lsn | None = None
    version: str = ""

    def to_json(self) -> str:
        data: dict[str, object] = {
            "leader": self.leader,
            "candidate": self.candidate,
            "scheduled_at": self.scheduled_at,
        }
        if self.handover_lsn is not None:
            data["handover_lsn"] = self.handover_lsn
        return json.dumps(data, sort_keys=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEntry:
    """One timeline switch: `timeline` ended at `switch_lsn` when `new_leader` was promoted."""

    timeline: int
    switch_lsn: Lsn
    reason: str
    at: float
    new_leader: MemberName


@dataclass(frozen=True, slots=True, kw_only=True)
class PgConfig:
    """The `postgresql` section of the DCS `config` record: server parameters (sorted by
    name, values as PostgreSQL reads them) and pg_hba lines, shared by every member
    (agent/pgparams.py: where they stand among the other sources)."""

    parameters: tuple[tuple[str, str], ...] = ()
    pg_hba: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {"parameters": dict(self.parameters), "pg_hba": list(self.pg_hba)}


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartSchedule:
    """The DCS `restart` record: a rolling restart of `members`, due at `scheduled_at`
    (wall-clock epoch). Replicas go one at a time (`current`: the one restarting now, until
    it streams again), in name order; the leader goes last, by a switchover to a restarted
    replica or, with `in_place`, by a restart in place. `pending`: only members whose
    PostgreSQL waits for a restart. `done`: the members whose turn has passed
    (agent/restarts.py)."""

    members: tuple[MemberName, ...]
    scheduled_at: float
    pending: bool = False
    in_place: bool = False
    done: tuple[MemberName, ...] = ()
    current: MemberName | None = None
    # The leader's timeline when it marked itself `current` to hand over: found leading on a
    # later one, it was restarted (as a standby) and promoted since, not left unrestarted.
    current_timeline: int | None = None
    version: str = ""

    def to_json(self) -> str:
        data: dict[str, object] = {
            "members": list(self.members),
            "scheduled_at": self.scheduled_at,
            "pending": self.pending,
            "in_place": self.in_place,
            "done": list(self.done),
            "current": self.current,
        }
        if self.current_timeline is not None:
            data["current_timeline"] = self.current_timeline
        return json.dumps(data, sort_keys=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class DynamicConfig:
    """Cluster-wide settings kept in the DCS `config` record (shared by every member).

    `version` is "" when the record is absent (the bootstrapping leader then writes one
    seeded from its own settings).
    """

    paused: bool = False
    synchronous_mode: SyncMode = SyncMode.OFF
    synchronous_node_count: int = 1
    synchronous_mode_strict: bool = False
    maximum_lag_on_syncnode_bytes: int = -1  # -1: no lag limit for synchronous standbys
    # Keep the primary through a DCS outage while every other member confirms it over the
    # agents' REST API (DESIGN.md section 3; agent/decide/failsafe.py).
    failsafe_mode: bool = False
    postgresql: PgConfig = field(default_factory=PgConfig)
    # Permanent replication slots the leader keeps (agent/slot_config.py).
    slots: tuple[PermanentSlot, ...] = ()
    version: str = ""

    def to_json(self) -> str:
        extra: dict[str, object] = {}
        if self.postgresql != PgConfig():
            extra["postgresql"] = self.postgresql.to_dict()
        # `slots` only when some are declared: records of agents without slots stay as they were.
        if self.slots:
            extra["slots"] = slots_to_json(self.slots)
        return json.dumps(
            {
                **extra,
                "paused": self.paused,
                "synchronous_mode": self.synchronous_mode.value,
                "synchronous_node_count": self.synchronous_node_count,
                "synchronous_mode_strict": self.synchronous_mode_strict,
                "maximum_lag_on_syncnode_bytes": self.maximum_lag_on_syncnode_bytes,
                "failsafe_mode": self.failsafe_mode,
            },
            sort_keys=True,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderPosition:
    """The DCS `position` record: how far the leader's WAL was when it last wrote it
    (agent/decide/position.py). Unlike the leader's member record it is bound to no lease, so
    a member whose agent restarted after the leader died still knows how far behind it is
    (maximum_lag_on_failover_bytes), as Patroni's `/optime/leader` does."""

    leader: MemberName
    timeline: int | None
    wal_lsn: Lsn
    version: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {"leader": self.leader, "timeline": self.timeline, "wal_lsn": self.wal_lsn},
            sort_keys=True,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncRecord:
    """The DCS `sync` record: who may hold the latest acknowledged commit of `leader`'s term.

    Guarantee kept by the leader (agent/decide/sync.py, `plan_sync`): every commit
    acknowledged while this record stands is held by at least `quorum` of `members`. So a
    candidate that sees `len(members) - quorum + 1` of them (itself included) and is the most
    advanced of those holds every acknowledged commit (R + W > N). `quorum == 0` (or no
    members) means asynchronous replication: no guarantee, no restriction on failover.
    """

    leader: MemberName
    members: tuple[MemberName, ...] = ()
    quorum: int = 0
    version: str = ""

    @property
    def is_synchronous(self) -> bool:
        return self.quorum > 0 and bool(self.members)

    def to_json(self) -> str:
        return json.dumps(
            {"leader": self.leader, "members": list(self.members), "quorum": self.quorum},
            sort_keys=True,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FailsafeRecord:
    """The DCS `failsafe` record: the members a leader in failsafe mode consults over their
    REST API when the DCS is unreachable, with their API addresses.

    Written by the leader (only while it can reach the DCS) whenever the member list changes.
    While it stands, only its `leader` and its `members` may take over
    (agent/decide/failsafe.py): a member the leader would not consult never promised
    anything, so it must not promote.
    """

    leader: MemberName
    members: tuple[tuple[MemberName, str], ...] = ()  # (name, api_url), sorted by name
    version: str = ""

    def names(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.members)

    def to_json(self) -> str:
        return json.dumps(
            {"leader": self.leader, "members": {name: url for name, url in self.members}},
            sort_keys=True,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterView:
    """One consistent read of the whole cluster from the DCS.

    `initialize` is None when no member has claimed the cluster yet, "" when one claimed it
    but has not yet written the system identifier, else the system identifier.
    """

    initialize: str | None = None
    initialize_version: str = ""
    leader: LeaderRecord | None = None
    members: tuple[Member, ...] = ()
    switchover: SwitchoverRequest | None = None
    history: tuple[HistoryEntry, ...] = ()
    history_version: str = ""
    config: DynamicConfig = field(default_factory=DynamicConfig)
    sync: SyncRecord | None = None
    sync_version: str = ""  # of the `sync` record, also when it did not parse
    failsafe: FailsafeRecord | None = None
    failsafe_version: str = ""  # of the `failsafe` record, also when it did not parse
    restart: RestartSchedule | None = None
    position: LeaderPosition | None = None
    position_version: str = ""  # of the `position` record, also when it did not parse

    def member(self, name: str) -> Member | None:
        for member in self.members:
            if member.name == name:
                return member
        return None

    @property
    def leader_member(self) -> Member | None:
        return self.member(self.leader.name) if self.leader is not None else None


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True, kw_only=True)
class RawRecord:
    """A record as a backend stores it: a string value and an opaque version."""

    value: str
    version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RawCluster:
    """What a backend read, before parsing. Member keys are member names."""

    leader: RawRecord | None = None
    members: Mapping[str, RawRecord] = field(default_factory=dict)
    records: Mapping[RecordKind, RawRecord] = field(default_factory=dict)


def _int_or_none(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what}: expected an integer, got {value!r}")
    return value


def _list(data: Mapping[str, object], key: str) -> list[object]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise ValueError(f"{key} is not a list")
    return value


def parameter_value(value: object) -> str:
    """A parameter value as PostgreSQL reads it: strings as they are, numbers in decimal,
    booleans as on/off. Raises ValueError for anything else (null, lists, objects)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, number or boolean, got {value!r}")


def parse_pg_config(data: object) -> PgConfig:
    """The `postgresql` section of the config record; raises ValueError when malformed."""
    if data is None:
        return PgConfig()
    if not isinstance(data, dict):
        raise ValueError("postgresql is not an object")
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise ValueError("postgresql.parameters is not an object")
    hba = data.get("pg_hba") or []
    if not isinstance(hba, list):
        raise ValueError("postgresql.pg_hba is not a list")
    return PgConfig(
        parameters=tuple(
            sorted((_str(k, "parameter"), parameter_value(v)) for k, v in params.items())
        ),
        pg_hba=tuple(_str(line, "pg_hba") for line in hba),
    )


def parse_restart(raw: RawRecord) -> RestartSchedule:
    data = json.loads(raw.value)
    if not isinstance(data, dict):
        raise ValueError("restart record is not an object")
    at = data.get("scheduled_at")
    if isinstance(at, bool) or not isinstance(at, int | float) or not _is_utc_instant(at):
        raise ValueError("scheduled_at is not a time")
    current = data.get("current")
    return RestartSchedule(
        members=tuple(MemberName(_str(n, "members")) for n in _list(data, "members")),
        scheduled_at=float(at),
        pending=data.get("pending") is True,
        in_place=data.get("in_place") is True,
        done=tuple(MemberName(_str(n, "done")) for n in _list(data, "done")),
        current=MemberName(_str(current, "current")) if current is not None else None,
        current_timeline=_int_or_none(data.get("current_timeline")),
        version=raw.version,
    )


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected a string, got {value!r}")
    return value


def _name_or_none(value: object, what: str) -> MemberName | None:
    return MemberName(_str(value, what)) if value is not None else None


def parse_member(name: str, raw: RawRecord) -> Member:
    """Parse a member record; raises ValueError on anything malformed."""
    data = json.loads(raw.value)
    if not isinstance(data, dict):
        raise ValueError("member record is not an object")
    tags_raw = data.get("tags") or {}
    if not isinstance(tags_raw, dict):
        raise ValueError("tags is not an object")
    tags = MemberTags(
        nofailover=bool(tags_raw.get("nofailover", False)),
        failover_priority=_int_or_none(tags_raw.get("failover_priority", 1)) or 0,
        nosync=bool(tags_raw.get("nosync", False)),
        sync_priority=_int_or_none(tags_raw.get("sync_priority", 1)) or 0,
        replicatefrom=_name_or_none(tags_raw.get("replicatefrom"), "replicatefrom"),
        clonefrom=tags_raw.get("clonefrom") is True,
        noloadbalance=tags_raw.get("noloadbalance") is True,
    )
    port = _int_or_none(data.get("port"))
    if port is None:
        raise ValueError("port missing")
    system_id = data.get("system_id")
    sync_raw = data.get("sync_standbys") or []
    if not isinstance(sync_raw, list):
        raise ValueError("sync_standbys is not a list")
    hot = data.get("hot_standby") or {}
    if not isinstance(hot, dict):
        raise ValueError("hot_standby is not an object")
    archiver = data.get("archiver")
    return Member(
        name=MemberName(name),
        role=Role(data["role"]),
        state=PgState(data["state"]),
        api_url=_str(data.get("api_url"), "api_url"),
        host=_str(data.get("host"), "host"),
        port=port,
        timeline=_int_or_none(data.get("timeline")),
        wal_lsn=_int_or_none(data.get("wal_lsn")),
        replay_lsn=_int_or_none(data.get("replay_lsn")),
        system_id=_str(system_id, "system_id") if system_id is not None else None,
        tags=tags,
        sync_standbys=tuple(MemberName(_str(n, "sync_standbys")) for n in sync_raw),
        promotion_vetoed=data.get("promotion_vetoed") is True,
        pending_restart=tuple(_str(n, "pending_restart") for n in _list(data, "pending_restart")),
        hot_standby=tuple(
            sorted((_str(k, "hot_standby"), _int(v, "hot_standby")) for k, v in hot.items())
        ),
        upstream=_name_or_none(data.get("upstream"), "upstream"),
        archiver=stats_from_dict(archiver) if isinstance(archiver, dict) else None,
        pg_major=_int_or_none(data.get("pg_major")),
        backup_pg=BackupPg.from_dict(data.get("backup_pg")),
        version=raw.version,
    )


def _is_utc_instant(epoch: float) -> bool:
    """`epoch` names a date that datetime can show (the API renders it as ISO 8601)."""
    try:
        datetime.fromtimestamp(epoch, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return False
    return True


def parse_switchover(raw: RawRecord) -> SwitchoverRequest:
    data = json.loads(raw.value)
    if not isinstance(data, dict):
        raise ValueError("switchover record is not an object")
    leader, candidate, at = data.get("leader"), data.get("candidate"), data.get("scheduled_at")
    if leader is None and candidate is None:
        raise ValueError("switchover names neither leader nor candidate")
    if at is not None and (isinstance(at, bool) or not isinstance(at, int | float)):
        raise ValueError("scheduled_at is not a number")
    if at is not None and not _is_utc_instant(float(at)):
        raise ValueError("scheduled_at is not a time between years 1 and 9999 (UTC)")
    lsn = data.get("handover_lsn")
    if lsn is not None and (isinstance(lsn, bool) or not isinstance(lsn, int) or lsn < 0):
        raise ValueError("handover_lsn is not a WAL position")
    return SwitchoverRequest(
        leader=MemberName(_str(leader, "leader")) if leader is not None else None,
        candidate=MemberName(_str(candidate, "candidate")) if candidate is not None else None,
        scheduled_at=float(at) if at is not None else None,
        handover_lsn=Lsn(lsn) if lsn is not None else None,
        version=raw.version,
    )


def parse_history(raw: RawRecord) -> tuple[HistoryEntry, ...]:
    data = json.loads(raw.value)
    if not isinstance(data, list):
        raise ValueError("history is not a list")
    entries = []
    for item in data:
        if not isinstance(item, dict):
            raise ValueError("history entry is not an object")
        entries.append(
            HistoryEntry(
                timeline=int(item["timeline"]),
                switch_lsn=int(item["switch_lsn"]),
                reason=_str(item.get("reason", ""), "reason"),
                at=float(item.get("at", 0.0)),
                new_leader=MemberName(_str(item["new_leader"], "new_leader")),
            )
        )
    return tuple(entries)


def history_to_json(entries: tuple[HistoryEntry, ...]) -> str:
    return json.dumps(
        [
            {
                "timeline": e.timeline,
                "switch_lsn": e.switch_lsn,
                "reason": e.reason,
                "at": e.at,
                "new_leader": e.new_leader,
            }
            for e in entries
        ]
    )


def parse_config(raw: RawRecord) -> DynamicConfig:
    data = json.loads(raw.value)
    if not isinstance(data, dict):
        raise ValueError("config record is not an object")
    paused = data.get("paused", False)
    if not isinstance(paused, bool):
        raise ValueError("paused is not a boolean")
    mode = SyncMode(data.get("synchronous_mode", "off"))
    count = _int_or_none(data.get("synchronous_node_count", 1))
    if count is None or count < 1:
        raise ValueError("synchronous_node_count must be an integer >= 1")
    strict = data.get("synchronous_mode_strict", False)
    if not isinstance(strict, bool):
        raise ValueError("synchronous_mode_strict is not a boolean")
    max_lag = _int_or_none(data.get("maximum_lag_on_syncnode_bytes", -1))
    if max_lag is None or max_lag < -1:
        raise ValueError("maximum_lag_on_syncnode_bytes must be an integer >= -1")
    failsafe = data.get("failsafe_mode", False)
    if not isinstance(failsafe, bool):
        raise ValueError("failsafe_mode is not a boolean")
    return DynamicConfig(
        paused=paused,
        synchronous_mode=mode,
        synchronous_node_count=count,
        synchronous_mode_strict=strict,
        maximum_lag_on_syncnode_bytes=max_lag,
        failsafe_mode=failsafe,
        postgresql=parse_pg_config(data.get("postgresql")),
        slots=parse_slots(data.get("slots")),
        version=raw.version,
    )


def parse_failsafe(raw: RawRecord) -> FailsafeRecord:
    data = json.loads(raw.value)
    if not isinstance(data, dict):
        raise ValueError("failsafe record is not an object")
    members = data.get("members")
    if not isinstance(members, dict):
        raise ValueError("members is not an object of name: api_url")
    pairs = []
    for name, url in members.items():
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"members.{name}: api_url is not an http(s) URL")
        pairs.append((MemberName(_str(name, "members")), url))
    return FailsafeRecord(
        leader=MemberName(_str(data.get("leader"), "leader")),
        members=tuple(sorted(pairs)),
        version=raw.version,
    )


def parse_position(raw: RawRecord) -> LeaderPosition:
    data = json.loads(raw.value)
    if not isinstance(data, dict):
        raise ValueError("position record is not an object")
    lsn = _int(data.get("wal_lsn"), "wal_lsn")
    if lsn < 0:
        raise ValueError("wal_lsn is not a WAL position")
    return LeaderPosition(
        leader=MemberName(_str(data.get("leader"), "leader")),
        timeline=_int_or_none(data.get("timeline")),
        wal_lsn=Lsn(lsn),
        version=raw.version,
    )


def parse_sync(raw: RawRecord) -> SyncRecord:
    data = json.loads(raw.value)
    if not isinstance(data, dict):
        raise ValueError("sync record is not an object")
    members = data.get("members") or []
    if not isinstance(members, list):
        raise ValueError("members is not a list")
    quorum = _int_or_none(data.get("quorum", 0))
    if quorum is None or quorum < 0:
        raise ValueError("quorum must be an integer >= 0")
    return SyncRecord(
        leader=MemberName(_str(data.get("leader"), "leader")),
        members=tuple(MemberName(_str(m, "members")) for m in members),
        quorum=quorum,
        version=raw.version,
    )


def parse_cluster(raw: RawCluster) -> tuple[ClusterView, tuple[str, ...]]:
    """Parse everything a backend read. Returns the view and a list of problems to log.

    A record that does not parse is read as absent (the leader key excepted: its value is
    only a member name, and an empty one is a problem and reads as no leader).
    """
    problems: list[str] = []

    def attempt(what: str, parse: Callable[..., _T], *args: object) -> _T | None:
        try:
            return parse(*args)
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{what}: {exc}")
            return None

    leader = None
    if raw.leader is not None:
        name = raw.leader.value.strip()
        if name and len(name) <= 253 and name.isprintable():
            leader = LeaderRecord(name=MemberName(name), version=raw.leader.version)
        else:
            problems.append(f"leader: unusable member name {raw.leader.value[:40]!r}")

    members = []
    for name, record in sorted(raw.members.items()):
        member = attempt(f"members/{name}", parse_member, name, record)
        if member is not None:
            members.append(member)

    initialize = None
    initialize_version = ""
    if (rec := raw.records.get(RecordKind.INITIALIZE)) is not None:
        initialize, initialize_version = rec.value.strip(), rec.version

    switchover = None
    if (rec := raw.records.get(RecordKind.SWITCHOVER)) is not None:
        switchover = attempt("switchover", parse_switchover, rec)

    history: tuple[HistoryEntry, ...] = ()
    history_version = ""
    if (rec := raw.records.get(RecordKind.HISTORY)) is not None:
        history_version = rec.version
        history = attempt("history", parse_history, rec) or ()

    config = DynamicConfig()
    if (rec := raw.records.get(RecordKind.CONFIG)) is not None:
        config = attempt("config", parse_config, rec) or DynamicConfig(version=rec.version)

    sync = None
    sync_version = ""
    if (rec := raw.records.get(RecordKind.SYNC)) is not None:
        sync_version = rec.version
        sync = attempt("sync", parse_sync, rec)
        if sync is None:
            # Unreadable: assume the worst for failover (no one is known to hold every
            # commit), see agent/decide/sync.py.
            sync = SyncRecord(leader=MemberName(""), members=(), quorum=1, version=rec.version)

    failsafe = None
    failsafe_version = ""
    if (rec := raw.records.get(RecordKind.FAILSAFE)) is not None:
        # Unreadable: read as absent (logged), as if the leader had not written one yet.
        failsafe_version = rec.version
        failsafe = attempt("failsafe", parse_failsafe, rec)

    restart = None
    if (rec := raw.records.get(RecordKind.RESTART)) is not None:
        restart = attempt("restart", parse_restart, rec)
        if restart is None:
            # Unreadable: read as absent, but keep its version so that it can be deleted.
            restart = RestartSchedule(members=(), scheduled_at=0.0, version=rec.version)

    position = None
    position_version = ""
    if (rec := raw.records.get(RecordKind.POSITION)) is not None:
        # Unreadable: read as absent (no lag limit known from it); the leader overwrites it.
        position_version = rec.version
        position = attempt("position", parse_position, rec)

    view = ClusterView(
        initialize=initialize,
        initialize_version=initialize_version,
        leader=leader,
        members=tuple(members),
        switchover=switchover,
        history=history,
        history_version=history_version,
        config=config,
        sync=sync,
        sync_version=sync_version,
        failsafe=failsafe,
        failsafe_version=failsafe_version,
        restart=restart,
        position=position,
        position_version=position_version,
    )
    return view, tuple(problems)


# --------------------------------------------------------------------------- agent status


class LocalRequestKind(StrEnum):
    """Operator requests that concern only this member (not written to the DCS)."""

    RESTART = "restart"
    REINITIALIZE = "reinitialize"
    RELOAD = "reload"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStatus:
    """What the agent publishes after every cycle. The API, metrics and pod labels read only this.

    `fence_remaining_s` is the time left before this member's fencing deadline (None when it is
    not primary). `lag_bytes` is the distance from the leader's published WAL position.
    """

    name: MemberName
    cluster: str
    role: Role
    state: PgState
    api_url: str
    timeline: int | None = None
    wal_lsn: Lsn | None = None
    replay_lsn: Lsn | None = None
    lag_bytes: int | None = None
    leader: MemberName | None = None
    lease_held: bool = False
    lease_age_s: float | None = None  # since the last successful renewal was sent
    fence_remaining_s: float | None = None
    dcs_ok: bool = False
    paused: bool = False
    pending: str | None = None  # the long action in flight, if any
    last_decision: str = ""
    last_reason: str = ""
    cycle: int = 0
    observed_at: float = 0.0  # monotonic
    cluster_view: ClusterView | None = None
    replication: tuple[ReplicationRow, ...] = ()
    sync_role: SyncRole = SyncRole.NONE
    sync_fallback: bool = False  # leader: synchronous mode asked, but commits are asynchronous
    failsafe_active: bool = False  # primary kept by its members' confirmation (DCS down)
    promotion_vetoed: bool = False  # pre_promote vetoed our promotion within the last ttl
    pending_restart: tuple[str, ...] = ()  # parameters whose new value waits for a restart
    upstream: MemberName | None = None  # a replica: whom it was last pointed at
    noloadbalance: bool = False  # tagged: /replica and a replica's /read-only answer 503
    archiver: ArchiverStats | None = None  # pg_stat_archiver; None: archiving off
    slots: tuple[SlotState, ...] = ()  # the local server's replication slots
