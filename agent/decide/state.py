"""What decide() reads and writes: the Observation of one cycle, the Memory carried from
one cycle to the next, the Outcome the executor reports for an action; the lease deadlines
derived from Memory; and the builders every branch uses (`decided`, `fence`,
`fence_at_deadline`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from agent.actions import (
    Action,
    Decision,
    Demote,
    PrePromote,
    Promote,
    PromoteReason,
    StopMode,
)
from agent.model import (
    ClusterView,
    LocalRequestKind,
    LocalState,
    Lsn,
    MemberName,
    PgConfig,
    PgState,
    Role,
    SyncStandbys,
)
from agent.settings import Settings
from agent.slot_config import PermanentSlot

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
class ReceiverStall:
    """A stretch in which a standby has not streamed from its running upstream: since when,
    on which postmaster, at which WAL positions (LocalState's wal_lsn, receive_lsn and
    replay_lsn: a move of any ends the stretch), and how many times
    its WAL receiver was restarted in it (each restart doubles the next wait)."""

    since: float  # monotonic: the stretch's start, or the last restart of the receiver
    postmaster_pid: int | None
    positions: tuple[Lsn | None, Lsn | None, Lsn | None]
    restarts: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Memory:
    """All state the agent carries from one cycle to the next."""

    lease_sent_at: float | None = None  # send time of our last successful acquire/renew
    # Our last renewal got no answer (the DCS may or may not have applied it): the next
    # cycle's read must leave a retried renewal its time (`read_timeout_s`).
    renewal_unanswered: bool = False
    pg_down_since: float | None = None  # leader only: first cycle PostgreSQL was seen down
    pg_hung_since: float | None = None  # leader only: first probe its PostgreSQL timed out
    commit_stalled_since: float | None = None  # leader only: first failed commit heartbeat
    # First cycle of the current stretch in which the postmaster refused connections with no
    # startup process under it (LocalState.postmaster_idle); None outside such a stretch.
    postmaster_idle_since: float | None = None
    # Follower: the current stretch in which its PostgreSQL does not stream from a running
    # upstream and its WAL position does not move (agent/decide/receiver.py); None outside one.
    receiver_stall: ReceiverStall | None = None
    # Leader: since when it wants to hand over (shutdown, switchover) but no candidate streams
    # from it caught up yet; it keeps serving meanwhile, for at most switchover_timeout_s.
    handover_wait_since: float | None = None
    # Since when this member has seen no leader record (bounds the deference to a candidate
    # named by a switchover or failover request).
    leaderless_since: float | None = None
    # A claim to bootstrap seen with no leader: (its record version, first seen), while it
    # lasts; withdrawn by a member without data only after a lease's ttl (agent/decide/member.py).
    unled_claim: tuple[str, float] | None = None
    following: MemberName | None = None  # whom our standby was last pointed at
    last_leader: MemberName | None = None
    last_leader_wal_lsn: Lsn | None = None
    # Leader: when it last wrote its WAL position into the DCS `position` record.
    position_written_at: float | None = None
    slots: tuple[MemberName, ...] | None = None  # slots last ensured on our primary
    # The permanent slots and synchronized_standby_slots last ensured with them (EnsureSlots;
    # ensured again whenever `slots` is, e.g. after a promotion).
    permanent_slots: tuple[PermanentSlot, ...] = ()
    synchronized_slots: tuple[MemberName, ...] | None = None
    slots_absent_since: tuple[tuple[MemberName, float], ...] = ()  # kept within the grace
    rewind_failures: int = 0
    failed_at: float | None = None  # when a long action last failed
    handed_over: bool = False  # shutdown: the switchover finished
    shutdown_handover_failed: bool = False  # shutdown: our hand-over failed; release instead
    refused: str | None = None  # a reason this member will not take part (wrong system id)
    # Leader: the synchronous_standby_names value PostgreSQL was first seen to run with, and
    # our WAL position then; every commit acknowledged before lies at or below that position.
    sync_effective: tuple[SyncStandbys, Lsn] | None = None
    # Leader: a synchronous_standby_names value ALTER SYSTEM may have left in
    # postgresql.auto.conf without the reload that applies it (SetSyncStandbyNames failed
    # between its two statements): any SIGHUP may apply it, so the `sync` record keeps
    # covering it until a SetSyncStandbyNames succeeds.
    sync_unreloaded: SyncStandbys | None = None
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
    # pre_promote (callbacks): it passed while we hold the lease (promote next, for this
    # reason); or when it last vetoed a promotion of ours (no race for ttl_s after that).
    pre_promoted: PromoteReason | None = None
    promote_vetoed_at: float | None = None
    # The DCS `postgresql` section the configuration files were last rendered with (a fresh
    # agent renders none until told; None: a reload was requested).
    pg_applied: PgConfig | None = field(default_factory=PgConfig)


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


def fence_deadline(memory: Memory, settings: Settings) -> float | None:
    """The later of the lease's deadline and the failsafe deadline (None: neither)."""
    sent = [t for t in (memory.lease_sent_at, memory.failsafe_sent_at) if t is not None]
    if not sent:
        return None
    return settings.timing.fence_deadline(max(sent))


