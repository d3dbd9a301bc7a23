"""The branches of the member that holds the leader record: renew, and keep the cluster in
shape (initialize and config records, slots, the synchronous set, the failsafe record, a due
switchover); a PostgreSQL that is down, hung or cannot commit under the leader; and shutting
down, where a leader hands over first.
"""

from __future__ import annotations

from dataclasses import replace

from agent.actions import (
    AcquireLeader,
    Action,
    ClearSwitchover,
    Decision,
    EnsureSlots,
    Exit,
    HandOver,
    Promote,
    PromoteReason,
    ReleaseLeader,
    RenewLeader,
    RestartPrimary,
    SetConfig,
    SetInitialize,
    StartPostgres,
    StopMode,
    StopPostgres,
)
from agent.decide.candidates import candidate_ok, choose_handover, streams_caught_up, was_primary
from agent.decide.failsafe import plan_failsafe
from agent.decide.position import plan_position
from agent.decide.restarts import restart_step
from agent.decide.state import (
    RETRY_BACKOFF_S,
    SLOT_GRACE_S,
    Memory,
    Observation,
    decided,
    fence_at_deadline,
    fence_deadline,
    promotion,
    promotion_vetoed,
)
from agent.decide.sync import plan_sync, sync_candidate_ok, sync_refusal
from agent.decide.topology import cascading
from agent.model import (
    ClusterView,
    DynamicConfig,
    LocalRequestKind,
    LocalState,
    MemberName,
)
from agent.settings import Settings
from agent.slot_config import FAILOVER_SLOTS_MAJOR, effective_wal_level, has_logical


def when_leader(obs: Observation, memory: Memory, settings: Settings) -> tuple[Decision, Memory]:
    view, local, now = obs.cluster, obs.local, obs.now
    assert view is not None
    deadline = fence_deadline(memory, settings)
    if local.is_primary and deadline is not None and now >= deadline:
        return decided(memory, "fence deadline passed", fence_at_deadline("fence deadline passed"))
    keep: Action = RenewLeader() if memory.lease_sent_at is not None else AcquireLeader()

    if not local.running:
        if deadline is not None and now >= deadline and local.postmaster_pid is None:
            # Our renewals no longer move the deadline (the DCS, or a fencer that does not
            # answer: a frozen fencer's primary was stopped at it) and no server is left: a
            # restart in place could not be fenced, and waiting primary_start_timeout_s for
            # it kept the cluster without a primary that long (chaos finding 25).
            return decided(
                memory,
                "fence deadline passed with PostgreSQL down: releasing the lease",
                ReleaseLeader(),
            )
        return _when_leader_pg_down(obs, memory, settings, keep)
    if local.socket_only or local.bootstrap_incomplete:
        # Our bootstrap, recorded as the cluster's system (agent.decide discards it
        # otherwise), whose agent stopped before opening it to clients: open it now.
        return decided(
            memory,
            "a recorded bootstrap that was not opened: opening it",
            keep,
            StartPostgres(upstream=None, as_primary=True),
        )
    memory = replace(memory, pg_down_since=None, pg_hung_since=None)
    stalled, memory = _commit_stall(obs, memory, settings)
    if stalled is not None:
        return stalled

    if local.is_replica:
        return _when_leader_is_standby(obs, memory, settings, keep)

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
    permanent, synchronized = view.config.slots, synchronized_standbys(view, local, settings)
    if (
        slots != memory.slots
        or drop
        or permanent != memory.permanent_slots
        or synchronized != memory.synchronized_slots
    ):
        actions.append(
            EnsureSlots(names=slots, drop=drop, permanent=permanent, synchronized=synchronized)
        )
    sync_step, memory = plan_sync(view, local, memory, settings)
    if sync_step is not None:
        actions.append(sync_step)
    failsafe_step, memory = plan_failsafe(view, memory, now, settings)
    if failsafe_step is not None:
        actions.append(failsafe_step)
    # Last: a lost or failed write of it stops nothing else (a long action ends the decision
    # before it: written at a later cycle).
    position = plan_position(view, local, memory, now, settings)
    last = (position,) if position is not None else ()
    if view.switchover is not None and _switchover_due(obs):
        step, why, memory = _plan_switchover(obs, memory, settings)
        reason = why
        if step is not None:
            actions.append(step)
        return decided(memory, reason, *actions, *last)
    if LocalRequestKind.RESTART in obs.local_requests:
        actions.append(RestartPrimary())
        memory = replace(memory, handover_wait_since=None)
        return decided(memory, "restart requested: restarting the leader in place", *actions)
    restart = restart_step(obs, memory, settings)
    if restart is None:
        return decided(replace(memory, handover_wait_since=None), reason, *actions, *last)
    restart_actions, reason, memory = restart
    return decided(memory, reason, *actions, *restart_actions, *last)


