"""Runs a Decision's actions through the PostgresControl, Dcs, Fence and Peers seams.

Each action's result is an Outcome: OK, LOST (it failed, or returned False), or UNREACHABLE
(a DCS call that raised or timed out; a renewal whose deadline the fencer did not take; a
rewind whose source did not answer; a failsafe round every member accepted but the fencer could
not be armed for). What a result means for Memory is decided by `record_outcome`
(agent.decide), here and nowhere else; when to stop, by `next_step` (agent/stop_rules.py,
pure), which the executor runs by, except that a renewal the fencer did not take is retried at
the loop's pace rather than at once, one the DCS refused faster than RENEW_RETRY_PAUSE_S
after the rest of that pause, and one the DCS refused to shed load (`DcsThrottled`: a 429)
after the wait it asked for. What each action does is `ActionRunner`
(agent/action_runner.py), a base of `Executor`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from agent.action_runner import ActionRunner
from agent.actions import (
    AcquireLeader,
    Action,
    ConfirmFailsafe,
    Decision,
    RenewLeader,
    SetRestartSchedule,
    StartPostgres,
    StopPostgres,
)
from agent.callbacks import CallbackRunner, NoCallbacks, notification
from agent.clock import Clock
from agent.dcs.base import Dcs, DcsError, DcsThrottled
from agent.decide import (
    Memory,
    Observation,
    Outcome,
    Pending,
    Result,
    fence_deadline,
    record_outcome,
)
from agent.events import EventSink, NoEvents, event_for
from agent.fence import Fence, FenceUnavailable
from agent.handover import ActionFailed, DcsCalls, Handover, Sleep
from agent.metrics import Metrics
from agent.model import (
    ClusterView,
    LocalRequestKind,
    LocalState,
)
from agent.peers import Peers
from agent.postgres.bootstrap import SourceUnreachable
from agent.postgres.control import PostgresControl
from agent.postgres.process import PostgresError
from agent.settings import Settings
from agent.stop_rules import Done, StartLong, next_step

log = structlog.get_logger("pgwarden.loop")

# A renewal the DCS refused at once (connection refused, an API server answering 503 at once)
# is retried after this pause, not at once: the retry at once is for a renewal that waited
# out its timeout, and one that fails in microseconds made the loop spin against the DCS
# (the loop suite's memory DCS: thousands of renewals a second until the deadline).
RENEW_RETRY_PAUSE_S = 0.2


class Executor(ActionRunner):
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
        self._fence_silent = False  # this decision's renewal was not armed: no retry at once
        self._retry_after_s: float | None = None  # the DCS asked this long before a retry
        # The loop sleeps at most this long after the decision (a renewal that failed fast).
        self.retry_in_s: float | None = None

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
        self._fence_silent = False
        self._retry_after_s = None
        self.retry_in_s = None
        while True:
            step = next_step(decision.actions, done)
            if isinstance(step, Done):
                # A fencer that does not answer is retried at the loop's pace (it wakes in
                # time for the deadline), not at once: a dead fencer's socket fails at once,
                # and the loop would spin renewing against the DCS.
                if step.again and self._renewal_failed_fast(done):
                    return False
                return step.again and not self._fence_silent
            if isinstance(step, StartLong):
                self._start_long(step.action, known, obs.local)
                return False
            outcome = await self._attempt(step, obs)
            self._report(outcome)
            self.memory = record_outcome(self.memory, outcome, self.settings)
            done.append(outcome)

    def _renewal_failed_fast(self, done: list[Outcome]) -> bool:
        """The last action was a renewal the DCS did not answer, and it took less than
        RENEW_RETRY_PAUSE_S, or the DCS asked for a pause (a 429's Retry-After: never
        retried at once, issue 15): retried after the rest of that pause (`retry_in_s`)."""
        last = done[-1] if done else None
        if last is None or not isinstance(last.action, RenewLeader):
            return False
        if last.result is not Result.UNREACHABLE or self._fence_silent:
            return False
        if self._retry_after_s is not None:
            self.retry_in_s = self._retry_after_s
            return True
        took = self.clock.monotonic() - last.sent_at
        if took >= RENEW_RETRY_PAUSE_S:
            return False
        self.retry_in_s = RENEW_RETRY_PAUSE_S - took
        return True

    async def _attempt(self, action: Action, obs: Observation) -> Outcome:
        """Run one action; its Outcome."""
        sent_at = self.clock.monotonic()
        result, detail = Result.LOST, ""
        try:
            if await self._run(action, obs, sent_at):
                result = Result.OK
        except (DcsError, TimeoutError) as exc:
            result, detail = Result.UNREACHABLE, f"DCS: {exc!r}"
            if isinstance(exc, DcsThrottled):
                self._retry_after_s = exc.retry_after_s
        except FenceUnavailable as exc:
            # A renewal the DCS accepted but whose deadline the fencer did not take (starved,
            # issue 16): the fencer still holds the one armed before, so the lease stands to
            # that deadline, as after a renewal whose answer was lost; retried at the loop's
            # pace (`_execute`).
            if isinstance(action, RenewLeader):
                result = Result.UNREACHABLE
                self._fence_silent = True
            detail = f"fencer: {exc!r}"
        except (ActionFailed, PostgresError, OSError) as exc:
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
            if not self._fence_silent:  # the DCS did not answer, not the fencer
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
