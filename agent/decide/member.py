"""The branches where this member does not hold the leader record, or cannot tell: a long
action in flight, the DCS unreachable, no data directory yet, following a leader, and no
leader at all (the race for the lease).
"""

from __future__ import annotations

from dataclasses import replace

from agent.actions import (
    AcquireLeader,
    Bootstrap,
    ClaimInitialize,
    ClearInitialize,
    Clone,
    ConfirmFailsafe,
    Decision,
    DropStaleSlots,
    Follow,
    PromoteReason,
    ReleaseLeader,
    RenewLeader,
    Rewind,
    StartPostgres,
    StopMode,
    StopPostgres,
)
from agent.decide.candidates import am_healthiest, named_candidate, needs_rewind, was_primary
from agent.decide.failsafe import failsafe_active, failsafe_hold
from agent.decide.receiver import restart_receiver, track_stall
from agent.decide.restarts import restart_step
from agent.decide.state import (
    RETRY_BACKOFF_S,
    Memory,
    Observation,
    decided,
    fence,
    fence_at_deadline,
    fence_deadline,
    lease_alive,
    lease_valid,
    promotion,
    promotion_vetoed,
)
from agent.decide.topology import clone_source, upstream_for
from agent.model import (
    LocalRequestKind,
    LocalState,
    Member,
    MemberName,
    PgState,
    Role,
)
from agent.settings import Settings
from agent.slot_config import stale_copies

# A postmaster is there but refuses connections: starting, stopping, or on its way out after
# a crash. Starting PostgreSQL again cannot help (the start only waits for the postmaster that
# exists, and returned at once while postmaster.pid still said "ready": the loop cycled ~38
# times a second, chaos finding 12); the postmaster's exit wakes the loop.
_NOT_ACCEPTING = "PostgreSQL is not accepting connections: waiting for its postmaster"
# Unless it has refused them for IDLE_POSTMASTER_S with no startup process under it: then it is
# neither starting nor recovering (PostgreSQL's crash cycle SIGKILLs children still alive
# after 5 s and starts the startup process; a shutdown is as short), and PostgreSQL 18 stays
# so for good after its startup process PANICked in crash recovery (a standby whose disk was
# full). An immediate stop (the stop escalates to SIGKILL), then the usual start as a standby.
IDLE_POSTMASTER_S = 15.0


def _waiting_for_postmaster(
    obs: Observation, memory: Memory, prefix: str = ""
) -> tuple[Decision, Memory]:
    since = memory.postmaster_idle_since
    if since is None or obs.now - since < IDLE_POSTMASTER_S:
        return decided(memory, prefix + _NOT_ACCEPTING)
    return decided(
        replace(memory, postmaster_idle_since=None),
        f"{prefix}PostgreSQL has refused connections for {obs.now - since:.0f} s with no "
        "startup process: stopping it to start it again",
        StopPostgres(mode=StopMode.IMMEDIATE),
    )


def major_refusal(local: LocalState, leader: Member | None) -> str | None:
    """Why this member must not clone from, rewind against or stream from `leader`: its
    binaries are of another PostgreSQL major version (data directory and WAL formats differ;
    pg_basebackup and the WAL receiver would fail, or worse). It stays out, saying so every
    cycle, until one side is upgraded. None when both majors agree or one is unknown (an
    agent that does not publish it)."""
    if leader is None or leader.pg_major is None or local.pg_major is None:
        return None
    if leader.pg_major == local.pg_major:
        return None
    return (
        f"refusing to join: this member runs PostgreSQL {local.pg_major} but the leader "
        f"{leader.name} runs PostgreSQL {leader.pg_major}; members of one cluster must run "
        "the same major version"
    )


def when_busy(obs: Observation, memory: Memory, settings: Settings) -> tuple[Decision, Memory]:
    assert obs.pending is not None
    what = type(obs.pending.action).__name__
    view = obs.cluster
    deadline = fence_deadline(memory, settings)
    if obs.local.is_primary and deadline is not None and obs.now >= deadline:
        return decided(
            memory, f"fence deadline passed during {what}", fence_at_deadline("deadline passed")
        )
    if memory.lease_sent_at is not None and (
        view is None or (view.leader is not None and view.leader.name == settings.name)
    ):
        return decided(memory, f"{what} in flight; keeping the lease", RenewLeader())
    return decided(memory, f"{what} in flight")


