"""The DCS records as values (member, leader, switchover, history, configuration, ...) and
`ClusterView`, the whole cluster as read at once; each record renders its own JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from agent.archiving import ArchiverStats, BackupPg
from agent.model.basics import Lsn, MemberName, PgState, Role, SyncMode
from agent.slot_config import PermanentSlot, slots_to_json


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
