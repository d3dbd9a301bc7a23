"""Carrying out one action of a Decision through the seams (PostgresControl, Dcs, Fence,
Peers, callbacks): the part of the Executor (agent/executor.py) that knows what each action
does. `ActionRunner._run` answers whether the action succeeded (True), failed (False) or
raises; the Executor turns that into an Outcome and decides what happens next.
"""

from __future__ import annotations

import contextlib
from typing import assert_never

import structlog

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
    Demote,
    DropStaleSlots,
    EnsureSlots,
    Exit,
    Follow,
    HandOver,
    PrePromote,
    Promote,
    PromoteReason,
    Reconfigure,
    ReleaseLeader,
    RenewLeader,
    RestartPrimary,
    RestartWalReceiver,
    Rewind,
    SetConfig,
    SetFailsafeRecord,
    SetInitialize,
    SetLeaderPosition,
    SetRestartSchedule,
    SetSyncRecord,
    SetSyncStandbyNames,
    StartPostgres,
    StopMode,
    StopPostgres,
)
from agent.callbacks import CallbackRunner, post_bootstrap, pre_promote
from agent.clock import Clock
from agent.dcs.base import Dcs, DcsError
from agent.decide import (
    Memory,
    Observation,
    lease_valid,
    seed_config,
)
from agent.fence import Fence, FenceUnavailable
from agent.handover import ActionFailed, DcsCalls, Handover
from agent.inplace import restart_in_place
from agent.metrics import Metrics
from agent.model import (
    ClusterView,
    HistoryEntry,
    LocalState,
    MemberName,
    RecordKind,
    history_to_json,
)
from agent.peers import Peers, confirm_failsafe
from agent.postgres.control import PostgresControl
from agent.postgres.process import StandbyConfig
from agent.postgres.process import StopMode as PgStopMode
from agent.postgres.replication import render_synchronous_standby_names, slot_name_for
from agent.settings import Settings
from agent.steps import RecordWrite, pg_mode, record_write, standby_of

log = structlog.get_logger("pgwarden.loop")  # the Executor's logger: log lines unchanged

Instance = Bootstrap | Clone | Rewind | StartPostgres
# The actions on the local PostgreSQL (`_run_postgres`).
PostgresAction = (
    Reconfigure
    | Instance
    | StopPostgres
    | Demote
    | RestartPrimary
    | Promote
    | Follow
    | RestartWalReceiver
    | EnsureSlots
    | DropStaleSlots
    | SetSyncStandbyNames
)