def when_dcs_unavailable(
    obs: Observation, memory: Memory, settings: Settings
) -> tuple[Decision, Memory]:
    if obs.local.is_primary:
        if lease_valid(memory, obs.now, settings) and memory.failsafe_peers is not None:
            return decided(
                memory,
                "DCS unreachable; failsafe: asking every member to confirm us, retrying renewal",
                ConfirmFailsafe(members=memory.failsafe_peers),
                # Retrying the renewal costs a whole DCS timeout per cycle: only while the
                # lease itself may still be ours (after that, the lease is taken back with
                # AcquireLeader once the DCS answers).
                *((RenewLeader(),) if lease_alive(memory, obs.now, settings) else ()),
            )
        if lease_valid(memory, obs.now, settings):
            return decided(
                memory, "DCS unreachable; retrying renewal before the fence", RenewLeader()
            )
        return decided(
            memory,
            "DCS unreachable and the lease cannot be confirmed",
            fence_at_deadline("no valid lease"),
        )
    return decided(memory, "DCS unreachable")


def when_no_data(obs: Observation, memory: Memory, settings: Settings) -> tuple[Decision, Memory]:
    view = obs.cluster
    assert view is not None
    claimant = view.leader.name if view.leader is not None else None
    if view.initialize == "" and claimant is None:
        waiting, memory = _claimant_may_come(obs, memory, settings)
        if waiting:
            return decided(memory, "a claim to bootstrap with no leader yet: waiting for its lease")
    if view.initialize == "" and claimant in (None, settings.name):
        # A claim to bootstrap that never completed: ours failed (we still hold the lease we
        # took with it), or the claimant's lease is gone. Left alone it would keep every
        # member waiting for a leader to clone from, forever. Withdrawn (ours at once, before
        # our own retry pause), so that another member may bootstrap meanwhile.
        return decided(
            memory,
            "a bootstrap that did not complete: withdrawing its claim",
            ClearInitialize(version=view.initialize_version),
            *((ReleaseLeader(),) if claimant is not None else ()),
        )
    if claimant == settings.name:
        # We lead and hold no data: a recorded cluster whose data directory was emptied under
        # us, or a withdrawn claim whose release failed (a timeout under load: the claim was
        # cleared, the key stayed; seen in a fresh-clone CI run). Not renewing is not enough:
        # on etcd the leader key shares the lease our member record keeps alive. Released, a
        # member with data can lead, or the cluster is bootstrapped again; kept, every member
        # waited on us, cloning from nobody. Again every cycle until it is gone.
        return decided(memory, "leading with no data: releasing the lease", ReleaseLeader())
    if memory.failed_at is not None and obs.now - memory.failed_at < RETRY_BACKOFF_S:
        return decided(memory, "waiting before retrying a failed bootstrap or clone")
    if view.initialize is None and view.leader is None:
        if settings.tags.nofailover:
            return decided(memory, "empty cluster, but nofailover members do not bootstrap")
        # No initialize record, but members that hold data: the DCS lost its records (wiped,
        # re-created), the cluster did not. A new one here would fork it (and one restored
        # from its backup has its system id: its members would be rewound onto ours).
        holders = sorted(m.name for m in view.members if m.name != settings.name and m.system_id)
        if holders:
            return decided(
                memory,
                f"no initialize record, but {', '.join(holders)} hold data: not bootstrapping; "
                "waiting for a leader to clone from",
            )
        return decided(
            memory,
            "empty cluster: claiming it and bootstrapping",
            ClaimInitialize(),
            AcquireLeader(),
            Bootstrap(),
        )
    source = clone_source(view, settings.name) if view.leader is not None else None
    if source is not None:
        refusal = major_refusal(obs.local, view.leader_member)
        if refusal is not None:
            return decided(memory, refusal)
        return decided(memory, f"no data: cloning from {source}", Clone(source=source))
    return decided(memory, "no data: waiting for a running leader to clone from")


