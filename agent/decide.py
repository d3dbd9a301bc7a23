"""The HA state machine: `decide(observation, memory, settings) -> (decision, memory')`.

Pure: values in, values out. No I/O, no clock, no logging (DESIGN.md section 1). Every
branch is a small `_when_*` function returning a Decision; the branch order in `decide()` is
the priority order. `record_outcome()` folds what the executor reports back into Memory.

Safety (DESIGN.md section 3) is kept by three rules that the property tests check:
- `Promote` is only planned right after `AcquireLeader` in the same decision (the executor
  stops at a failed acquire), or while our lease is valid.
- A primary whose fencing deadline has passed, or that sees another member's leader record,
  or no leader record at all, is demoted at once (the fencer process does the same
  independently of this loop).
- A member that was a primary never streams from a new leader without pg_rewind first.
- Failsafe mode (DESIGN.md section 3, DCS unreachable): a primary that cannot reach the DCS
  extends its fencing deadline only by a round of POST /failsafe that every member named in
  the `failsafe` record (and every member it may have just added there) accepted; the deadline
  is then `send time + ttl - margin`. A member that accepted does not race for the lease for
  `ttl` after it accepted (its clock; `Memory.promised_until`, set by `answer_failsafe`),
  and while a `failsafe` record stands, a member it does not name never takes over: so until
  the later of the lease's and the failsafe deadline nobody else can promote.
- Synchronous replication (DESIGN.md invariant 3): while the DCS `sync` record claims a
  quorum, only its members (and its own leader) may promote, and a member only after it has
  seen `len(members) - quorum + 1` of them and found none further ahead (`sync_refusal`).
  The leader keeps the record a superset of who may hold the latest commit: a change of
  `synchronous_standby_names` that adds a standby is preceded by a record naming it, and a
  record that drops one follows the change in PostgreSQL and the remaining standbys'
  confirmation that they flushed WAL past the point where it took effect (`_plan_sync`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import assert_never

from agent.actions import (
    AcquireLeader,
    Action,
    AppendHistory,
    Bootstrap,
    ClaimInitialize,
    ClearInitialize,
    ClearSwitchover,
    Clone,
    ConfirmFailsafe,
    Decision,
    Demote,
    EnsureSlots,
    Exit,
    Follow,
    HandOver,
    Promote,
    PromoteReason,
    ReleaseLeader,
    RenewLeader,
    Rewind,
    SetConfig,
    SetFailsafeRecord,
    SetInitialize,
    SetSyncRecord,
    SetSyncStandbyNames,
    StartPostgres,
    StopMode,
    StopPostgres,
)
from agent.model import (
    ClusterView,
    DynamicConfig,
    FailsafeRecord,
    LocalRequestKind,
    LocalState,
    Lsn,
    Member,
    MemberName,
    PgState,
    Role,
    SwitchoverRequest,
    SyncMode,
    SyncRecord,
    SyncRole,
    SyncStandbys,
)
from agent.settings import Settings

# pg_controldata states of an instance that last ran as a primary.
PRIMARY_CONTROL_STATES = frozenset({"in production", "shut down", "in crash recovery"})

# A failed long action is not retried sooner than this (seconds, monotonic).
RETRY_BACKOFF_S = 5.0

# A member whose record is gone keeps its slot (and the WAL it holds) this long, so that a
# member restarting or briefly partitioned can stream on without a new clone.
SLOT_GRACE_S = 1800.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerStatus:
    """A peer's answer to the pre-race health check over its REST API."""

    name: MemberName
    reachable: bool
    role: Role = Role.UNKNOWN
    state: PgState = PgState.UNKNOWN
    timeline: int | None = None
    wal_lsn: Lsn | None = None
    nofailover: bool = False
    failover_priority: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Pending:
    """A long action in flight, and since when (monotonic)."""

    action: Action
    started_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    now: float  # monotonic
    wall_now: float  # epoch seconds, for scheduled switchovers only
    cluster: ClusterView | None  # None: the DCS could not be read this cycle
    local: LocalState
    pending: Pending | None = None
    peers: tuple[PeerStatus, ...] | None = None  # only fetched when there is no leader
    local_requests: tuple[LocalRequestKind, ...] = ()
    shutting_down: bool = False
    # Failsafe: when this agent started (a promise given by an earlier run of it is unknown,
    # so a fresh agent holds back for one ttl).
    started_at: float = float("-inf")


@dataclass(frozen=True, slots=True, kw_only=True)
class Memory:
    """All state the agent carries from one cycle to the next."""

    lease_sent_at: float | None = None  # send time of our last successful acquire/renew
    pg_down_since: float | None = None  # leader only: first cycle PostgreSQL was seen down
    pg_hung_since: float | None = None  # leader only: first probe its PostgreSQL timed out
    commit_stalled_since: float | None = None  # leader only: first failed commit heartbeat
    # Leader: since when it wants to hand over (shutdown, switchover) but no candidate streams
    # from it caught up yet; it keeps serving meanwhile, for at most switchover_timeout_s.
    handover_wait_since: float | None = None
    # Since when this member has seen no leader record (bounds the deference to a candidate
    # named by a switchover or failover request).
    leaderless_since: float | None = None
    following: MemberName | None = None  # whom our standby was last pointed at
    last_leader: MemberName | None = None
    last_leader_wal_lsn: Lsn | None = None
    slots: tuple[MemberName, ...] | None = None  # slots last ensured on our primary
    slots_absent_since: tuple[tuple[MemberName, float], ...] = ()  # kept within the grace
    rewind_failures: int = 0
    failed_at: float | None = None  # when a long action last failed
    handed_over: bool = False  # shutdown: the switchover finished
    refused: str | None = None  # a reason this member will not take part (wrong system id)
    # Leader: the synchronous_standby_names value PostgreSQL was first seen to run with, and
    # our WAL position then; every commit acknowledged before lies at or below that position.
    sync_effective: tuple[SyncStandbys, Lsn] | None = None
    # Leader, failsafe mode: the members to consult over REST when the DCS is unreachable
    # (name, api_url): the `failsafe` record it read naming it, plus what it is writing there.
    # None: failsafe cannot be used (mode off, or the record naming us not read back yet).
    failsafe_peers: tuple[tuple[MemberName, str], ...] | None = None
    # Send time of the last POST /failsafe round that every one of them accepted.
    failsafe_sent_at: float | None = None
    # Members named in the failsafe record whose DCS record is gone, and since when.
    failsafe_absent_since: tuple[tuple[MemberName, float], ...] = ()
    # Any member, failsafe mode: the primary in failsafe whose POST /failsafe we accepted
    # last, and until when (monotonic) we promised it not to race (`answer_failsafe`).
    promised_to: MemberName | None = None
    promised_until: float | None = None