def _when_leader_is_standby(
    obs: Observation, memory: Memory, settings: Settings, keep: Action
) -> tuple[Decision, Memory]:
    """We hold the lease over a standby: promote it, after `pre_promote` when configured
    (a long action of its own; `memory.pre_promoted` says it passed). A veto hands the lease
    back at once, so that another member may take over."""
    view = obs.cluster
    if memory.lease_sent_at is None:
        # A key we did not take in this run: an agent restarted between its acquire and its
        # promote, or a key that no race of ours won (a DCS restored from a backup, a second
        # agent under our name: chaos finding 26), over a standby that may be behind or
        # outside the synchronous set. Handed back; the race decides, with its checks.
        refusal = sync_refusal(view, settings.name, None, check_quorum=False) if view else None
        why = f"we are {refusal}" if refusal else "no race of ours won it"
        return decided(
            memory,
            f"the leader key names us over a standby, but {why}: releasing it",
            ReleaseLeader(),
        )
    if promotion_vetoed(memory, obs.now, settings):
        return decided(
            replace(memory, pre_promoted=None),
            "pre_promote vetoed the promotion: releasing the lease",
            ReleaseLeader(),
        )
    if memory.pre_promoted is not None:
        return decided(
            memory, "pre_promote passed: promoting", keep, Promote(reason=memory.pre_promoted)
        )
    step = promotion(settings, PromoteReason.LEADER_IS_STANDBY)
    return decided(memory, "leader's PostgreSQL is a standby: promoting", keep, step)


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
        return decided(memory, "PostgreSQL answers but cannot commit: waiting", keep), memory
    decision = decided(
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
        return decided(
            memory,
            "PostgreSQL did not come back within primary_start_timeout_s: releasing the lease",
            *first,
            ReleaseLeader(),
        )
    if hung_since is not None:
        if now - hung_since >= timing.postgres_unresponsive_s:
            return decided(
                memory,
                f"PostgreSQL has not answered for {now - hung_since:.1f} s: killing it",
                kill,
                keep,
            )
        return decided(memory, "PostgreSQL does not answer: hung, not down", keep)
    if local.postmaster_pid is not None:
        return decided(memory, "PostgreSQL is not accepting connections yet", keep)
    if was_primary(local):
        return decided(
            memory,
            "PostgreSQL is down under the leader: restarting it in place",
            keep,
            StartPostgres(upstream=None, as_primary=True),
        )
    return decided(
        memory,
        "leader with a standby data directory: starting it to promote",
        keep,
        StartPostgres(upstream=None),
    )


def _plan_slots(
    view: ClusterView, memory: Memory, now: float, settings: Settings
) -> tuple[tuple[MemberName, ...], tuple[MemberName, ...], tuple[tuple[MemberName, float], ...]]:
    """Slots the primary keeps (present members, and absent ones within SLOT_GRACE_S), the
    ones to drop, and since when each absent member has been gone."""
    present = {m.name for m in view.members if m.name != settings.name}
    # A member streaming from another replica (tags.replicatefrom) uses no slot here: an
    # unused slot would hold WAL on the primary for as long as it cascades.
    elsewhere = cascading(view)
    since = dict(memory.slots_absent_since)
    for name in memory.slots or ():
        if name not in present:
            since.setdefault(name, now)
    absent = {n: t for n, t in since.items() if n not in present}
    drop = {n for n, t in absent.items() if now - t >= SLOT_GRACE_S}
    # Its slot from before it cascaded goes: asked every cycle while it cascades, since a
    # slot still in use (it has not re-pointed yet) is left alone by the drop.
    drop |= elsewhere
    kept = tuple(sorted((present | absent.keys()) - drop - elsewhere))
    remaining = tuple(sorted((n, t) for n, t in absent.items() if n not in drop))
    return kept, tuple(sorted(drop)), remaining


def synchronized_standbys(
    view: ClusterView, local: LocalState, settings: Settings
) -> tuple[MemberName, ...] | None:
    """Whose slots the primary lists in synchronized_standby_slots (PostgreSQL 17+): with a
    logical permanent slot and failover slots on, the members that stream from us now and
    may be promoted, so that no logical consumer gets a change before they have it. A
    standby that stops streaming leaves the list at the next cycle (the consumers would
    otherwise wait for it). None before 17 or when unknown (the setting does not exist)."""
    if local.pg_major is None or local.pg_major < FAILOVER_SLOTS_MAJOR:
        return None
    wal_level = effective_wal_level(
        settings.postgresql.parameters, view.config.postgresql.parameters
    )
    if not has_logical(view.config.slots) or wal_level != "logical":
        return ()
    eligible = {m.name for m in view.members if not m.tags.nofailover}
    return tuple(
        sorted(
            MemberName(row.application_name)
            for row in local.replication
            if row.state == "streaming" and row.application_name in eligible
        )
    )


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
    if target is None or not candidate_ok(target, local.wal_lsn, settings):
        return clear, "switchover request has no healthy candidate: cleared", done
    if not sync_candidate_ok(view, target.name):
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


def _switchover_due(obs: Observation) -> bool:
    view = obs.cluster
    if view is None or view.switchover is None:
        return False
    at = view.switchover.scheduled_at
    return at is None or at <= obs.wall_now


def when_shutting_down(
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
            return decided(memory, "shutting down: waiting for the action in flight", RenewLeader())
        return decided(memory, "shutting down: waiting for the action in flight")
    deadline = fence_deadline(memory, settings)
    in_time = deadline is None or now < deadline
    if (
        i_lead
        and local.is_primary
        and not memory.handed_over
        and not memory.shutdown_handover_failed
    ):
        assert view is not None
        candidate, ready = choose_handover(view, local, settings)
        if candidate is not None and ready and in_time:
            return decided(
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
            return decided(
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
    return decided(memory, reason, *actions)


def _stop_before_release(local: LocalState) -> StopPostgres | None:
    """How to stop our PostgreSQL before the lease goes: fast while it answers; SIGKILL when a
    process is there that does not (hung, or still starting): one that answers later must
    not accept writes next to a new leader. None: nothing runs."""
    if local.running:
        return StopPostgres(mode=StopMode.FAST)
    if local.postmaster_pid is not None:
        return StopPostgres(mode=StopMode.KILL)
    return None