class ActionRunner:
    """What each action does. A base of `Executor`, which sets these fields (it owns them)."""

    settings: Settings
    clock: Clock
    dcs: Dcs
    pg: PostgresControl
    fence: Fence
    peers: Peers
    metrics: Metrics
    callbacks: CallbackRunner
    memory: Memory
    exited: bool
    _call: DcsCalls
    _handover: Handover
    _reason: str

    async def _run(self, action: Action, obs: Observation, sent_at: float) -> bool:
        view = obs.cluster
        match action:
            case (
                ClaimInitialize()
                | ClearInitialize()
                | SetInitialize()
                | ClearSwitchover()
                | SetConfig()
                | SetSyncRecord()
                | SetFailsafeRecord()
                | SetRestartSchedule()
                | SetLeaderPosition()
            ):
                return await self._write(action)
            case AppendHistory(entry=entry, expected_version=version):
                return await self._append_history(view, entry, version)
            case AcquireLeader() | RenewLeader():
                return await self._lease(action, sent_at, obs.local)
            case ReleaseLeader():
                await self._call("release_leader", self.dcs.release_leader)
                if self.pg.pid() is None or not obs.local.is_primary:
                    await self.fence.disarm()
                log.info("lease_released")
                return True
            case PrePromote():
                return await pre_promote(self.callbacks, self.settings)
            case HandOver(candidate=candidate, shutting_down=shutting_down):
                await self._handover.run(
                    view, candidate, shutting_down=shutting_down, lease_holds=self._lease_holds
                )
                return True
            case ConfirmFailsafe(members=members):
                return await confirm_failsafe(self.peers, members, self.metrics)
            case Exit():
                self.exited = True
                return True
            case (
                Reconfigure()
                | Bootstrap()
                | Clone()
                | Rewind()
                | StartPostgres()
                | StopPostgres()
                | Demote()
                | RestartPrimary()
                | Promote()
                | Follow()
                | RestartWalReceiver()
                | EnsureSlots()
                | DropStaleSlots()
                | SetSyncStandbyNames()
            ):
                await self._run_postgres(action, obs)
                return True
            case _:
                assert_never(action)

    async def _run_postgres(self, action: PostgresAction, obs: Observation) -> None:
        """The actions on the local PostgreSQL: they succeed or raise."""
        view = obs.cluster
        match action:
            case Reconfigure(config=config):
                await self.pg.apply_dynamic(config)
                log.info("postgres_reconfigured", parameters=dict(config.parameters))
            case Bootstrap() | Clone() | Rewind() | StartPostgres():
                await self._make_instance(action, view)
            case StopPostgres() | Demote():
                await self._stop(action)
            case RestartPrimary():
                # Memory is the loop's, renewed meanwhile by the cycles (`when_busy`).
                def holds() -> bool:
                    return lease_valid(self.memory, self.clock.monotonic(), self.settings)

                await restart_in_place(self.pg, self.settings.timing, lease_holds=holds)
            case Promote(reason=reason):
                self._require_lease("promote")
                await self._promote(view, obs.local, reason)
                await self._still_leased("promoted")
            case Follow(leader=leader):
                await self.pg.follow(standby_of(self.settings, view, leader))
            case RestartWalReceiver(upstream=upstream, stalled_s=stalled_s):
                pid = await self.pg.restart_wal_receiver()
                self.metrics.count_wal_receiver_restart()
                log.warning(
                    "wal_receiver_restarted", upstream=upstream, stalled_s=stalled_s, pid=pid
                )
            case EnsureSlots(names=names, drop=drop, permanent=permanent, synchronized=sync):
                await self.pg.set_slots(
                    ensure=[slot_name_for(n) for n in names],
                    drop=[slot_name_for(n) for n in drop],
                    permanent=permanent,
                    synchronized=None if sync is None else [slot_name_for(n) for n in sync],
                )
            case DropStaleSlots(names=names):
                await self.pg.drop_stale_logical_slots(names)
                log.info("stale_slot_copies_dropped", slots=list(names))
            case SetSyncStandbyNames(standbys=standbys):
                await self.pg.set_sync_standbys(
                    standbys, timeout_s=self.settings.timing.retry_timeout_s
                )
                value = render_synchronous_standby_names(standbys)
                log.info("synchronous_standby_names_set", value=value)
            case _:
                assert_never(action)

    async def _write(self, action: RecordWrite) -> bool:
        kind, value, version = record_write(action)
        ok = await self._call(
            "write_record",
            lambda: self.dcs.write_record(kind, value, expected_version=version),
        )
        if isinstance(action, SetSyncRecord):
            record = action.record
            log.info(
                "sync_record_written", ok=ok, members=list(record.members), quorum=record.quorum
            )
        elif isinstance(action, SetFailsafeRecord):
            failsafe = action.record
            members = [n for n, _ in failsafe.members] if failsafe is not None else None
            log.info("failsafe_record_written", ok=ok, members=members)
        return ok

    async def _append_history(
        self, view: ClusterView | None, entry: HistoryEntry, version: str | None
    ) -> bool:
        entries = (view.history if view is not None else ()) + (entry,)
        return await self._call(
            "write_record",
            lambda: self.dcs.write_record(
                RecordKind.HISTORY,
                history_to_json(entries[-100:]),
                expected_version=version or None,
            ),
        )

    async def _lease(
        self, action: AcquireLeader | RenewLeader, sent_at: float, local: LocalState
    ) -> bool:
        """Take or keep the lease; the fencer is armed from the send time. Memory learns
        the send time from the Outcome. A renewal whose deadline the fencer did not take
        raises FenceUnavailable, which the executor counts as unreachable: the lease stands
        to the deadline armed before (issue 16)."""
        deadline = self.settings.timing.fence_deadline(sent_at)
        if isinstance(action, RenewLeader):
            if not await self._call("renew_leader", self.dcs.renew_leader):
                return False
            await self.fence.arm(deadline)
            return self._before(deadline)
        if not await self._call("acquire_leader", self.dcs.acquire_leader):
            return False
        try:
            await self.fence.arm(deadline)
        except FenceUnavailable:
            # Without a fencer nobody would stop us if we stalled: do not lead. A primary
            # (an agent restarted over it) stops taking writes first: released while it
            # still accepted them, the key would let another member promote beside it.
            if local.is_primary or (self.pg.pid() is not None and not local.is_replica):
                log.error("postgres_stopped_unfenced", reason="the fencer cannot be reached")
                await self.pg.stop(
                    PgStopMode.FAST, timeout_s=self.settings.timing.fence_margin_s / 2
                )
            await self._call("release_leader", self.dcs.release_leader)
            raise
        if not self._before(deadline):
            return False
        log.info("lease_acquired")
        return True

    def _lease_holds(self) -> bool:
        return lease_valid(self.memory, self.clock.monotonic(), self.settings)

    def _require_lease(self, what: str) -> None:
        """Only under a lease that still runs (the decision may be older than it: an agent
        stopped between deciding and acting, crash points, issue 16)."""
        if not self._lease_holds():
            raise ActionFailed(f"not done ({what}): our lease ran out since the decision")

    async def _still_leased(self, what: str) -> None:
        """After a call that made a primary: an agent stopped between `_require_lease` and
        the call past its lease (the fencer fired meanwhile and watches no more) stops what
        it just made at once, instead of leaving it beside the new leader."""
        if self._lease_holds():
            return
        log.error("primary_without_lease_stopped", after=what)
        await self.pg.stop(PgStopMode.IMMEDIATE, timeout_s=self.settings.timing.fence_margin_s)
        raise ActionFailed(f"{what} after our lease ran out: stopped at once")

    def _before(self, deadline: float) -> bool:
        """The lease just taken or kept still runs once the fencer holds its deadline. An
        agent stopped (SIGSTOP, a paused VM, a starved process) between the DCS's answer and
        the arm past the deadline would otherwise go on to promote or start a primary while
        another member leads (crash points, issue 16); the fencer, woken late, stops it at
        some point after, not before."""
        if self.clock.monotonic() < deadline:
            return True
        log.error("lease_expired_before_armed", late_s=round(self.clock.monotonic() - deadline, 3))
        return False

    async def _make_instance(self, action: Instance, view: ClusterView | None) -> None:
        s = self.settings
        timing = s.timing
        start_s = timing.primary_start_timeout_s
        match action:
            case Bootstrap():
                # We hold the lease, and a route (Endpoints subsets, EndpointSlice, a client's
                # multi-host list) may lead writers here already: until the cluster is
                # complete PostgreSQL listens on its Unix socket only, so that no write can
                # be acknowledged that a failed post_bootstrap would discard. [review R4]
                await self.pg.initdb()
                await self.pg.start(standby=None, timeout_s=start_s, socket_only=True)
                await self.pg.create_roles()
                await post_bootstrap(self.callbacks, self.settings, self.pg)
                # Recorded before it is opened: an agent stopped after the opening would
                # leave a cluster clients wrote to that the DCS does not name, and another
                # member would withdraw the claim and make a new one (crash points, issue 16).
                await self._record_system()
                await self.pg.open_to_clients(timeout_s=start_s)
            case Clone(source=source, clear_first=clear_first):
                standby = standby_of(s, view, source)
                if clear_first:
                    await self.pg.stop(PgStopMode.FAST, timeout_s=timing.shutdown_timeout_s)
                    self.pg.clear_data_dir()
                await self.pg.clone(standby, timeout_s=timing.clone_timeout_s)
                await self.pg.start(standby=standby, timeout_s=start_s)
            case Rewind(source=source):
                standby = standby_of(s, view, source)
                await self.pg.stop(PgStopMode.FAST, timeout_s=timing.shutdown_timeout_s)
                try:
                    await self.fence.disarm()
                except FenceUnavailable as exc:
                    # Stopped, it is no primary to fence: rewind anyway (a frozen fencer may
                    # still stop the standby when it wakes; it is started again). Failing
                    # here counted as a failed rewind, and the member re-cloned the whole
                    # database (chaos finding 25).
                    log.warning("rewind_without_disarm", error=repr(exc))
                # A source unreachable for a ttl has lost its lease or is no leader to
                # rewind onto now: give up (data intact) and let the loop decide again. Retried
                # for all of rewind_timeout_s (300 s), a leader that died as the rewind began
                # kept this member busy, stopped, unable to race (docs/chaos.md finding 28).
                await self.pg.rewind(
                    standby, timeout_s=timing.rewind_timeout_s, unreachable_s=timing.ttl_s
                )
                await self.pg.start(standby=standby, timeout_s=start_s)
            case StartPostgres(upstream=upstream, as_primary=as_primary):
                if as_primary:
                    self._require_lease("start as a primary")
                    await self.pg.start(standby=None, timeout_s=start_s)
                    await self._still_leased("started as a primary")
                    # A bootstrap recorded but not opened (its agent stopped in between):
                    # opened now; on any other server only the check (one query).
                    await self.pg.open_to_clients(timeout_s=start_s)
                    return
                if upstream is None:
                    standby = StandbyConfig(
                        primary_host="", primary_port=0, slot_name=None, application_name=s.name
                    )
                else:
                    standby = standby_of(s, view, upstream)
                await self.pg.start(standby=standby, timeout_s=start_s)
            case _:
                assert_never(action)

    async def _record_system(self) -> None:
        """Write our new cluster's system id into the initialize record we claimed."""
        # The bootstrap's own time, not one cycle's: the lease is renewed meanwhile. And
        # pg_control's copy when the SQL timed out anyway (a fresh server under load): the
        # system id never changes, and without it the bootstrap was discarded for nothing.
        local = await self.pg.probe(timeout_s=self.settings.timing.primary_start_timeout_s)
        system_id = local.system_id or (local.control.system_id if local.control else None)
        view = await self._call("get_cluster", self.dcs.get_cluster)
        if system_id is None:
            raise ActionFailed("bootstrap: no system id (neither SQL nor pg_control answered)")
        if view.leader is None or view.leader.name != self.settings.name:
            raise ActionFailed("bootstrap: the lease is no longer ours")
        if view.initialize != "":
            raise ActionFailed("bootstrap: our claim on the cluster is gone")
        if not view.config.version:
            # The cluster-wide settings seeded from ours first (create only): recorded
            # without them, the cluster would never get them.
            await self._call(
                "write_record",
                lambda: self.dcs.write_record(
                    RecordKind.CONFIG, seed_config(self.settings).to_json(), expected_version=None
                ),
            )
        written = await self._call(
            "write_record",
            lambda: self.dcs.write_record(
                RecordKind.INITIALIZE,
                system_id,
                expected_version=view.initialize_version or None,
            ),
        )
        if not written:
            raise ActionFailed("bootstrap: the initialize record changed under us")

    async def _stop(self, action: StopPostgres | Demote) -> None:
        timing = self.settings.timing
        if isinstance(action, StopPostgres):
            if action.mode is StopMode.KILL:
                log.error("postgres_killed", reason=self._reason)
                await self.pg.close_probe()
            await self.pg.stop(pg_mode(action.mode), timeout_s=timing.shutdown_timeout_s)
            await self.fence.disarm()
            if action.clear_data:
                self.pg.clear_data_dir()
                log.warning("bootstrap_discarded", reason=self._reason)
            return
        log.warning("demoting", reason=action.reason, mode=action.mode.value)
        # A fast demotion at the fence deadline must be over well before the lease can
        # expire for the others: half the margin, then immediate, then SIGKILL.
        limit = timing.fence_margin_s / 2 if action.mode == StopMode.FAST else 5.0
        await self.pg.stop(pg_mode(action.mode), timeout_s=limit)
        await self.fence.disarm()
        self.metrics.count_demotion()

    async def _promote(
        self, view: ClusterView | None, local: LocalState, reason: PromoteReason
    ) -> None:
        old_timeline = local.timeline
        switch_lsn = local.replay_lsn or local.wal_lsn or 0
        t0 = self.clock.monotonic()
        await self.pg.promote(timeout_s=self.settings.timing.primary_start_timeout_s)
        log.info("promoted", reason=reason.value, duration_s=round(self.clock.monotonic() - t0, 3))
        if reason is PromoteReason.SWITCHOVER:
            self.metrics.count_switchover()
        else:
            self.metrics.count_failover()
        switch = await self.pg.last_timeline_switch()
        if switch is not None:
            # Exact, unlike the probe taken before the promotion: replicas compare their
            # position with it to decide whether they need pg_rewind.
            old_timeline, switch_lsn = switch
        if old_timeline is not None:
            entry = HistoryEntry(
                timeline=old_timeline,
                switch_lsn=switch_lsn,
                reason=reason.value,
                at=self.clock.wall(),
                new_leader=MemberName(self.settings.name),
            )
            with contextlib.suppress(DcsError, TimeoutError):
                await self._append_history(view, entry, view.history_version if view else None)