class Result(StrEnum):
    """How an executed action fared."""

    OK = "ok"
    # It failed, or the DCS refused it (a lost race, a lease gone): evidence against it.
    LOST = "lost"
    # What it needs could not be reached (the DCS, a rewind's source, the fencer): a reason
    # to retry, not evidence against the action. Counts as LOST where record_outcome does
    # not say otherwise.
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What the executor reports for one action."""

    action: Action
    result: Result
    sent_at: float  # monotonic, when the action started (for a renewal: when it was sent)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.result is Result.OK


# --------------------------------------------------------------------------- helpers


def fence_deadline(memory: Memory, settings: Settings) -> float | None:
    """The later of the lease's deadline and the failsafe deadline (None: neither)."""
    sent = [t for t in (memory.lease_sent_at, memory.failsafe_sent_at) if t is not None]
    if not sent:
        return None
    return settings.timing.fence_deadline(max(sent))


def _lease_alive(memory: Memory, now: float, settings: Settings) -> bool:
    """The lease's own deadline (not the failsafe one) has not passed."""
    sent = memory.lease_sent_at
    return sent is not None and now < settings.timing.fence_deadline(sent)


def failsafe_active(memory: Memory, now: float, settings: Settings) -> bool:
    """Our PostgreSQL stays primary on the members' confirmation alone (the failsafe deadline
    is later than the lease's)."""
    if memory.failsafe_sent_at is None:
        return False
    fs = settings.timing.fence_deadline(memory.failsafe_sent_at)
    lease = (
        settings.timing.fence_deadline(memory.lease_sent_at)
        if memory.lease_sent_at is not None
        else float("-inf")
    )
    return now < fs and fs > lease


def failsafe_hold(obs: Observation, memory: Memory, settings: Settings) -> str | None:
    """Why this member may not take over because of failsafe mode, or None if it may."""
    view = obs.cluster
    assert view is not None
    until = memory.promised_until
    if until is not None and obs.now < until:
        return (
            f"promised {memory.promised_to} (primary in failsafe) not to race for "
            f"{until - obs.now:.1f} s more"
        )
    record = view.failsafe
    if (
        record is not None
        and settings.name != record.leader
        and settings.name not in record.names()
    ):
        return f"not named in the failsafe record of {record.leader}: it never consulted us"
    in_use = view.config.failsafe_mode or record is not None
    if in_use and obs.now < obs.started_at + settings.timing.ttl_s:
        return "failsafe mode: an agent that just started waits one ttl (promises it gave are lost)"
    return None


def failsafe_refusal(
    leader: str,
    *,
    settings: Settings,
    local: LocalState | None,
    racing: bool,
    memory: Memory,
    view: ClusterView | None,
    dcs_ok: bool,
) -> str | None:
    """Why this member refuses to confirm `leader`, a primary in failsafe mode that asks over
    POST /failsafe, or None: it accepts, which promises not to race for the lease for ttl_s
    (`failsafe_hold`). `racing`: the decision being executed races for the lease; `view`:
    the last cluster view read, `dcs_ok`: whether the last read succeeded."""
    if leader == settings.name:
        return "the request names this member itself"
    if local is not None and local.is_primary:
        return "this member runs a primary"
    if racing or memory.lease_sent_at is not None:
        return "this member holds or is taking the leader lease"
    if dcs_ok and view is not None and view.leader is not None and view.leader.name != leader:
        return f"{view.leader.name} holds the leader lease"
    return None


def answer_failsafe(
    leader: str,
    *,
    settings: Settings,
    local: LocalState | None,
    racing: bool,
    memory: Memory,
    view: ClusterView | None,
    dcs_ok: bool,
    now: float,
) -> tuple[str | None, Memory]:
    """Answer `leader`'s POST /failsafe (arguments as for `failsafe_refusal`; `now`: our
    monotonic clock): the refusal with Memory unchanged, or None with the promise recorded in
    Memory: no race for the lease for ttl_s from now (`failsafe_hold`)."""
    refusal = failsafe_refusal(
        leader,
        settings=settings,
        local=local,
        racing=racing,
        memory=memory,
        view=view,
        dcs_ok=dcs_ok,
    )
    if refusal is not None:
        return refusal, memory
    until = now + settings.timing.ttl_s
    return None, replace(memory, promised_to=MemberName(leader), promised_until=until)


def _plan_failsafe(
    view: ClusterView, memory: Memory, now: float, settings: Settings
) -> tuple[Action | None, Memory]:
    """Leader: keep the `failsafe` record naming every other member (with its API address)
    while failsafe mode is on; delete it when the mode is off. Failsafe is usable once the
    record naming us was read back; we then consult its members and those we are adding.

    A member whose DCS record went away (its agent down for a ttl) stays named for
    SLOT_GRACE_S: only named members may take over while a record stands, so dropping it
    would leave nobody able to replace us if we died next (and while it is named but
    unreachable, a DCS outage stops us at the fence deadline, as without failsafe)."""
    me = MemberName(settings.name)
    record = view.failsafe
    version = view.failsafe_version or None
    if not view.config.failsafe_mode:
        memory = replace(memory, failsafe_peers=None, failsafe_absent_since=())
        if record is not None or view.failsafe_version:
            return SetFailsafeRecord(record=None, expected_version=version), memory
        return None, memory
    present = {m.name: m.api_url for m in view.members if m.name != me}
    recorded = {n: url for n, url in (record.members if record is not None else ()) if n != me}
    since = dict(memory.failsafe_absent_since)
    kept: dict[MemberName, str] = {}
    for name, url in recorded.items():
        if name not in present:
            gone = since.setdefault(name, now)
            if now - gone < SLOT_GRACE_S:
                kept[name] = url
    memory = replace(
        memory, failsafe_absent_since=tuple(sorted((n, t) for n, t in since.items() if n in kept))
    )
    desired = tuple(sorted({**kept, **present}.items()))
    if record is not None and record.leader == me:
        peers = tuple(sorted(set(desired) | set(record.members)))
        memory = replace(memory, failsafe_peers=peers)
    else:
        memory = replace(memory, failsafe_peers=None)
    if record is None or record.leader != me or record.members != desired:
        wanted = FailsafeRecord(leader=me, members=desired)
        return SetFailsafeRecord(record=wanted, expected_version=version), memory
    return None, memory


