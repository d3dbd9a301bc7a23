"""Who may lead next: where this member stands (WAL position, timeline, whether its data
directory last ran as a primary and needs pg_rewind to follow), whom a leader hands over to,
whether a replica may race for a free lease (`am_healthiest`), and the deference to the
candidate named by a switchover or failover request (`named_candidate`).
"""

from __future__ import annotations

from dataclasses import replace

from agent.actions import (
    AcquireLeader,
    Decision,
    PromoteReason,
)
from agent.decide.position import last_known_position
from agent.decide.state import Memory, Observation, decided, promotion, promotion_vetoed
from agent.decide.sync import sync_candidate_ok, sync_refusal
from agent.model import (
    ClusterView,
    LocalState,
    Lsn,
    Member,
    PgState,
    Role,
    SwitchoverRequest,
    WalSenderState,
)
from agent.settings import Settings

# pg_controldata states of an instance that last ran as a primary.
PRIMARY_CONTROL_STATES = frozenset({"in production", "shut down", "in crash recovery"})


def was_primary(local: LocalState) -> bool:
    """The local data directory last ran as a primary (running now, or by its control file).
    A base backup whose recovery has not started (`backup_label`) never did, whatever its
    copied control file says: taken for a former primary, a clone whose first start outlasted
    the start timeout (the startup process syncs every file first) was rewound or re-cloned,
    again and again when each start takes as long (chaos finding 21)."""
    if local.running:
        return local.in_recovery is False
    if local.backup_label:
        return False
    return local.control is not None and local.control.cluster_state in PRIMARY_CONTROL_STATES


def local_position(local: LocalState) -> Lsn | None:
    if local.running:
        return max(
            (x for x in (local.wal_lsn, local.receive_lsn, local.replay_lsn) if x), default=None
        )
    if local.control is not None:
        return max(local.control.checkpoint_lsn, local.control.min_recovery_end_lsn or 0)
    return None


def local_timeline(local: LocalState) -> int | None:
    """The running instance's timeline; when stopped, the control file's: its last
    checkpoint's, or the newer one a standby replayed into up to its minimum recovery point
    (a standby stopped soon after it followed a new leader made no restartpoint on the new
    timeline yet; its WAL past the switch point is the new timeline's, not a divergence)."""
    if local.timeline is not None:
        return local.timeline
    control = local.control
    if control is None:
        return None
    return max(control.timeline, control.min_recovery_end_timeline or 0)


def needs_rewind(local: LocalState, leader: Member | None, view: ClusterView) -> bool:
    """Whether following `leader` requires pg_rewind first.

    A former primary always does (pg_rewind finds "no rewind required" quickly when so). A
    standby does when it holds WAL past the point where its timeline ended in the leader's
    history (docs/facts.md, "PostgreSQL 15": a replica that received WAL beyond the fork point
    needs it too).
    """
    if was_primary(local):
        return True
    ours, theirs = local_timeline(local), leader.timeline if leader else None
    if ours is None or theirs is None or ours >= theirs:
        return False
    position = local_position(local)
    for entry in view.history:
        if entry.timeline == ours:
            return position is not None and position > entry.switch_lsn
    return False


def cluster_timeline(view: ClusterView) -> int | None:
    """The lowest timeline the cluster's current leader can be on: one past the last timeline
    the DCS history says ended (None: no switch recorded)."""
    if not view.history:
        return None
    return max(entry.timeline for entry in view.history) + 1


def timeline_refusal(local: LocalState, view: ClusterView) -> str | None:
    """Why this member must not be promoted because it is behind a timeline switch: its WAL
    lacks everything written since, and PostgreSQL would pick a new timeline ID it never saw
    in use, the same ID as the one it missed (a later rewind cannot tell the two apart)."""
    current, ours = cluster_timeline(view), local_timeline(local)
    if current is not None and ours is not None and ours < current:
        return f"on timeline {ours}, behind the cluster's timeline {current} (DCS history)"
    return None


def pg_state_of(local: LocalState) -> PgState:
    if not local.running:
        return PgState.STOPPED
    if local.socket_only:
        # No TCP client can reach it: a bootstrap runs, or one that did not complete is
        # being discarded. Not running as far as clients, clones and labels are concerned.
        return PgState.BOOTSTRAPPING
    if local.in_recovery and not local.streaming:
        return PgState.RUNNING
    return PgState.STREAMING if local.in_recovery else PgState.RUNNING


