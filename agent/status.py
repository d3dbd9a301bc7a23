"""Pure: what a cycle publishes. `status_of()` builds the AgentStatus that the API, the
metrics and the pod labels read; `member_of_status()` this member's DCS record from it.

No I/O and no clock: `now` is handed in, like everything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.actions import Action, Bootstrap, Clone, Decision, Rewind
from agent.archiving import BackupPg
from agent.decide import (
    Memory,
    Pending,
    failsafe_active,
    fence_deadline,
    pg_state_of,
    promotion_vetoed,
    sync_fallback,
    sync_role_of,
)
from agent.model import (
    AgentStatus,
    ClusterView,
    LocalState,
    Member,
    MemberName,
    MemberTags,
    PgState,
    Role,
    SyncRole,
)
from agent.settings import Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class CycleValues:
    """What one cycle saw and did, as the publisher needs it."""

    view: ClusterView | None  # this cycle's DCS read (None: unreadable)
    last_view: ClusterView | None  # the last view read (shown while the DCS is down)
    local: LocalState
    pending: Pending | None
    memory: Memory
    decision: Decision
    cycle: int
    now: float  # monotonic


def state_during(action: Action, state: PgState) -> PgState:
    match action:
        case Bootstrap():
            return PgState.BOOTSTRAPPING
        case Clone():
            return PgState.CLONING
        case Rewind():
            return PgState.REWINDING
        case _:
            return state


def role_of(local: LocalState) -> Role:
    if local.is_primary:
        return Role.PRIMARY
    if local.running:
        return Role.REPLICA
    return Role.UNINITIALIZED if not local.data_dir_initialized else Role.UNKNOWN


def lease_held(c: CycleValues, settings: Settings, leader: MemberName | None) -> bool:
    """While the DCS cannot be read, a lease we renewed in time (or the members' failsafe
    confirmation) still counts: probes and pod labels keep routing to us until the fencing
    deadline, as the fencer would stop us then."""
    deadline = fence_deadline(c.memory, settings)
    return (
        deadline is not None
        and c.now < deadline
        and (
            leader == settings.name
            or (c.view is None and c.memory.lease_sent_at is not None)
            or (c.local.is_primary and failsafe_active(c.memory, c.now, settings))
        )
    )


def _lag(view: ClusterView | None, local: LocalState) -> int | None:
    leader_member = view.leader_member if view is not None else None
    if leader_member is None or leader_member.wal_lsn is None or not local.running:
        return None
    mine = local.replay_lsn if local.is_replica else local.wal_lsn
    return max(0, leader_member.wal_lsn - mine) if mine is not None else None


def status_of(c: CycleValues, settings: Settings) -> AgentStatus:
    s = settings
    local, view, memory, now = c.local, c.view, c.memory, c.now
    state = pg_state_of(local)
    if c.pending is not None:
        state = state_during(c.pending.action, state)
    deadline = fence_deadline(memory, s)
    leader = view.leader.name if view is not None and view.leader is not None else None
    lag = _lag(view, local)
    return AgentStatus(
        name=MemberName(s.name),
        cluster=s.cluster,
        role=role_of(local),
        state=state,
        api_url=s.api.url,
        timeline=local.timeline,
        wal_lsn=local.wal_lsn,
        replay_lsn=local.replay_lsn,
        lag_bytes=lag if local.is_replica else 0 if local.is_primary else None,
        leader=leader,
        lease_held=lease_held(c, s, leader),
        lease_age_s=(now - memory.lease_sent_at) if memory.lease_sent_at else None,
        fence_remaining_s=(deadline - now) if deadline is not None else None,
        dcs_ok=view is not None,
        paused=view.config.paused if view is not None else False,
        pending=type(c.pending.action).__name__ if c.pending else None,
        last_decision=c.decision.summary,
        last_reason=c.decision.reason,
        cycle=c.cycle,
        observed_at=now,
        cluster_view=view if view is not None else c.last_view,
        replication=local.replication,
        sync_role=sync_role_of(s.name, view, local) if view is not None else SyncRole.NONE,
        sync_fallback=view is not None and sync_fallback(view, local, s),
        failsafe_active=local.is_primary and failsafe_active(memory, now, s),
        promotion_vetoed=promotion_vetoed(memory, now, s),
        pending_restart=local.pending_restart,
        upstream=memory.following if local.is_replica else None,
        noloadbalance=s.tags.noloadbalance,
        archiver=local.archiver,
        slots=local.slots,
    )


def member_of_status(
    status: AgentStatus,
    local: LocalState,
    settings: Settings,
    *,
    backup_pg: BackupPg | None = None,
) -> Member:
    """This member's DCS record after a cycle (`backup_pg`: agent/postgres/pgbackrest.py)."""
    s = settings
    return Member(
        name=MemberName(s.name),
        role=status.role,
        state=status.state,
        api_url=s.api.url,
        host=s.postgresql.connect_host,
        port=s.postgresql.port,
        timeline=local.timeline,
        wal_lsn=local.wal_lsn,
        replay_lsn=local.replay_lsn,
        system_id=local.system_id,
        pg_major=local.pg_major,
        tags=MemberTags(
            nofailover=s.tags.nofailover,
            failover_priority=s.tags.failover_priority,
            nosync=s.tags.nosync,
            sync_priority=s.tags.sync_priority,
            replicatefrom=MemberName(s.tags.replicatefrom) if s.tags.replicatefrom else None,
            clonefrom=s.tags.clonefrom,
            noloadbalance=s.tags.noloadbalance,
        ),
        sync_standbys=tuple(
            MemberName(r.application_name)
            for r in local.replication
            if local.is_primary and r.sync_state.confirms_commits
        ),
        promotion_vetoed=status.promotion_vetoed,
        pending_restart=local.pending_restart,
        hot_standby=local.hot_standby,
        upstream=status.upstream,
        archiver=local.archiver,
        backup_pg=backup_pg,
    )