def lease_valid(memory: Memory, now: float, settings: Settings) -> bool:
    deadline = fence_deadline(memory, settings)
    return deadline is not None and now < deadline


def was_primary(local: LocalState) -> bool:
    """The local data directory last ran as a primary (running now, or by its control file)."""
    if local.running:
        return local.in_recovery is False
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
    if local.timeline is not None:
        return local.timeline
    return local.control.timeline if local.control is not None else None


def needs_rewind(local: LocalState, leader: Member | None, view: ClusterView) -> bool:
    """Whether following `leader` requires pg_rewind first.

    A former primary always does (pg_rewind finds "no rewind required" quickly when so). A
    standby does when it holds WAL past the point where its timeline ended in the leader's
    history (FACTS.md: a replica that received WAL beyond the fork point needs it too).
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
    if local.in_recovery and not local.streaming:
        return PgState.RUNNING
    return PgState.STREAMING if local.in_recovery else PgState.RUNNING


def is_healthy_replica(member: Member) -> bool:
    return member.role == Role.REPLICA and member.state in (PgState.STREAMING, PgState.RUNNING)


def _candidate_ok(member: Member, leader_lsn: Lsn | None, settings: Settings) -> bool:
    if member.tags.nofailover or not is_healthy_replica(member):
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
        and _candidate_ok(m, leader_lsn, settings)
        and _sync_candidate_ok(view, m.name)
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
        if row.application_name != name or row.state != "streaming":
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


def _am_healthiest(obs: Observation, settings: Settings, memory: Memory) -> tuple[bool, str]:
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
    # above): the leader's published position may include WAL no commit waited for.
    last_known = max(
        (p for p in (memory.last_leader_wal_lsn, _handover_lsn(view)) if p is not None),
        default=None,
    )
    if last_known is not None and not in_sync_set:
        lag = last_known - me_lsn
        if lag > settings.ha.maximum_lag_on_failover_bytes:
            return False, f"lag {lag} bytes exceeds maximum_lag_on_failover_bytes"
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
                        m.tags.nofailover,
                    )
                )
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


def _handover_lsn(view: ClusterView) -> Lsn | None:
    """The old leader's final position, when a hand-over request records it."""
    return view.switchover.handover_lsn if view.switchover is not None else None


def _switchover_due(obs: Observation) -> bool:
    view = obs.cluster
    if view is None or view.switchover is None:
        return False
    at = view.switchover.scheduled_at
    return at is None or at <= obs.wall_now


def _plan_slots(
    view: ClusterView, memory: Memory, now: float, settings: Settings
) -> tuple[tuple[MemberName, ...], tuple[MemberName, ...], tuple[tuple[MemberName, float], ...]]:
    """Slots the primary keeps (present members, and absent ones within SLOT_GRACE_S), the
    ones to drop, and since when each absent member has been gone."""
    present = {m.name for m in view.members if m.name != settings.name}
    since = dict(memory.slots_absent_since)
    for name in memory.slots or ():
        if name not in present:
            since.setdefault(name, now)
    absent = {n: t for n, t in since.items() if n not in present}
    drop = tuple(sorted(n for n, t in absent.items() if now - t >= SLOT_GRACE_S))
    kept = tuple(sorted(present | (absent.keys() - set(drop))))
    remaining = tuple(sorted((n, t) for n, t in absent.items() if n not in drop))
    return kept, drop, remaining


# ------------------------------------------------------------------ synchronous replication