def is_healthy_replica(member: Member) -> bool:
    return member.role == Role.REPLICA and member.state in (PgState.STREAMING, PgState.RUNNING)


def candidate_ok(member: Member, leader_lsn: Lsn | None, settings: Settings) -> bool:
    if member.tags.nofailover or member.promotion_vetoed or not is_healthy_replica(member):
        return False
    if leader_lsn is None or member.wal_lsn is None:
        return member.wal_lsn is not None or leader_lsn is None
    return leader_lsn - member.wal_lsn <= settings.ha.maximum_lag_on_failover_bytes


def choose_candidate(view: ClusterView, settings: Settings) -> Member | None:
    """The best member to hand leadership to: eligible, furthest in WAL, then by priority."""
    leader = view.leader_member
    leader_lsn = leader.wal_lsn if leader is not None else None
    eligible = [
        m
        for m in view.members
        if m.name != settings.name
        and candidate_ok(m, leader_lsn, settings)
        and sync_candidate_ok(view, m.name)
    ]
    if not eligible:
        return None
    return max(eligible, key=lambda m: (m.wal_lsn or 0, m.tags.failover_priority, _neg(m.name)))


def streams_caught_up(name: str, local: LocalState, settings: Settings) -> bool:
    """`name` streams from our primary (pg_stat_replication, from the probe) and has flushed
    WAL within maximum_lag_on_failover_bytes of our position: once we stop, the rest of our
    WAL reaches it in moments. A member still re-pointing at us, or one that connected but
    lags, is not (yet) a hand-over candidate."""
    mine = local.wal_lsn
    for row in local.replication:
        if row.application_name != name or row.state is not WalSenderState.STREAMING:
            continue
        got = row.flush_lsn if row.flush_lsn is not None else row.write_lsn
        if mine is None or got is None:
            return False
        return mine - got <= settings.ha.maximum_lag_on_failover_bytes
    return False


def choose_handover(
    view: ClusterView, local: LocalState, settings: Settings
) -> tuple[Member | None, bool]:
    """The member a leader hands over to, and whether it is ready now: the best eligible
    member (`choose_candidate`) among those that stream from us caught up; else the best
    eligible one, not ready (worth waiting for); else (None, False)."""
    ready = tuple(
        m
        for m in view.members
        if m.name == settings.name or streams_caught_up(m.name, local, settings)
    )
    best_ready = choose_candidate(replace(view, members=ready), settings)
    if best_ready is not None:
        return best_ready, True
    return choose_candidate(view, settings), False


def _neg(name: str) -> tuple[int, ...]:
    """Sort key that prefers the alphabetically first name under max()."""
    return tuple(-ord(c) for c in name)


def am_healthiest(obs: Observation, settings: Settings, memory: Memory) -> tuple[bool, str]:
    """Whether this replica may race for the lease. Uses fresh peer answers when present,
    else the members' published records."""
    local = obs.local
    view = obs.cluster
    assert view is not None
    me_lsn = local_position(local) or 0
    me_tl = local_timeline(local) or 0
    if settings.tags.nofailover:
        return False, "tagged nofailover"
    refusal = sync_refusal(view, settings.name, obs.peers, check_quorum=True)
    if refusal is not None:
        return False, refusal
    refusal = timeline_refusal(local, view)
    if refusal is not None:
        return False, refusal
    record = view.sync
    in_sync_set = record is not None and record.quorum > 0
    # A member of the synchronous set holds every acknowledged commit (with the quorum check
    # above): the leader's published position may include WAL no commit waited for. The
    # position also comes from the DCS, so that an agent restarted since knows it (R3).
    last_known = last_known_position(view, memory)
    if last_known is not None and not in_sync_set:
        lag = last_known - me_lsn
        if lag > settings.ha.maximum_lag_on_failover_bytes:
            return False, f"lag {lag} bytes exceeds maximum_lag_on_failover_bytes"
    rivals = _rivals(obs, view, settings)
    mine = (me_tl, me_lsn, settings.tags.failover_priority)
    for name, tl, lsn, prio, nofailover in rivals:
        if in_sync_set and record is not None:
            if name not in record.members:
                continue  # cannot take over; its WAL is no concern of ours
            if (tl, lsn) > (me_tl, me_lsn):
                # Ahead of us: it may hold a commit we lack, even if it will not take over.
                return False, f"{name} of the synchronous set is further ahead"
        if nofailover:
            continue
        theirs = (tl, lsn, prio)
        if theirs > mine or (theirs == mine and name < settings.name):
            return False, f"{name} is healthier"
    return True, "healthiest eligible member"


