"""Parsing DCS records at the boundary: tolerant `parse_*` functions read a corrupt or
foreign value as absent and report it as a problem, never raise (DESIGN.md section 3,
invariant 6)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from agent.archiving import BackupPg, stats_from_dict
from agent.model.basics import Lsn, MemberName, PgState, RecordKind, Role, SyncMode
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
from agent.slot_config import parse_slots

_T = TypeVar("_T")


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


class _RecordReader:
    """Parses the records of one read; what does not parse is read as absent and kept in
    `problems`, to log."""

    def __init__(self, records: Mapping[RecordKind, RawRecord]) -> None:
        self._records = records
        self.problems: list[str] = []

    def attempt(self, what: str, parse: Callable[..., _T], *args: object) -> _T | None:
        try:
            return parse(*args)
        except (ValueError, KeyError, TypeError) as exc:
            self.problems.append(f"{what}: {exc}")
            return None

    def present(self, kind: RecordKind) -> bool:
        return kind in self._records

    def record(self, kind: RecordKind, parse: Callable[[RawRecord], _T]) -> tuple[_T | None, str]:
        """The parsed record of `kind` and its version: (None, "") when absent, (None, its
        version) when unreadable."""
        rec = self._records.get(kind)
        if rec is None:
            return None, ""
        return self.attempt(f"{kind}", parse, rec), rec.version


def _parse_leader(raw: RawRecord | None, reader: _RecordReader) -> LeaderRecord | None:
    if raw is None:
        return None
    name = raw.value.strip()
    if name and len(name) <= 253 and name.isprintable():
        return LeaderRecord(name=MemberName(name), version=raw.version)
    reader.problems.append(f"leader: unusable member name {raw.value[:40]!r}")
    return None


def _parse_members(raw: Mapping[str, RawRecord], reader: _RecordReader) -> tuple[Member, ...]:
    members = []
    for name, record in sorted(raw.items()):
        member = reader.attempt(f"members/{name}", parse_member, name, record)
        if member is not None:
            members.append(member)
    return tuple(members)


def parse_cluster(raw: RawCluster) -> tuple[ClusterView, tuple[str, ...]]:
    """Parse everything a backend read. Returns the view and a list of problems to log.

    A record that does not parse is read as absent (the leader key excepted: its value is
    only a member name, and an empty one is a problem and reads as no leader).
    """
    reader = _RecordReader(raw.records)
    leader = _parse_leader(raw.leader, reader)
    members = _parse_members(raw.members, reader)

    initialize = None
    initialize_version = ""
    if (rec := raw.records.get(RecordKind.INITIALIZE)) is not None:
        initialize, initialize_version = rec.value.strip(), rec.version

    switchover, _ = reader.record(RecordKind.SWITCHOVER, parse_switchover)
    history, history_version = reader.record(RecordKind.HISTORY, parse_history)
    config, config_version = reader.record(RecordKind.CONFIG, parse_config)
    if config is None:
        config = DynamicConfig(version=config_version)

    sync, sync_version = reader.record(RecordKind.SYNC, parse_sync)
    if sync is None and reader.present(RecordKind.SYNC):
        # Unreadable: assume the worst for failover (no one is known to hold every
        # commit), see agent/decide/sync.py.
        sync = SyncRecord(leader=MemberName(""), members=(), quorum=1, version=sync_version)

    # Unreadable: read as absent (logged), as if the leader had not written one yet.
    failsafe, failsafe_version = reader.record(RecordKind.FAILSAFE, parse_failsafe)

    restart, restart_version = reader.record(RecordKind.RESTART, parse_restart)
    if restart is None and reader.present(RecordKind.RESTART):
        # Unreadable: read as absent, but keep its version so that it can be deleted.
        restart = RestartSchedule(members=(), scheduled_at=0.0, version=restart_version)

    # Unreadable: read as absent (no lag limit known from it); the leader overwrites it.
    position, position_version = reader.record(RecordKind.POSITION, parse_position)

    view = ClusterView(
        initialize=initialize,
        initialize_version=initialize_version,
        leader=leader,
        members=members,
        switchover=switchover,
        history=history or (),
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
    return view, tuple(reader.problems)