def _claimant_may_come(obs: Observation, memory: Memory, settings: Settings) -> tuple[bool, Memory]:
    """Whether a claim to bootstrap seen with no leader may still get its leader: the claimant
    may be between its claim and its AcquireLeader (two writes), or its lease is gone. Withdrawn
    at once, a live claimant's bootstrap failed at its record step ("our claim on the cluster
    is gone") and members withdrew each other's fresh claims for many rounds (a loop of 3-member
    bootstraps: 12 failed bootstraps before one completed; with pgBackRest the first such
    failure used to leave the cluster unable to bootstrap). A claimant that took the lease shows
    within a ttl; one that died does not. The wait starts over with another claim (version)."""
    view = obs.cluster
    assert view is not None
    since = obs.now
    if memory.unled_claim is not None and memory.unled_claim[0] == view.initialize_version:
        since = memory.unled_claim[1]
    memory = replace(memory, unled_claim=(view.initialize_version, since))
    return obs.now - since < settings.timing.ttl_s, memory


def when_follower(obs: Observation, memory: Memory, settings: Settings) -> tuple[Decision, Memory]:
    view, local = obs.cluster, obs.local
    assert view is not None and view.leader is not None
    leader_name = view.leader.name
    memory = replace(
        memory,
        lease_sent_at=None,
        pre_promoted=None,
        pg_down_since=None,
        failsafe_peers=None,
        failsafe_sent_at=None,
        failsafe_absent_since=(),
    )
    if local.is_primary:
        return decided(
            memory,
            f"{leader_name} holds the lease but we are a primary: demoting at once",
            fence(f"{leader_name} holds the lease"),
        )
    if local.unresponsive and was_primary(local):
        return decided(
            memory,
            f"{leader_name} holds the lease and our former primary does not answer: killing it",
            StopPostgres(mode=StopMode.KILL),
        )
    leader = view.leader_member
    leader_up = (
        leader is not None and leader.role == Role.PRIMARY and leader.state == PgState.RUNNING
    )
    backing_off = memory.failed_at is not None and obs.now - memory.failed_at < RETRY_BACKOFF_S
    refusal = major_refusal(local, leader)
    if refusal is not None:
        return decided(memory, refusal)
    if needs_rewind(local, leader, view):
        if not leader_up:
            return decided(memory, f"waiting for {leader_name} to run before rewinding")
        if backing_off:
            return decided(memory, "waiting before retrying a failed rewind")
        if memory.rewind_failures > 0:
            return decided(
                memory,
                f"rewind failed before: re-cloning from {leader_name}",
                Clone(source=leader_name, clear_first=True),
            )
        return decided(memory, f"rewinding to follow {leader_name}", Rewind(source=leader_name))
    if LocalRequestKind.REINITIALIZE in obs.local_requests and leader_up:
        return decided(
            memory, "reinitialize requested", Clone(source=leader_name, clear_first=True)
        )
    # The leader, or the member we cascade from while it streams (tags.replicatefrom).
    upstream = upstream_for(settings.name, settings.tags.replicatefrom, view) or leader_name
    if not local.running:
        if local.postmaster_pid is not None:
            return _waiting_for_postmaster(obs, memory)
        if backing_off:
            return decided(memory, "waiting before starting PostgreSQL again")
        return decided(
            memory, f"starting as a standby of {upstream}", StartPostgres(upstream=upstream)
        )
    if LocalRequestKind.RESTART in obs.local_requests:
        return decided(memory, "restart requested", StopPostgres(mode=StopMode.FAST))
    step = restart_step(obs, memory, settings)
    if step is not None:
        return decided(step[2], step[1], *step[0])
    if memory.following != upstream:
        # A new upstream starts a new receiver: any stall stretch so far is over.
        memory = replace(memory, receiver_stall=None)
        return decided(memory, f"following {upstream}", Follow(leader=upstream))
    running_leader = leader_up and upstream == leader_name
    return _following(obs, memory, settings, upstream, from_running_leader=running_leader)