def _rivals(
    obs: Observation, view: ClusterView, settings: Settings
) -> list[tuple[str, int, int, int, bool]]:
    """The other replicas that may be further ahead: (name, timeline, WAL position, failover
    priority, nofailover), from the fresh peer answers when present, else from the members'
    published records."""
    rivals: list[tuple[str, int, int, int, bool]] = []
    if obs.peers is not None:
        for peer in obs.peers:
            if peer.name != settings.name and peer.reachable and peer.role == Role.REPLICA:
                rivals.append(
                    (
                        peer.name,
                        peer.timeline or 0,
                        peer.wal_lsn or 0,
                        peer.failover_priority,
                        peer.nofailover,
                    )
                )
    else:
        for m in view.members:
            if m.name != settings.name and is_healthy_replica(m):
                rivals.append(
                    (
                        m.name,
                        m.timeline or 0,
                        m.wal_lsn or 0,
                        m.tags.failover_priority,
                        m.tags.nofailover or m.promotion_vetoed,
                    )
                )
    return rivals


def named_candidate(
    obs: Observation, memory: Memory, settings: Settings, request: SwitchoverRequest
) -> tuple[Decision, Memory] | None:
    """No leader, and a request names a candidate. The request may speed the race up, never
    skip its safety:
    - a failover (no leader named: POST /failover, the operator's pick) lets the candidate
      take the lease; the others leave it to it;
    - a switchover only once the old leader wrote `handover_lsn` (it saw the candidate
      receive its shutdown checkpoint), and the candidate only while it holds WAL past it;
    - anything else (a hand-over abandoned or never completed) is the normal race (None),
      as is the end of the deference: the others wait for the candidate at most
      max(ttl_s, switchover_timeout_s) after they saw the leader record go."""
    view, now = obs.cluster, obs.now
    assert view is not None and request.candidate is not None
    forced = request.leader is None
    if not forced and request.handover_lsn is None:
        return None
    since = memory.leaderless_since if memory.leaderless_since is not None else now
    deferring = now - since < max(settings.timing.ttl_s, settings.timing.switchover_timeout_s)
    if request.candidate != settings.name:
        named = view.member(request.candidate)
        # A candidate whose pre_promote vetoed its promotion is out of the race for ttl_s;
        # deferring to it would keep everyone out (each retry of its restarts the deference).
        if (
            named is not None
            and is_healthy_replica(named)
            and not named.promotion_vetoed
            and deferring
        ):
            return decided(memory, f"no leader: {request.candidate} is the named candidate")
        return None
    refusal = sync_refusal(view, settings.name, obs.peers, check_quorum=False)
    refusal = refusal or timeline_refusal(obs.local, view)
    if promotion_vetoed(memory, now, settings):
        refusal = "pre_promote vetoed our last promotion"
    if refusal is not None:
        return decided(memory, f"named switchover candidate, but {refusal}")
    if request.handover_lsn is not None and not forced:
        mine = local_position(obs.local)
        last = last_known_position(view, memory)
        behind = last is not None and (mine or 0) < last - settings.ha.maximum_lag_on_failover_bytes
        if mine is None or mine <= request.handover_lsn or behind:
            if deferring:
                return decided(
                    memory,
                    f"named switchover candidate, but at {mine}, not past the hand-over "
                    f"position {request.handover_lsn}: waiting",
                )
            return None
    return decided(
        memory,
        f"named {'failover' if forced else 'switchover'} candidate: taking the lease",
        AcquireLeader(),
        promotion(settings, PromoteReason.SWITCHOVER),
    )