def lease_alive(memory: Memory, now: float, settings: Settings) -> bool:
    """The lease's own deadline (not the failsafe one) has not passed."""
    sent = memory.lease_sent_at
    return sent is not None and now < settings.timing.fence_deadline(sent)


# The least time a leader's cluster read gets, however close its fence deadline is (a read
# that cannot answer in time fails, and the renewal is retried on the snapshot it lacks).
MIN_READ_S = 0.1


def read_timeout_s(memory: Memory, now: float, settings: Settings) -> float:
    """How long this cycle's cluster read may take: `retry_timeout_s`, but no longer than
    what still lets a renewal retried after a failed read complete before our fence deadline
    (a renewal takes up to `retry_timeout_s`). After a failed renewal, the next cycle reads
    the cluster first: a failed read then took a whole `retry_timeout_s` and the retry had
    less left than it needed, so one failed renewal and one failed read fenced a primary whose
    next request would have gone through (chaos finding 22: 40% packet loss on its etcd
    links). Only after a renewal that got no answer: a slow DCS that answers every renewal
    (chaos finding 11: round trips of 5 s at ttl 20) keeps reading with the whole time, or
    the leader would read nothing at all."""
    retry = settings.timing.retry_timeout_s
    deadline = fence_deadline(memory, settings)
    if deadline is None or not memory.renewal_unanswered:
        return retry
    return min(retry, max(deadline - now - retry, MIN_READ_S))


def lease_valid(memory: Memory, now: float, settings: Settings) -> bool:
    deadline = fence_deadline(memory, settings)
    return deadline is not None and now < deadline


def decided(memory: Memory, reason: str, *actions: Action) -> tuple[Decision, Memory]:
    """What a branch returns: the actions in order, one line why, and the new Memory."""
    return Decision(actions=tuple(actions), reason=reason), memory


def fence(reason: str) -> Demote:
    """Stop writing at once: another member may lead already, or ours is unknown."""
    return Demote(mode=StopMode.IMMEDIATE, reason=reason)


def fence_at_deadline(reason: str) -> Demote:
    """Our own fence deadline passed: the lease is still ours for the others until
    `deadline + fence_margin_s`, so a fast shutdown (bounded by half the margin) lets the WAL
    senders ship what was committed, instead of leaving acknowledged commits on this node
    alone (the fencer process does the same)."""
    return Demote(mode=StopMode.FAST, reason=reason)


def promotion(settings: Settings, reason: PromoteReason) -> Promote | PrePromote:
    """The step that promotes us once we hold the lease: the `pre_promote` callback first
    when one is configured (it may veto), else the promotion itself."""
    if settings.callbacks.pre_promote is not None:
        return PrePromote(reason=reason)
    return Promote(reason=reason)


def promotion_vetoed(memory: Memory, now: float, settings: Settings) -> bool:
    """pre_promote vetoed a promotion of ours less than ttl_s ago: we stay out of the race
    (and say so in our member record) so that another member takes over."""
    vetoed = memory.promote_vetoed_at
    return vetoed is not None and now - vetoed < settings.timing.ttl_s