def _following(
    obs: Observation,
    memory: Memory,
    settings: Settings,
    upstream: MemberName,
    *,
    from_running_leader: bool,
) -> tuple[Decision, Memory]:
    """A running standby pointed at `upstream` (the leader, whose record says it runs as the
    primary, when `from_running_leader`): the WAL-receiver watchdog (receiver.py), our stale
    slot copies, or nothing but the reason."""
    view, local = obs.cluster, obs.local
    assert view is not None
    # The upstream's server runs (a cascade source that runs reports `streaming`).
    up = view.member(upstream)
    up_runs = up is not None and up.state in (PgState.RUNNING, PgState.STREAMING)
    memory = track_stall(obs, memory, settings, up_runs)
    restart = restart_receiver(obs, memory, settings, upstream)
    if restart is not None:
        action, memory, reason = restart
        return decided(memory, reason, action)
    from_leader = from_running_leader and local.streaming
    stale = stale_copies(view.config.slots, local.slots) if from_leader else ()
    if stale:
        # Every cycle while they are there (a copy that could not be dropped is tried again;
        # a former primary rewound or started before anyone led still holds its own). Only
        # while we stream from the leader and its record says it runs as the primary: the
        # consumer's slot is the leader's, and the slot sync worker can make the synchronized
        # copy at once. Never without a leader: we may win the race and our copy is then all
        # we have. Nor while we cascade from another member [review S1]: our stream proves
        # nothing of the leader, whose record says "running" for up to a ttl after it died,
        # and the slot sync worker cannot copy from a standby, so the copy is all we have.
        return decided(
            memory,
            f"streaming from {upstream}; dropping our stale copies of {', '.join(stale)}",
            DropStaleSlots(names=stale),
        )
    if not local.streaming:
        # Not "streaming from": the member record says `running` then, and so does this.
        stall = memory.receiver_stall
        since = f" for {obs.now - stall.since:.0f} s" if stall is not None else ""
        return decided(memory, f"standby of {upstream}, not streaming{since}")
    return decided(memory, f"streaming from {upstream}")


def when_leaderless(
    obs: Observation, memory: Memory, settings: Settings
) -> tuple[Decision, Memory]:
    view, local = obs.cluster, obs.local
    assert view is not None
    memory = replace(
        memory,
        lease_sent_at=None,
        pre_promoted=None,
        leaderless_since=obs.now if memory.leaderless_since is None else memory.leaderless_since,
    )
    if local.is_primary and failsafe_active(memory, obs.now, settings):
        # The DCS is back (or readable) and our lease expired meanwhile, but every member
        # promised not to race: take the lease back, confirming ourselves again first.
        peers = memory.failsafe_peers or ()
        return decided(
            memory,
            "no leader record; primary in failsafe: taking the lease back",
            ConfirmFailsafe(members=peers),
            AcquireLeader(),
        )
    memory = replace(memory, failsafe_peers=None, failsafe_sent_at=None, failsafe_absent_since=())
    if local.is_primary:
        return decided(
            memory,
            "no leader record but we are a primary: demoting at once",
            fence("no leader record"),
        )
    if local.unresponsive and was_primary(local):
        return decided(
            memory,
            "no leader record and our former primary does not answer: killing it",
            StopPostgres(mode=StopMode.KILL),
        )
    if not local.running:
        if local.postmaster_pid is not None:
            return _waiting_for_postmaster(obs, memory, "no leader; ")
        return decided(
            memory,
            "no leader: starting as a standby with no upstream",
            StartPostgres(upstream=None),
        )
    if view.config.paused:
        return decided(memory, "no leader, but the cluster is paused")
    hold = failsafe_hold(obs, memory, settings)
    if hold is not None:
        return decided(memory, f"no leader; not racing: {hold}")
    if promotion_vetoed(memory, obs.now, settings):
        return decided(memory, "no leader; not racing: pre_promote vetoed our last promotion")
    request = view.switchover
    if request is not None and request.candidate is not None:
        named = named_candidate(obs, memory, settings, request)
        if named is not None:
            return named
    healthiest, why = am_healthiest(obs, settings, memory)
    if not healthiest:
        return decided(memory, f"no leader; not racing: {why}")
    return decided(
        memory,
        f"no leader; racing for the lease: {why}",
        AcquireLeader(),
        promotion(settings, PromoteReason.FAILOVER),
    )
