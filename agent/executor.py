"""Runs a Decision's actions through the PostgresControl, Dcs, Fence and Peers seams.

Each action's result is an Outcome: OK, LOST (it failed, or returned False), or UNREACHABLE
(a DCS call that raised or timed out; a rewind whose source did not answer; a failsafe round
every member accepted but the fencer could not be armed for). What a result means for
Memory is decided by `record_outcome` (agent.decide), here and nowhere else; when to stop,
by `next_step` (agent/stop_rules.py, pure), which the executor runs by.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
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
    Decision,
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
from agent.callbacks import CallbackRunner, NoCallbacks, notification, post_bootstrap, pre_promote
from agent.clock import Clock
from agent.dcs.base import Dcs, DcsError
from agent.decide import (
    Memory,
    Observation,
    Outcome,
    Pending,
    Result,
    fence_deadline,
    lease_valid,
    record_outcome,
)
from agent.events import EventSink, NoEvents, event_for
from agent.fence import Fence, FenceUnavailable
from agent.handover import ActionFailed, DcsCalls, Handover, Sleep
from agent.inplace import restart_in_place
from agent.metrics import Metrics
from agent.model import (
    ClusterView,
    HistoryEntry,
    LocalRequestKind,
    LocalState,
    MemberName,
    RecordKind,
    history_to_json,
)
from agent.peers import Peers, confirm_failsafe
from agent.postgres.bootstrap import SourceUnreachable
from agent.postgres.control import PostgresControl
from agent.postgres.process import PostgresError, StandbyConfig
from agent.postgres.process import StopMode as PgStopMode
from agent.postgres.replication import render_synchronous_standby_names, slot_name_for
from agent.settings import Settings
from agent.steps import RecordWrite, pg_mode, record_write, standby_of
from agent.stop_rules import Done, StartLong, next_step

log = structlog.get_logger("pgwarden.loop")

Instance = Bootstrap | Clone | Rewind | StartPostgres


class Executor:
    """Carries out decisions. Owns the Memory between decide() and the next cycle, and the
    long action in flight (one at a time)."""

    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        dcs: Dcs,
        pg: PostgresControl,
        fence: Fence,
        peers: Peers,
        metrics: Metrics,
        wake: Callable[[], None],
        sleep: Sleep = asyncio.sleep,
        callbacks: CallbackRunner | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.settings = settings
        self.callbacks = callbacks if callbacks is not None else NoCallbacks()
        self.events: EventSink = events or NoEvents()
        # A restart's stop ran (on request): the next start is an `on_restart`, not an
        # `on_start`. Only names the callback; no decision depends on it.
        self._restarting = False
        self._restart_step = False
        self.clock = clock
        self.dcs = dcs
        self.pg = pg
        self.fence = fence
        self.peers = peers
        self.metrics = metrics
        self._wake = wake
        self._call = DcsCalls(
            dcs=dcs, clock=clock, metrics=metrics, timeout_s=settings.timing.retry_timeout_s
        )
        self._handover = Handover(
            settings=settings,
            clock=clock,
            dcs=dcs,
            call=self._call,
            pg=pg,
            fence=fence,
            sleep=sleep,
        )
        self.memory = Memory()
        self.racing = False  # the decision being executed races for the lease
        self.exited = False  # an Exit action ran: leave the loop
        self.pending: Pending | None = None
        self._task: asyncio.Task[None] | None = None
        self._finished: Outcome | None = None
        self._reason = ""  # the reason of the decision being executed

    # ------------------------------------------------------------------ decisions

    def fold_finished(self) -> None:
        """Record the outcome of the long action that ended since the last cycle."""
        if self._finished is not None:
            self._tell(self._finished)
            self.memory = record_outcome(self.memory, self._finished, self.settings)
            self._finished = None

    async def execute(
        self, decision: Decision, obs: Observation, memory: Memory, *, known: ClusterView | None
    ) -> bool:
        """Run the actions in order with `memory` (decide()'s); stop at the first failure.
        `known`: the last cluster view read (long actions use it while the DCS is down).
        True: cycle again at once."""
        self.memory = memory
        self.racing = any(isinstance(a, AcquireLeader) for a in decision.actions)
        self._reason = decision.reason  # for the events of its actions (postgres_killed)
        # A stop in a decision that also moves a rolling restart on is a restart's first half.
        self._restart_step = any(isinstance(a, SetRestartSchedule) for a in decision.actions)
        try:
            return await self._execute(decision, obs, known)
        finally:
            self.racing = False

    async def _execute(
        self, decision: Decision, obs: Observation, known: ClusterView | None
    ) -> bool:
        done: list[Outcome] = []
        while True:
            step = next_step(decision.actions, done)
            if isinstance(step, Done):
                return step.again
            if isinstance(step, StartLong):
                self._start_long(step.action, known, obs.local)
                return False
            outcome = await self._attempt(step, obs)
            self._report(outcome)
            self.memory = record_outcome(self.memory, outcome, self.settings)
            done.append(outcome)

    async def _attempt(self, action: Action, obs: Observation) -> Outcome:
        """Run one action; its Outcome."""
        sent_at = self.clock.monotonic()
        result, detail = Result.LOST, ""
        try:
            if await self._run(action, obs, sent_at):
                result = Result.OK
        except (DcsError, TimeoutError) as exc:
            result, detail = Result.UNREACHABLE, f"DCS: {exc!r}"
        except (ActionFailed, PostgresError, FenceUnavailable, OSError) as exc:
            detail = repr(exc)
        outcome = Outcome(action=action, result=result, sent_at=sent_at, detail=detail)
        if outcome.ok:
            self._notify(action, obs)
        if isinstance(action, ConfirmFailsafe) and outcome.ok:
            return await self._armed(outcome)
        return outcome

    def _tell(self, outcome: Outcome) -> None:
        """A completed action that an operator should see becomes an event."""
        if outcome.ok and (event := event_for(outcome.action)) is not None:
            self.events.record(event)

    def _report(self, outcome: Outcome) -> None:
        """Tell, or log and count a failed action (a failsafe round logs its own refusals)."""
        self._tell(outcome)
        action, detail = outcome.action, outcome.detail
        if outcome.ok or isinstance(action, ConfirmFailsafe):
            return
        if isinstance(action, RenewLeader) and outcome.result is Result.UNREACHABLE:
            log.warning("renew_failed", detail=detail)
            self.metrics.count_dcs_error("renew_leader")
            return
        log.warning("action_failed", action=type(action).__name__, detail=detail)
        if isinstance(action, RenewLeader):
            self.metrics.count_lease_loss()

    async def _armed(self, confirmed: Outcome) -> Outcome:
        """Move the fencer's deadline to the one the members just confirmed; without a
        fencer the confirmation is worth nothing (it would not stop us in time)."""
        deadline = fence_deadline(
            record_outcome(self.memory, confirmed, self.settings), self.settings
        )
        try:
            if deadline is None:
                raise FenceUnavailable("no deadline")
            await self.fence.arm(deadline)
        except FenceUnavailable as exc:
            log.error("failsafe_unarmed", error=repr(exc))
            return Outcome(
                action=confirmed.action,
                result=Result.UNREACHABLE,
                sent_at=confirmed.sent_at,
                detail=repr(exc),
            )
        return confirmed

    # ------------------------------------------------------------------ long actions

    def _start_long(self, action: Action, view: ClusterView | None, local: LocalState) -> None:
        started = self.clock.monotonic()
        self.pending = Pending(action=action, started_at=started)
        obs = Observation(now=started, wall_now=self.clock.wall(), cluster=view, local=local)
        self._task = asyncio.create_task(
            self._run_long(action, obs), name=f"long-{type(action).__name__}"
        )

    async def _run_long(self, action: Action, obs: Observation) -> None:
        started = obs.now
        result, detail = Result.LOST, ""
        try:
            if await self._run(action, obs, started):
                result = Result.OK
                self._notify(action, obs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            detail = repr(exc)
            if isinstance(exc, SourceUnreachable):
                result = Result.UNREACHABLE
            log.error("long_action_failed", action=type(action).__name__, error=detail)
        finally:
            self.pending = None
            self._finished = Outcome(action=action, result=result, sent_at=started, detail=detail)
            self._wake()
        log.info(
            "long_action_done",
            action=type(action).__name__,
            ok=result is Result.OK,
            duration_s=round(self.clock.monotonic() - started, 3),
        )

    async def close(self) -> None:
        """Cancel the long action in flight, if any; give running callbacks a moment."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.callbacks.close()

    def _notify(self, action: Action, obs: Observation) -> None:
        """Start the `on_*` callback that follows a successful action (never waits)."""
        requested = LocalRequestKind.RESTART in obs.local_requests or self._restart_step
        step = notification(
            action,
            running=obs.local.running,
            was_primary=obs.local.is_primary,
            restart_requested=requested,
            restarting=self._restarting,
        )
        if isinstance(action, StopPostgres) and requested:
            self._restarting = True
        elif isinstance(action, StartPostgres):
            self._restarting = False
        if step is not None:
            self.callbacks.fire(*step)

    # ------------------------------------------------------------------ one action

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
            case Reconfigure(config=config):
                await self.pg.apply_dynamic(config)
                log.info("postgres_reconfigured", parameters=dict(config.parameters))
                return True
            case AppendHistory(entry=entry, expected_version=version):
                return await self._append_history(view, entry, version)
            case AcquireLeader() | RenewLeader():
                return await self._lease(action, sent_at)
            case ReleaseLeader():
                await self._call("release_leader", self.dcs.release_leader)
                if self.pg.pid() is None or not obs.local.is_primary:
                    await self.fence.disarm()
                log.info("lease_released")
                return True
            case Bootstrap() | Clone() | Rewind() | StartPostgres():
                await self._make_instance(action, view)
                return True
            case StopPostgres() | Demote():
                await self._stop(action)
                return True
            case RestartPrimary():
                # Memory is the loop's, renewed meanwhile by the cycles (`when_busy`).
                def holds() -> bool:
                    return lease_valid(self.memory, self.clock.monotonic(), self.settings)

                await restart_in_place(self.pg, self.settings.timing, lease_holds=holds)
                return True
            case Promote(reason=reason):
                await self._promote(view, obs.local, reason)
                return True
            case PrePromote():
                return await pre_promote(self.callbacks, self.settings)
            case Follow(leader=leader):
                await self.pg.follow(standby_of(self.settings, view, leader))
                return True
            case EnsureSlots(names=names, drop=drop, permanent=permanent, synchronized=sync):
                await self.pg.set_slots(
                    ensure=[slot_name_for(n) for n in names],
                    drop=[slot_name_for(n) for n in drop],
                    permanent=permanent,
                    synchronized=None if sync is None else [slot_name_for(n) for n in sync],
                )
                return True
            case DropStaleSlots(names=names):
                await self.pg.drop_stale_logical_slots(names)
                log.info("stale_slot_copies_dropped", slots=list(names))
                return True
            case HandOver(candidate=candidate, shutting_down=shutting_down):
                await self._handover.run(view, candidate, shutting_down=shutting_down)
                return True
            case SetSyncStandbyNames(standbys=standbys):
                await self.pg.set_sync_standbys(
                    standbys, timeout_s=self.settings.timing.retry_timeout_s
                )
                value = render_synchronous_standby_names(standbys)
                log.info("synchronous_standby_names_set", value=value)
                return True
            case ConfirmFailsafe(members=members):
                return await confirm_failsafe(self.peers, members, self.metrics)
            case Exit():
                self.exited = True
                return True
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

    async def _lease(self, action: AcquireLeader | RenewLeader, sent_at: float) -> bool:
        """Take or keep the lease; the fencer is armed from the send time. Memory learns
        the send time from the Outcome."""
        deadline = self.settings.timing.fence_deadline(sent_at)
        if isinstance(action, RenewLeader):
            if not await self._call("renew_leader", self.dcs.renew_leader):
                return False
            await self.fence.arm(deadline)
            return True
        if not await self._call("acquire_leader", self.dcs.acquire_leader):
            return False
        try:
            await self.fence.arm(deadline)
        except FenceUnavailable:
            # Without a fencer nobody would stop us if we stalled: do not lead.
            await self._call("release_leader", self.dcs.release_leader)
            raise
        log.info("lease_acquired")
        return True

    async def _make_instance(self, action: Instance, view: ClusterView | None) -> None:
        s = self.settings
        timing = s.timing
        start_s = timing.primary_start_timeout_s
        match action:
            case Bootstrap():
                await self.pg.initdb()
                await self.pg.start(standby=None, timeout_s=start_s)
                await self.pg.create_roles()
                await post_bootstrap(self.callbacks, self.settings, self.pg)
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
                await self.fence.disarm()
                await self.pg.rewind(standby, timeout_s=timing.rewind_timeout_s)
                await self.pg.start(standby=standby, timeout_s=start_s)
            case StartPostgres(upstream=upstream, as_primary=as_primary):
                if as_primary:
                    await self.pg.start(standby=None, timeout_s=start_s)
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

    async def _stop(self, action: StopPostgres | Demote) -> None:
        timing = self.settings.timing
        if isinstance(action, StopPostgres):
            if action.mode is StopMode.KILL:
                log.error("postgres_killed", reason=self._reason)
                await self.pg.close_probe()
            await self.pg.stop(pg_mode(action.mode), timeout_s=timing.shutdown_timeout_s)
            await self.fence.disarm()
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