_NO_STANDBYS = SyncStandbys(quorum=False, count=0, names=())
_SYNC_STATES = frozenset({"sync", "quorum"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """ "Every acknowledged commit is held by at least `count` of `members`" (count 0: nothing
    is promised)."""

    members: frozenset[str]
    count: int


_NOTHING = Claim(members=frozenset(), count=0)


def claim_of(standbys: SyncStandbys, *, exclude: str = "") -> Claim:
    """What PostgreSQL running with `standbys` promises about each commit. FIRST k of a longer
    list still puts each commit on k of the listed names; our own name never confirms."""
    names = frozenset(n for n in standbys.names if n != exclude)
    count = min(standbys.count, len(names))
    return Claim(members=names, count=count) if count > 0 else _NOTHING


def record_claim(record: SyncRecord | None) -> Claim:
    if record is None or record.quorum <= 0:
        return _NOTHING
    return Claim(members=frozenset(record.members), count=record.quorum)


def covers(record: Claim, truth: Claim) -> bool:
    """A record promising `record` is never wrong while `truth` holds (truth's members are all
    named, and the record counts on no more of them than truth guarantees)."""
    if truth.count == 0:
        return True
    return record.count > 0 and truth.members <= record.members and record.count <= truth.count


def combine(*claims: Claim) -> Claim:
    """The strongest claim implied by each of `claims` (the weakest one over their union)."""
    real = [c for c in claims if c.count > 0]
    if not real:
        return _NOTHING
    return Claim(
        members=frozenset().union(*(c.members for c in real)),
        count=min(c.count for c in real),
    )


def sync_refusal(
    view: ClusterView, name: str, peers: tuple[PeerStatus, ...] | None, *, check_quorum: bool
) -> str | None:
    """Why `name` may not take over under the DCS `sync` record, or None if it may.

    No record, or one promising nothing (asynchronous): anyone may. Else only the record's
    leader or one of its members; with `check_quorum`, a member must also see (in `peers`,
    the fresh answers to the pre-race check) at least `len(members) - quorum + 1` members of
    the set, itself included: any `quorum` of them hold every commit, so that many include
    one that does (R + W > N); the caller then requires it to be the most advanced of them.
    """
    record = view.sync
    if record is None or record.quorum <= 0:
        return None
    is_leader = name == record.leader and name not in record.members
    if name not in record.members and not is_leader:
        return f"not in the synchronous set {list(record.members)}"
    # The record's own leader had every commit of its term, but a later leader may have
    # committed on the set before writing its own record: it too must see enough of the set.
    needed = len(record.members) - record.quorum + 1
    if not check_quorum or (needed <= 1 and not is_leader):
        return None
    seen = set() if is_leader else {name}
    for peer in peers or ():
        if peer.reachable and peer.name in record.members and peer.role == Role.REPLICA:
            seen.add(peer.name)
    if len(seen) < needed:
        return (
            f"sees {len(seen)} of the synchronous set {list(record.members)}, "
            f"needs {needed} to be sure of the latest commit"
        )
    return None


def _sync_candidate_ok(view: ClusterView, name: str) -> bool:
    """In synchronous mode a switchover goes only to a member of the recorded set."""
    return sync_refusal(view, name, None, check_quorum=False) is None


def desired_standbys(view: ClusterView, local: LocalState, settings: Settings) -> SyncStandbys:
    """synchronous_standby_names for the config record's mode, from the standbys streaming from
    us now (pg_stat_replication), not tagged nosync or nofailover (a synchronous standby must
    be able to take over), sync_priority > 0, ordered by sync_priority (higher first), then
    name. One further behind than maximum_lag_on_syncnode_bytes is left out while enough
    others remain. With none: strict mode keeps commits waiting on the last set, otherwise
    replication becomes asynchronous."""
    config = view.config
    if config.synchronous_mode == SyncMode.OFF:
        return _NO_STANDBYS
    streaming = {r.application_name: r for r in local.replication if r.state == "streaming"}
    candidates = []
    for m in view.members:
        row = streaming.get(m.name)
        if m.name == settings.name or row is None or m.role != Role.REPLICA:
            continue
        if m.tags.nosync or m.tags.nofailover or m.tags.sync_priority <= 0:
            continue
        lag = (local.wal_lsn or 0) - (row.flush_lsn or 0)
        lagging = 0 <= config.maximum_lag_on_syncnode_bytes < lag
        candidates.append((lagging, -m.tags.sync_priority, m.name))
    candidates.sort()
    k = config.synchronous_node_count
    fresh = [c for c in candidates if not c[0]]
    chosen = fresh if len(fresh) >= min(k, len(candidates)) else candidates
    names = tuple(c[2] for c in chosen)
    quorum = config.synchronous_mode == SyncMode.QUORUM
    if not quorum:
        names = names[:k]
    if names:
        return SyncStandbys(quorum=quorum, count=min(k, len(names)), names=names)
    if not config.synchronous_mode_strict:
        return _NO_STANDBYS
    # Strict: never fall back to asynchronous commits. Keep what PostgreSQL waits for now,
    # else the last recorded set, else any standby.
    current = local.sync_standbys
    if current is not None and claim_of(current, exclude=settings.name).count > 0:
        kept = tuple(n for n in current.names if n != settings.name)
        return SyncStandbys(quorum=current.quorum, count=min(current.count, len(kept)), names=kept)
    record = view.sync
    if record is not None and record.quorum > 0:
        kept = tuple(n for n in record.members if n != settings.name)
        if kept:
            return SyncStandbys(quorum=quorum, count=min(k, len(kept)), names=kept)
    return SyncStandbys(quorum=False, count=1, names=("*",))


def _same(a: SyncStandbys, b: SyncStandbys) -> bool:
    if a.count <= 0 or not a.names:
        return b.count <= 0 or not b.names
    return a == b


def plan_sync(
    view: ClusterView, local: LocalState, memory: Memory, settings: Settings
) -> tuple[Action | None, Memory]:
    """The leader's next step towards the desired synchronous set, one step per cycle.

    Order (the record stays a superset of who may hold the latest commit):
    1. PostgreSQL differs from the desired set: first make the record cover both what
       PostgreSQL promises now and what it will promise (SetSyncRecord), then change
       PostgreSQL (SetSyncStandbyNames).
    2. PostgreSQL runs with the desired set: note our WAL position (every commit acknowledged
       under an earlier setting lies below it).
    3. Once `count` of the desired standbys report sync/quorum in pg_stat_replication and have
       flushed past that position, narrow the record to exactly the desired set.
    """
    current = local.sync_standbys
    if current is None or not local.is_primary:
        return None, memory
    me = MemberName(settings.name)
    record = view.sync
    desired = desired_standbys(view, local, settings)
    want, now, recorded = claim_of(desired), claim_of(current, exclude=me), record_claim(record)
    if not _same(current, desired):
        memory = replace(memory, sync_effective=None)
        need = combine(now, want)
        if not covers(recorded, need) or (record is not None and record.leader != me):
            target = combine(recorded, need)
            return _sync_record(me, target, record), memory
        return SetSyncStandbyNames(standbys=desired), memory
    if memory.sync_effective is None or memory.sync_effective[0] != desired:
        return None, replace(memory, sync_effective=(desired, local.wal_lsn or 0))
    names = tuple(MemberName(n) for n in desired.names) if want.count else ()
    exact = SyncRecord(leader=me, members=names, quorum=want.count)
    if record is None and want.count == 0:
        return None, memory  # never synchronous under this leader: nothing to record
    if record is not None and (record.leader, record.members, record.quorum) == (
        exact.leader,
        exact.members,
        exact.quorum,
    ):
        return None, memory
    since = memory.sync_effective[1]
    confirmed = sum(
        1
        for r in local.replication
        if r.application_name in want.members
        and r.sync_state in _SYNC_STATES
        and (r.flush_lsn or 0) >= since
    )
    if confirmed >= want.count:
        target = Claim(members=frozenset(exact.members), count=want.count)
        return _sync_record(me, target, record, order=exact.members), memory
    if not covers(recorded, want):
        return _sync_record(me, combine(recorded, want), record), memory
    return None, memory


def _sync_record(
    me: MemberName,
    claim: Claim,
    record: SyncRecord | None,
    order: tuple[MemberName, ...] | None = None,
) -> SetSyncRecord:
    members = order if order is not None else tuple(sorted(claim.members))
    return SetSyncRecord(
        record=SyncRecord(
            leader=me,
            members=tuple(MemberName(m) for m in members) if claim.count else (),
            quorum=claim.count,
        ),
        expected_version=(record.version or None) if record is not None else None,
    )


def sync_role_of(name: str, view: ClusterView, local: LocalState) -> SyncRole:
    """This member's synchronous role: a running replica that the leader's PostgreSQL reports
    as sync or quorum (published in the leader's member record) and that is in the `sync`
    record of that leader's term; else ASYNC for a replica, NONE otherwise."""
    if not local.is_replica:
        return SyncRole.NONE
    leader = view.leader_member
    record = view.sync
    if (
        leader is not None
        and name in leader.sync_standbys
        and record is not None
        and record.quorum > 0
        and record.leader == leader.name
        and name in record.members
    ):
        if view.config.synchronous_mode == SyncMode.QUORUM:
            return SyncRole.QUORUM
        return SyncRole.SYNC
    return SyncRole.ASYNC


def seed_config(settings: Settings) -> DynamicConfig:
    """The first `config` record, from the bootstrapping member's `ha` settings."""
    ha = settings.ha
    return DynamicConfig(
        synchronous_mode=ha.synchronous_mode,
        synchronous_node_count=ha.synchronous_node_count,
        synchronous_mode_strict=ha.synchronous_mode_strict,
        maximum_lag_on_syncnode_bytes=ha.maximum_lag_on_syncnode_bytes,
        failsafe_mode=ha.failsafe_mode,
    )


def sync_fallback(view: ClusterView, local: LocalState, settings: Settings) -> bool:
    """Leader: synchronous mode is asked for but commits wait for no standby."""
    if view.config.synchronous_mode == SyncMode.OFF or not local.is_primary:
        return False
    current = local.sync_standbys
    return current is not None and claim_of(current, exclude=settings.name).count == 0


# --------------------------------------------------------------------------- branches


def _decision(memory: Memory, reason: str, *actions: Action) -> tuple[Decision, Memory]:
    return Decision(actions=tuple(actions), reason=reason), memory


def _stop_before_release(local: LocalState) -> StopPostgres | None:
    """How to stop our PostgreSQL before the lease goes: fast while it answers; SIGKILL when a
    process is there that does not (hung, or still starting): one that answers later must
    not accept writes next to a new leader. None: nothing runs."""
    if local.running:
        return StopPostgres(mode=StopMode.FAST)
    if local.postmaster_pid is not None:
        return StopPostgres(mode=StopMode.KILL)
    return None


def _when_shutting_down(
    obs: Observation, memory: Memory, settings: Settings
) -> tuple[Decision, Memory]:
    """A leader hands over only to a member that streams from it caught up, and serves on
    while it waits for one, for at most switchover_timeout_s; else (or when its hand-over
    failed) it stops, deletes its own switchover request and releases the lease without
    naming anyone: the normal failover rules pick the next leader."""
    view, local, now = obs.cluster, obs.local, obs.now
    i_lead = view is not None and view.leader is not None and view.leader.name == settings.name
    if obs.pending is not None:
        if i_lead:
            return _decision(
                memory, "shutting down: waiting for the action in flight", RenewLeader()
            )
        return _decision(memory, "shutting down: waiting for the action in flight")
    deadline = fence_deadline(memory, settings)
    in_time = deadline is None or now < deadline
    if i_lead and local.is_primary and not memory.handed_over and memory.failed_at is None:
        assert view is not None
        candidate, ready = choose_handover(view, local, settings)
        if candidate is not None and ready and in_time:
            return _decision(
                replace(memory, handover_wait_since=None),
                f"shutting down: handing over to {candidate.name}",
                RenewLeader(),
                HandOver(candidate=candidate.name, shutting_down=True),
            )
        since = memory.handover_wait_since if memory.handover_wait_since is not None else now
        # Members restarting (a rolling restart, two pods deleted close together) have no
        # healthy record yet: wait for them too, not only for an eligible one.
        others = bool(memory.slots) or any(m.name != settings.name for m in view.members)
        waited = now - since
        if (
            (candidate is not None or others)
            and in_time
            and waited < settings.timing.switchover_timeout_s
        ):
            who = candidate.name if candidate is not None else "a member"
            return _decision(
                replace(memory, handover_wait_since=since),
                f"shutting down: serving until {who} streams from us caught up",
                RenewLeader(),
            )
    actions: list[Action] = []
    stop = _stop_before_release(local)
    if stop is not None:
        actions.append(stop)
    request = view.switchover if view is not None else None
    if request is not None and request.leader == settings.name and not memory.handed_over:
        actions.append(ClearSwitchover(version=request.version))
    reason = "shutting down"
    if i_lead or memory.lease_sent_at is not None:
        actions.append(ReleaseLeader())
        if not memory.handed_over:
            reason = "shutting down: no candidate caught up; releasing the lease naming nobody"
    actions.append(Exit())
    return _decision(memory, reason, *actions)


def _when_busy(obs: Observation, memory: Memory, settings: Settings) -> tuple[Decision, Memory]:
    assert obs.pending is not None
    what = type(obs.pending.action).__name__
    view = obs.cluster
    deadline = fence_deadline(memory, settings)
    if obs.local.is_primary and deadline is not None and obs.now >= deadline:
        return _decision(
            memory, f"fence deadline passed during {what}", _fence_at_deadline("deadline passed")
        )
    if memory.lease_sent_at is not None and (
        view is None or (view.leader is not None and view.leader.name == settings.name)
    ):
        return _decision(memory, f"{what} in flight; keeping the lease", RenewLeader())
    return _decision(memory, f"{what} in flight")


def _fence(reason: str) -> Demote:
    """Stop writing at once: another member may lead already, or ours is unknown."""
    return Demote(mode=StopMode.IMMEDIATE, reason=reason)


def _fence_at_deadline(reason: str) -> Demote:
    """Our own fence deadline passed: the lease is still ours for the others until
    `deadline + fence_margin_s`, so a fast shutdown (bounded by half the margin) lets the WAL
    senders ship what was committed, instead of leaving acknowledged commits on this node
    alone (the fencer process does the same)."""
    return Demote(mode=StopMode.FAST, reason=reason)


def _when_dcs_unavailable(
    obs: Observation, memory: Memory, settings: Settings
) -> tuple[Decision, Memory]:
    if obs.local.is_primary:
        if lease_valid(memory, obs.now, settings) and memory.failsafe_peers is not None:
            return _decision(
                memory,
                "DCS unreachable; failsafe: asking every member to confirm us, retrying renewal",
                ConfirmFailsafe(members=memory.failsafe_peers),
                # Retrying the renewal costs a whole DCS timeout per cycle: only while the
                # lease itself may still be ours (after that, the lease is taken back with
                # AcquireLeader once the DCS answers).
                *((RenewLeader(),) if _lease_alive(memory, obs.now, settings) else ()),
            )
        if lease_valid(memory, obs.now, settings):
            return _decision(
                memory, "DCS unreachable; retrying renewal before the fence", RenewLeader()
            )
        return _decision(
            memory,
            "DCS unreachable and the lease cannot be confirmed",
            _fence_at_deadline("no valid lease"),
        )
    return _decision(memory, "DCS unreachable")


def _when_no_data(obs: Observation, memory: Memory, settings: Settings) -> tuple[Decision, Memory]:
    view = obs.cluster
    assert view is not None
    if memory.failed_at is not None and obs.now - memory.failed_at < RETRY_BACKOFF_S:
        return _decision(memory, "waiting before retrying a failed bootstrap or clone")
    claimant = view.leader.name if view.leader is not None else None
    if view.initialize == "" and claimant in (None, settings.name):
        # A claim to bootstrap that never completed: ours failed (we still hold the lease we
        # took with it), or the claimant's lease is gone. Left alone it would keep every
        # member waiting for a leader to clone from, forever.
        return _decision(
            memory,
            "a bootstrap that did not complete: withdrawing its claim",
            ClearInitialize(version=view.initialize_version),
            *((ReleaseLeader(),) if claimant is not None else ()),
        )
    if view.initialize is None and view.leader is None:
        if settings.tags.nofailover:
            return _decision(memory, "empty cluster, but nofailover members do not bootstrap")
        return _decision(
            memory,
            "empty cluster: claiming it and bootstrapping",
            ClaimInitialize(),
            AcquireLeader(),
            Bootstrap(),
        )
    leader = view.leader_member
    if leader is not None and leader.state == PgState.RUNNING and leader.role == Role.PRIMARY:
        return _decision(memory, f"no data: cloning from {leader.name}", Clone(source=leader.name))
    return _decision(memory, "no data: waiting for a running leader to clone from")


def _when_leader(obs: Observation, memory: Memory, settings: Settings) -> tuple[Decision, Memory]:
    view, local, now = obs.cluster, obs.local, obs.now
    assert view is not None
    deadline = fence_deadline(memory, settings)
    if local.is_primary and deadline is not None and now >= deadline:
        return _decision(
            memory, "fence deadline passed", _fence_at_deadline("fence deadline passed")
        )
    keep: Action = RenewLeader() if memory.lease_sent_at is not None else AcquireLeader()

    if not local.running:
        return _when_leader_pg_down(obs, memory, settings, keep)
    memory = replace(memory, pg_down_since=None, pg_hung_since=None)
    stalled, memory = _commit_stall(obs, memory, settings)
    if stalled is not None:
        return stalled

    if local.is_replica:
        return _decision(
            memory,
            "leader's PostgreSQL is a standby: promoting",
            keep,
            Promote(reason=PromoteReason.LEADER_IS_STANDBY),
        )

    actions: list[Action] = [keep]
    reason = "leader renews"
    if not view.initialize and local.system_id:
        # Claimed but not yet written (bootstrap), or lost with a wiped DCS: record which
        # system this cluster is, so that a member of another one refuses to join.
        actions.append(
            SetInitialize(
                system_id=local.system_id, expected_version=view.initialize_version or None
            )
        )
        if not view.config.version:
            # The bootstrapping leader seeds the cluster-wide settings from its own.
            actions.append(SetConfig(config=seed_config(settings), expected_version=None))
    slots, drop, absent = _plan_slots(view, memory, now, settings)
    memory = replace(memory, slots_absent_since=absent)
    if slots != memory.slots or drop:
        actions.append(EnsureSlots(names=slots, drop=drop))
    sync_step, memory = plan_sync(view, local, memory, settings)
    if sync_step is not None:
        actions.append(sync_step)
    failsafe_step, memory = _plan_failsafe(view, memory, now, settings)
    if failsafe_step is not None:
        actions.append(failsafe_step)
    if view.switchover is not None and _switchover_due(obs):
        step, why, memory = _plan_switchover(obs, memory, settings)
        reason = why
        if step is not None:
            actions.append(step)
    else:
        memory = replace(memory, handover_wait_since=None)
    return _decision(memory, reason, *actions)


def _commit_stall(
    obs: Observation, memory: Memory, settings: Settings
) -> tuple[tuple[Decision, Memory] | None, Memory]:
    """A leader whose PostgreSQL answers but cannot commit (the probe's heartbeat) is a
    zombie primary: its storage hangs, no write can be acknowledged, and renewing the lease
    would block failover for as long as the storage does. After postgres_unresponsive_s it
    SIGKILLs the server (a pending SIGKILL ends a process blocked in I/O before it returns to
    user space, so nothing it was committing can be acknowledged afterwards) and hands the
    lease on at once; it does not restart in place (the storage is the problem). The
    executor stops at a failed kill, and then the lease lapses at the fencing deadline."""
    local, now = obs.local, obs.now
    if not (local.is_primary and local.commit_stalled):
        return None, replace(memory, commit_stalled_since=None)
    since = memory.commit_stalled_since if memory.commit_stalled_since is not None else now
    memory = replace(memory, commit_stalled_since=since)
    keep: Action = RenewLeader() if memory.lease_sent_at is not None else AcquireLeader()
    if now - since < settings.timing.postgres_unresponsive_s:
        return _decision(memory, "PostgreSQL answers but cannot commit: waiting", keep), memory
    decision = _decision(
        memory,
        f"PostgreSQL has not committed for {now - since:.1f} s: killing it and handing the "
        "lease on",
        StopPostgres(mode=StopMode.KILL),
        ReleaseLeader(),
    )
    return decision, memory


def _when_leader_pg_down(
    obs: Observation, memory: Memory, settings: Settings, keep: Action
) -> tuple[Decision, Memory]:
    """The leader's PostgreSQL does not answer. Down (no process): restart it in place. Hung
    (a process that let the probe time out): SIGKILL it, with every child, after
    postgres_unresponsive_s, then restart it. Starting (a process that answers with an error):
    wait. After primary_start_timeout_s in all: release the lease, but only once no process is
    left: a hung server that resumed would acknowledge writes next to the new leader."""
    local, now, timing = obs.local, obs.now, settings.timing
    down_since = memory.pg_down_since if memory.pg_down_since is not None else now
    hung_since = None
    if local.unresponsive:
        hung_since = memory.pg_hung_since if memory.pg_hung_since is not None else now
    memory = replace(memory, pg_down_since=down_since, pg_hung_since=hung_since)
    kill = StopPostgres(mode=StopMode.KILL)
    if now - down_since >= timing.primary_start_timeout_s:
        first = (kill,) if local.postmaster_pid is not None else ()
        return _decision(
            memory,
            "PostgreSQL did not come back within primary_start_timeout_s: releasing the lease",
            *first,
            ReleaseLeader(),
        )
    if hung_since is not None:
        if now - hung_since >= timing.postgres_unresponsive_s:
            return _decision(
                memory,
                f"PostgreSQL has not answered for {now - hung_since:.1f} s: killing it",
                kill,
                keep,
            )
        return _decision(memory, "PostgreSQL does not answer: hung, not down", keep)
    if local.postmaster_pid is not None:
        return _decision(memory, "PostgreSQL is not accepting connections yet", keep)
    if was_primary(local):
        return _decision(
            memory,
            "PostgreSQL is down under the leader: restarting it in place",
            keep,
            StartPostgres(upstream=None, as_primary=True),
        )
    return _decision(
        memory,
        "leader with a standby data directory: starting it to promote",
        keep,
        StartPostgres(upstream=None),
    )


def _plan_switchover(
    obs: Observation, memory: Memory, settings: Settings
) -> tuple[Action | None, str, Memory]:
    """The leader's step for a due switchover request: hand over to a candidate that streams
    from us caught up; wait (serving) up to switchover_timeout_s for one that does not yet;
    clear the request when it is stale, failed, or names nobody eligible."""
    view, local, now = obs.cluster, obs.local, obs.now
    assert view is not None and view.switchover is not None
    request = view.switchover
    clear = ClearSwitchover(version=request.version)
    done = replace(memory, handover_wait_since=None)
    if request.candidate == settings.name or (
        request.leader is not None and request.leader != settings.name
    ):
        # Stale: written for another leader, or naming us (the new leader) as candidate.
        return clear, "leader renews; clearing a finished switchover request", done
    if memory.failed_at is not None and now - memory.failed_at < RETRY_BACKOFF_S:
        return clear, "switchover failed: request cleared", done
    if request.candidate is not None:
        target = view.member(request.candidate)
        ready = target is not None and streams_caught_up(target.name, local, settings)
    else:
        target, ready = choose_handover(view, local, settings)
    if target is None or not _candidate_ok(target, local.wal_lsn, settings):
        return clear, "switchover request has no healthy candidate: cleared", done
    if not _sync_candidate_ok(view, target.name):
        return clear, f"switchover to {target.name} refused: not a synchronous standby", done
    if ready:
        return HandOver(candidate=target.name), f"switchover to {target.name}", done
    since = memory.handover_wait_since if memory.handover_wait_since is not None else now
    if now - since >= settings.timing.switchover_timeout_s:
        return (
            clear,
            f"switchover to {target.name} cleared: it did not stream from us caught up "
            "within switchover_timeout_s",
            done,
        )
    return (
        None,
        f"switchover to {target.name}: waiting for it to stream from us caught up",
        replace(memory, handover_wait_since=since),
    )


def _when_follower(obs: Observation, memory: Memory, settings: Settings) -> tuple[Decision, Memory]:
    view, local = obs.cluster, obs.local
    assert view is not None and view.leader is not None
    leader_name = view.leader.name
    memory = replace(
        memory,
        lease_sent_at=None,
        pg_down_since=None,
        failsafe_peers=None,
        failsafe_sent_at=None,
        failsafe_absent_since=(),
    )
    if local.is_primary:
        return _decision(
            memory,
            f"{leader_name} holds the lease but we are a primary: demoting at once",
            _fence(f"{leader_name} holds the lease"),
        )
    if local.unresponsive and was_primary(local):
        return _decision(
            memory,
            f"{leader_name} holds the lease and our former primary does not answer: killing it",
            StopPostgres(mode=StopMode.KILL),
        )
    leader = view.leader_member
    leader_up = (
        leader is not None and leader.role == Role.PRIMARY and leader.state == PgState.RUNNING
    )
    backing_off = memory.failed_at is not None and obs.now - memory.failed_at < RETRY_BACKOFF_S
    if needs_rewind(local, leader, view):
        if not leader_up:
            return _decision(memory, f"waiting for {leader_name} to run before rewinding")
        if backing_off:
            return _decision(memory, "waiting before retrying a failed rewind")
        if memory.rewind_failures > 0:
            return _decision(
                memory,
                f"rewind failed before: re-cloning from {leader_name}",
                Clone(source=leader_name, clear_first=True),
            )
        return _decision(memory, f"rewinding to follow {leader_name}", Rewind(source=leader_name))
    if LocalRequestKind.REINITIALIZE in obs.local_requests and leader_up:
        return _decision(
            memory, "reinitialize requested", Clone(source=leader_name, clear_first=True)
        )
    if not local.running:
        if backing_off:
            return _decision(memory, "waiting before starting PostgreSQL again")
        return _decision(
            memory, f"starting as a standby of {leader_name}", StartPostgres(upstream=leader_name)
        )
    if LocalRequestKind.RESTART in obs.local_requests:
        return _decision(memory, "restart requested", StopPostgres(mode=StopMode.FAST))
    if memory.following != leader_name:
        return _decision(memory, f"following {leader_name}", Follow(leader=leader_name))
    return _decision(memory, f"streaming from {leader_name}")


def _when_leaderless(
    obs: Observation, memory: Memory, settings: Settings
) -> tuple[Decision, Memory]:
    view, local = obs.cluster, obs.local
    assert view is not None
    memory = replace(
        memory,
        lease_sent_at=None,
        leaderless_since=obs.now if memory.leaderless_since is None else memory.leaderless_since,
    )
    if local.is_primary and failsafe_active(memory, obs.now, settings):
        # The DCS is back (or readable) and our lease expired meanwhile, but every member
        # promised not to race: take the lease back, confirming ourselves again first.
        peers = memory.failsafe_peers or ()
        return _decision(
            memory,
            "no leader record; primary in failsafe: taking the lease back",
            ConfirmFailsafe(members=peers),
            AcquireLeader(),
        )
    memory = replace(memory, failsafe_peers=None, failsafe_sent_at=None, failsafe_absent_since=())
    if local.is_primary:
        return _decision(
            memory,
            "no leader record but we are a primary: demoting at once",
            _fence("no leader record"),
        )
    if local.unresponsive and was_primary(local):
        return _decision(
            memory,
            "no leader record and our former primary does not answer: killing it",
            StopPostgres(mode=StopMode.KILL),
        )
    if not local.running:
        return _decision(
            memory,
            "no leader: starting as a standby with no upstream",
            StartPostgres(upstream=None),
        )
    if view.config.paused:
        return _decision(memory, "no leader, but the cluster is paused")
    hold = failsafe_hold(obs, memory, settings)
    if hold is not None:
        return _decision(memory, f"no leader; not racing: {hold}")
    request = view.switchover
    if request is not None and request.candidate is not None:
        named = _named_candidate(obs, memory, settings, request)
        if named is not None:
            return named
    healthiest, why = _am_healthiest(obs, settings, memory)
    if not healthiest:
        return _decision(memory, f"no leader; not racing: {why}")
    return _decision(
        memory,
        f"no leader; racing for the lease: {why}",
        AcquireLeader(),
        Promote(reason=PromoteReason.FAILOVER),
    )


def _named_candidate(
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
        if named is not None and is_healthy_replica(named) and deferring:
            return _decision(memory, f"no leader: {request.candidate} is the named candidate")
        return None
    refusal = sync_refusal(view, settings.name, obs.peers, check_quorum=False)
    refusal = refusal or timeline_refusal(obs.local, view)
    if refusal is not None:
        return _decision(memory, f"named switchover candidate, but {refusal}")
    if request.handover_lsn is not None and not forced:
        mine = local_position(obs.local)
        last = memory.last_leader_wal_lsn
        behind = last is not None and (mine or 0) < last - settings.ha.maximum_lag_on_failover_bytes
        if mine is None or mine <= request.handover_lsn or behind:
            if deferring:
                return _decision(
                    memory,
                    f"named switchover candidate, but at {mine}, not past the hand-over "
                    f"position {request.handover_lsn}: waiting",
                )
            return None
    return _decision(
        memory,
        f"named {'failover' if forced else 'switchover'} candidate: taking the lease",
        AcquireLeader(),
        Promote(reason=PromoteReason.SWITCHOVER),
    )


def decide(obs: Observation, memory: Memory, settings: Settings) -> tuple[Decision, Memory]:
    """One HA decision. See the module docstring for the safety rules."""
    view = obs.cluster
    if view is not None:
        leader = view.leader_member
        if leader is not None and leader.name != settings.name:
            memory = replace(memory, last_leader=leader.name, last_leader_wal_lsn=leader.wal_lsn)
        if view.leader is not None:
            memory = replace(memory, leaderless_since=None)
    if obs.shutting_down:
        return _when_shutting_down(obs, memory, settings)
    if obs.pending is not None:
        return _when_busy(obs, memory, settings)
    if view is None:
        return _when_dcs_unavailable(obs, memory, settings)
    if memory.refused is not None:
        if obs.local.is_primary:
            return _decision(memory, memory.refused, _fence(memory.refused))
        return _decision(memory, memory.refused)
    if not obs.local.data_dir_initialized:
        return _when_no_data(obs, memory, settings)
    system_id = obs.local.system_id or (obs.local.control.system_id if obs.local.control else None)
    if view.initialize and system_id and view.initialize != system_id:
        refused = (
            f"data directory holds system {system_id}, the cluster is {view.initialize}: "
            "refusing to join (reinitialize this member to clone it)"
        )
        if LocalRequestKind.REINITIALIZE in obs.local_requests and view.leader is not None:
            return _decision(
                memory, "reinitialize requested", Clone(source=view.leader.name, clear_first=True)
            )
        memory = replace(memory, refused=refused)
        if obs.local.is_primary:
            return _decision(memory, refused, _fence(refused))
        return _decision(memory, refused)
    if view.leader is not None and view.leader.name == settings.name:
        return _when_leader(obs, memory, settings)
    if view.leader is not None:
        return _when_follower(obs, memory, settings)
    return _when_leaderless(obs, memory, settings)


def record_outcome(memory: Memory, outcome: Outcome, settings: Settings) -> Memory:
    """Fold one executed action's result into Memory: the only way a result reaches it.
    UNREACHABLE counts as LOST except where a case below says otherwise."""
    action = outcome.action
    failed = replace(memory, failed_at=outcome.sent_at)
    match action:
        case AcquireLeader() | RenewLeader() | ReleaseLeader() | HandOver() | ConfirmFailsafe():
            return _record_leadership(memory, action, outcome)
        case Bootstrap() | Clone() | Rewind() | StartPostgres():
            return _record_instance(memory, action, outcome)
        case Demote() | StopPostgres():
            return replace(memory, following=None, slots=None, sync_effective=None)
        case Promote():
            if outcome.ok:
                return replace(memory, following=None, slots=None, sync_effective=None)
            return failed
        case Follow(leader=leader):
            return replace(memory, following=leader) if outcome.ok else failed
        case EnsureSlots(names=names):
            return replace(memory, slots=names) if outcome.ok else failed
        case SetSyncStandbyNames() | SetSyncRecord() | SetConfig() | SetFailsafeRecord():
            return memory
        case ClaimInitialize() | ClearInitialize() | SetInitialize() | ClearSwitchover():
            return memory
        case AppendHistory() | Exit():
            return memory
        case _:
            assert_never(action)


def _record_leadership(
    memory: Memory,
    action: AcquireLeader | RenewLeader | ReleaseLeader | HandOver | ConfirmFailsafe,
    outcome: Outcome,
) -> Memory:
    match action:
        case RenewLeader() if outcome.result is Result.UNREACHABLE:
            # Not lost: the DCS may have applied it or not. The lease stands until its fencing
            # deadline (the executor cycles again at once to retry the renewal).
            return memory
        case AcquireLeader() | RenewLeader():
            return replace(memory, lease_sent_at=outcome.sent_at if outcome.ok else None)
        case ReleaseLeader():
            return replace(
                memory,
                lease_sent_at=None,
                pg_down_since=None,
                pg_hung_since=None,
                commit_stalled_since=None,
                handover_wait_since=None,
                failsafe_peers=None,
                failsafe_sent_at=None,
                failsafe_absent_since=(),
            )
        case HandOver():
            if not outcome.ok:
                return replace(memory, failed_at=outcome.sent_at)
            return replace(
                memory,
                lease_sent_at=None,
                handed_over=True,
                slots=None,
                failsafe_peers=None,
                failsafe_sent_at=None,
                failsafe_absent_since=(),
            )
        case ConfirmFailsafe():
            if outcome.result is Result.UNREACHABLE:
                # Every member confirmed but the fencer could not be armed for it: without a
                # fencer no confirmation counts (nobody would stop us if we stalled).
                return replace(memory, failsafe_sent_at=None)
            # A round not every member accepted changes nothing.
            return replace(memory, failsafe_sent_at=outcome.sent_at) if outcome.ok else memory
        case _:
            assert_never(action)


def _record_instance(
    memory: Memory, action: Bootstrap | Clone | Rewind | StartPostgres, outcome: Outcome
) -> Memory:
    if not outcome.ok:
        if isinstance(action, Rewind) and outcome.result is Result.LOST:
            # Only a rewind that ran and failed counts against rewinding (then: re-clone).
            return replace(
                memory, rewind_failures=memory.rewind_failures + 1, failed_at=outcome.sent_at
            )
        return replace(memory, failed_at=outcome.sent_at)
    match action:
        case Bootstrap():
            return memory
        case Clone(source=source):
            return replace(
                memory, following=source, rewind_failures=0, failed_at=None, refused=None
            )
        case Rewind(source=source):
            return replace(memory, following=source, rewind_failures=0, failed_at=None)
        case StartPostgres(upstream=upstream):
            return replace(memory, following=upstream, failed_at=None)
        case _:
            assert_never(action)
