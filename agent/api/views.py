"""JSON documents the API serves, built from the published status and the DCS view (pure).

Times are ISO-8601 in UTC; LSNs are given both as byte positions (integers, for programs) and
in PostgreSQL's `X/Y` text form (for people).
"""

from __future__ import annotations

from datetime import UTC, datetime

from agent.archiving import archiving_view
from agent.model import (
    AgentStatus,
    ClusterView,
    DynamicConfig,
    HistoryEntry,
    Member,
    RestartSchedule,
    Role,
    SwitchoverRequest,
    SyncMode,
    format_lsn,
)

Json = dict[str, object]
"""A JSON object about to be serialized; never read back by other modules."""


def iso_utc(epoch: float | None) -> str | None:
    """`2026-11-28T00:19:24.000000+00:00`, or None."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()


def lag_behind(member: Member, leader: Member | None) -> int | None:
    """Bytes `member` is behind the leader's published WAL position (0 for the leader itself;
    None when either position is unknown). Never negative: a replica that reports a position
    past the leader's (records are published at different moments) is 0 behind."""
    if leader is None or member.wal_lsn is None or leader.wal_lsn is None:
        return None
    if member.name == leader.name:
        return 0
    return max(0, leader.wal_lsn - member.wal_lsn)


def status_body(status: AgentStatus, *, age_s: float, wall_now: float = 0.0) -> Json:
    """This member's own state, the body of every health probe (`wall_now`: the clock's
    wall time, for the age of the last archived WAL segment)."""
    return {
        "name": status.name,
        "cluster": status.cluster,
        "role": status.role.value,
        "state": status.state.value,
        "leader": status.leader,
        "lease_held": status.lease_held,
        "timeline": status.timeline,
        "wal_lsn": status.wal_lsn,
        "replay_lsn": status.replay_lsn,
        "lag_bytes": status.lag_bytes,
        "fence_remaining_s": status.fence_remaining_s,
        "dcs_ok": status.dcs_ok,
        "paused": status.paused,
        "pending": status.pending,
        "cycle": status.cycle,
        "status_age_s": round(age_s, 3),
        "sync_role": status.sync_role.value,
        "failsafe_active": status.failsafe_active,
        "pending_restart": list(status.pending_restart),
        "archiving": archiving_view(status.archiver, wall_now),
        # Slots whose WAL PostgreSQL may remove or has removed (docs/slots.md).
        "slots_far_behind": sorted(slot.name for slot in status.slots if slot.far_behind),
    }


def switchover_body(request: SwitchoverRequest | None) -> Json | None:
    if request is None:
        return None
    return {
        "leader": request.leader,
        "candidate": request.candidate,
        "scheduled_at": iso_utc(request.scheduled_at),
    }


def sync_role_in(member: Member, view: ClusterView) -> str:
    """`sync`, `quorum` or `async` for a replica (as the leader reports it and the `sync`
    record confirms), `leader` for the leader, `none` for a member not running as a replica."""
    leader = view.leader_member
    if leader is not None and member.name == leader.name:
        return "leader"
    if member.role is not Role.REPLICA:
        return "none"
    record = view.sync
    if (
        leader is not None
        and member.name in leader.sync_standbys
        and record is not None
        and record.quorum > 0
        and record.leader == leader.name
        and member.name in record.members
    ):
        return "quorum" if view.config.synchronous_mode is SyncMode.QUORUM else "sync"
    return "async"


def member_body(member: Member, leader: Member | None, wall_now: float = 0.0) -> Json:
    return {
        "name": member.name,
        "role": member.role.value,
        "state": member.state.value,
        "host": member.host,
        "port": member.port,
        "api_url": member.api_url,
        "timeline": member.timeline,
        "wal_lsn": member.wal_lsn,
        "wal_lsn_text": format_lsn(member.wal_lsn) if member.wal_lsn is not None else None,
        "lag_bytes": lag_behind(member, leader),
        "leader": leader is not None and member.name == leader.name,
        "pending_restart": list(member.pending_restart),
        "tags": {
            "nofailover": member.tags.nofailover,
            "failover_priority": member.tags.failover_priority,
            "nosync": member.tags.nosync,
            "sync_priority": member.tags.sync_priority,
            "replicatefrom": member.tags.replicatefrom,
            "clonefrom": member.tags.clonefrom,
            "noloadbalance": member.tags.noloadbalance,
        },
        "promotion_vetoed": member.promotion_vetoed,
        "upstream": member.upstream,
        "archiving": archiving_view(member.archiver, wall_now),
    }


def cluster_body(cluster: str, view: ClusterView, wall_now: float = 0.0) -> Json:
    """The whole cluster: members (leader first, then by name), pending switchover, pause."""
    leader = view.leader_member
    members = sorted(view.members, key=lambda m: (leader is None or m.name != leader.name, m.name))
    return {
        "cluster": cluster,
        "leader": view.leader.name if view.leader is not None else None,
        "members": [
            {**member_body(m, leader, wall_now), "sync_role": sync_role_in(m, view)}
            for m in members
        ],
        "switchover": switchover_body(view.switchover),
        "paused": view.config.paused,
        "synchronous_mode": view.config.synchronous_mode.value,
        "sync": sync_body(view),
        "failsafe_mode": view.config.failsafe_mode,
        "failsafe": failsafe_body(view),
        "restart": restart_body(view.restart),
    }


def restart_body(schedule: RestartSchedule | None) -> Json | None:
    """A rolling restart, scheduled or under way."""
    if schedule is None:
        return None
    return {
        "members": list(schedule.members),
        "scheduled_at": iso_utc(schedule.scheduled_at),
        "pending": schedule.pending,
        "in_place": schedule.in_place,
        "done": list(schedule.done),
        "current": schedule.current,
    }


def failsafe_body(view: ClusterView) -> Json | None:
    record = view.failsafe
    if record is None:
        return None
    return {"leader": record.leader, "members": [name for name, _ in record.members]}


def history_entry_body(entry: HistoryEntry) -> Json:
    return {
        "timeline": entry.timeline,
        "switch_lsn": entry.switch_lsn,
        "switch_lsn_text": format_lsn(entry.switch_lsn),
        "reason": entry.reason,
        "at": iso_utc(entry.at),
        "new_leader": entry.new_leader,
    }


def history_body(view: ClusterView) -> Json:
    return {"history": [history_entry_body(e) for e in view.history]}


def config_body(config: DynamicConfig) -> Json:
    return {
        "paused": config.paused,
        "synchronous_mode": config.synchronous_mode.value,
        "synchronous_node_count": config.synchronous_node_count,
        "synchronous_mode_strict": config.synchronous_mode_strict,
        "maximum_lag_on_syncnode_bytes": config.maximum_lag_on_syncnode_bytes,
        "failsafe_mode": config.failsafe_mode,
        "postgresql": config.postgresql.to_dict(),
    }


def sync_body(view: ClusterView) -> Json | None:
    record = view.sync
    if record is None:
        return None
    return {"leader": record.leader, "members": list(record.members), "quorum": record.quorum}
