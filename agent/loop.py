"""The async shell around `decide()`: observe, decide, act, publish.

One `HaLoop` per agent. Each cycle reads the DCS and probes PostgreSQL into immutable
snapshots, asks `decide()` what to do, hands the decision to the `Executor` (executor.py:
the actions in order, stopping at the first one that fails), then publishes an `AgentStatus`
(status.py; API, metrics) and this member's DCS record (in the background: one publish in
flight at most, never delaying the next cycle).
The loop sleeps `loop_wait_s` but wakes at once on a DCS watch event, an API request, the end
of a long action, the death of the postmaster, or when the fencing deadline comes near.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools

import structlog

from agent.actions import Decision
from agent.callback_settings import CallbackEvent
from agent.callbacks import ROLE_DEMOTED, CallbackRunner
from agent.clock import Clock
from agent.dcs.base import Dcs, DcsError
from agent.decide import (
    Memory,
    Observation,
    answer_failsafe,
    decide,
    fence_deadline,
    read_timeout_s,
)
from agent.events import Event, EventReason, EventSink, NoEvents, failsafe_event
from agent.executor import Executor
from agent.fence import Fence, FenceState, FenceUnavailable
from agent.handover import DcsCalls, Sleep
from agent.metrics import Metrics
from agent.model import (
    AgentStatus,
    ClusterView,
    LocalRequestKind,
    LocalState,
    Member,
    MemberName,
    PgState,
    Role,
)
from agent.peers import Peers, check_peers
from agent.postgres import pgbackrest
from agent.postgres.control import PostgresControl
from agent.settings import Settings
from agent.status import CycleValues, member_of_status, status_of

log = structlog.get_logger("pgwarden.loop")

# A primary in failsafe with the DCS down pauses this long between cycles (seconds).
FAILSAFE_PAUSE_S = 0.3


def _initial_status(settings: Settings) -> AgentStatus:
    """What the agent publishes before its first cycle: nothing known yet."""
    return AgentStatus(
        name=MemberName(settings.name),
        cluster=settings.cluster,
        role=Role.UNKNOWN,
        state=PgState.UNKNOWN,
        api_url=settings.api.url,
    )


class HaLoop:
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
        sleep: Sleep = asyncio.sleep,
        callbacks: CallbackRunner | None = None,
        events: EventSink | None = None,
    ) -> None:
        """`sleep`: how the hand-over pauses between polls (tests move a fake clock);
        `callbacks`: runs the configured callbacks (None: none); `events`: where what
        happened to this member is reported (agent/events.py)."""
        self.settings = settings
        self.clock = clock
        self.dcs = dcs
        self.pg = pg
        self.fence = fence
        self.peers = peers
        self.metrics = metrics
        self.events: EventSink = events or NoEvents()
        self._wake = asyncio.Event()
        self.status_changed = asyncio.Event()  # set each time the status is published
        self.executor = Executor(
            settings=settings,
            clock=clock,
            dcs=dcs,
            pg=pg,
            fence=fence,
            peers=peers,
            metrics=metrics,
            wake=self._wake.set,
            sleep=sleep,
            callbacks=callbacks,
            events=self.events,
        )
        self._call = DcsCalls(
            dcs=dcs, clock=clock, metrics=metrics, timeout_s=settings.timing.retry_timeout_s
        )
        self._status = _initial_status(settings)
        self._requests: list[LocalRequestKind] = []
        self._shutting_down = False
        self._view: ClusterView | None = None
        self._local: LocalState | None = None
        self._cycle = 0
        self._watch_task: asyncio.Task[None] | None = None
        self._pg_watch_task: asyncio.Task[None] | None = None
        self._publish_task: asyncio.Task[None] | None = None
        self._unpublished: Member | None = None  # the newest record not yet sent
        self._started_at = clock.monotonic()
        self._dcs_down = False

    @property
    def memory(self) -> Memory:
        """All cross-cycle state (agent.decide); the executor keeps it between cycles."""
        return self.executor.memory

    # ------------------------------------------------------------------ inputs from outside

    def status(self) -> AgentStatus:
        return self._status

    def submit(self, kind: LocalRequestKind) -> None:
        self._requests.append(kind)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def accept_failsafe(self, leader: str) -> str | None:
        """A primary in failsafe mode asks us (POST /failsafe) to confirm it. Accepting is a
        promise kept in Memory: no race for the lease for ttl_s from now (agent.decide,
        `answer_failsafe`, `failsafe_hold`). Returns why we refuse, or None when we accept."""
        before = self.memory
        refusal, after = answer_failsafe(
            leader,
            settings=self.settings,
            local=self._local,
            racing=self.executor.racing,
            memory=before,
            view=self._view,
            dcs_ok=self._status.dcs_ok,
            now=self.clock.monotonic(),
        )
        if refusal is not None:
            return refusal
        # Not a result of an action: the promise is the one write to Memory from outside
        # the executor, between its steps (this runs on the event loop, with no await).
        self.executor.memory = after
        if before.promised_to != leader:
            log.warning("failsafe_confirmed", primary=leader, promise_s=self.settings.timing.ttl_s)
        return None

    def request_shutdown(self) -> None:
        self._shutting_down = True
        self._wake.set()

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Cycle until a decision says Exit (after a shutdown request)."""
        self._watch_task = asyncio.create_task(self._watch_dcs(), name="dcs-watch")
        try:
            while not self.executor.exited:
                busy = await self.cycle_once()
                if self.executor.exited:
                    break
                await self._sleep(0.0 if busy else self._sleep_for())
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop the watches and the long action in flight; close the peer session. A
        publish in flight may finish within its DCS deadline (the last record says how we
        stopped)."""
        if self._publish_task is not None:
            with contextlib.suppress(Exception):
                await self._publish_task
        for task in (self._watch_task, self._pg_watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.executor.close()
        await self.peers.close()

    def _sleep_for(self) -> float:
        wait = self.settings.timing.loop_wait_s
        if self._dcs_down and self.memory.failsafe_peers is not None:
            # A primary in failsafe renews its deadline only by asking the members: each
            # cycle already waits a whole DCS timeout for the read, so do not sleep long too.
            wait = min(wait, FAILSAFE_PAUSE_S)
        if self.executor.retry_in_s is not None:
            wait = min(wait, self.executor.retry_in_s)  # a renewal the DCS refused at once
        deadline = fence_deadline(self.memory, self.settings)
        left = deadline - self.clock.monotonic() if deadline is not None else 0.0
        if left > 0:
            # Wake in time to retry a renewal (or to fence) before the deadline. One already
            # passed is no reason to wake sooner: a lease Memory still holds once it has
            # passed (a leader whose data directory is gone and whose release never ran, or
            # a decision that neither renews nor releases) made the loop cycle every 0.05 s
            # for good (seen in a fresh-clone CI run, issue 16).
            wait = min(wait, max(0.05, left - 0.5))
        return wait

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._wake.wait()
        self._wake.clear()

    async def _watch_dcs(self) -> None:
        while True:
            try:
                if await self.dcs.wait_for_change(max(self.settings.timing.loop_wait_s, 5.0)):
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watch only speeds the loop up; never fatal
                log.warning("dcs_watch_failed", error=repr(exc))
                await asyncio.sleep(1.0)

    def _watch_postmaster(self) -> None:
        if self._pg_watch_task is not None and not self._pg_watch_task.done():
            return
        if self.pg.pid() is None:
            return

        async def wait_exit() -> None:
            await self.pg.wait_for_exit()
            log.warning("postmaster_exited")
            self._wake.set()
            await self.check_fencer()

        self._pg_watch_task = asyncio.create_task(wait_exit(), name="postmaster-watch")

    async def cycle_once(self) -> bool:
        """One cycle: observe, decide, act, publish. True: cycle again at once."""
        started = self.clock.monotonic()
        self._cycle += 1
        obs = await self._observe()
        # Right after the observation, with no await between: a long action that ended while
        # we observed is both in `obs.pending` (snapshot taken before the reads, which may
        # predate its end) and folded into Memory (folded before observing, its end would be
        # seen as "nothing in flight" with Memory not knowing the result: a completed
        # hand-over looked abandoned and its request was deleted). The next cycle, at once
        # (its end woke the loop), judges fresh reads.
        self.executor.fold_finished()
        decision, memory = decide(obs, self.memory, self.settings)
        busy = await self.executor.execute(decision, obs, memory, known=self._view)
        self._watch_postmaster()
        await self._publish(obs, decision, started)
        return busy

    # ------------------------------------------------------------------ observe

    async def _observe(self) -> Observation:
        timing = self.settings.timing
        view: ClusterView | None = None
        # Taken before the reads: a long action that ends while we read (a slow probe) leaves
        # a view and a local state from before its end, which must be judged as in flight (a
        # bootstrap that opened its server as we probed was taken for one that never did and
        # discarded, 0.3 s after it listened, in a loaded fresh-clone CI run).
        pending = self.executor.pending
        t0 = self.clock.monotonic()
        # Short enough that a renewal retried after a failed read still fits before our fence
        # deadline (chaos finding 22).
        budget = read_timeout_s(self.memory, t0, self.settings)
        try:
            async with asyncio.timeout(budget):
                view = await self.dcs.get_cluster()
            self.metrics.observe_dcs("get_cluster", self.clock.monotonic() - t0, True)
        except (DcsError, TimeoutError) as exc:
            self.metrics.observe_dcs("get_cluster", self.clock.monotonic() - t0, False)
            log.warning("dcs_unavailable", operation="get_cluster", error=str(exc))
        self._view = view if view is not None else self._view
        self._dcs_down = view is None
        local = await self.pg.probe(timeout_s=timing.retry_timeout_s)
        self._local = local
        peers = None
        if view is not None and view.leader is None and local.is_replica:
            peers = await check_peers(self.peers, view.members, self.settings.name)
        requests = tuple(self._requests)
        self._requests.clear()
        return Observation(
            now=self.clock.monotonic(),
            wall_now=self.clock.wall(),
            cluster=view,
            local=local,
            pending=pending,
            peers=peers,
            local_requests=requests,
            shutting_down=self._shutting_down,
            started_at=self._started_at,
        )

    # ------------------------------------------------------------------ publish

    async def _publish(self, obs: Observation, decision: Decision, started: float) -> None:
        local = self._local or obs.local
        view = obs.cluster
        was_failsafe = self._status.failsafe_active
        self._status = status_of(
            CycleValues(
                view=view,
                last_view=self._view,
                local=local,
                pending=self.executor.pending,
                memory=self.memory,
                decision=decision,
                cycle=self._cycle,
                now=self.clock.monotonic(),
            ),
            self.settings,
        )
        self.status_changed.set()
        self.metrics.update(self._status)
        if (event := failsafe_event(was_failsafe, self._status.failsafe_active)) is not None:
            self.events.record(event)
        duration = self.clock.monotonic() - started
        self.metrics.observe_cycle(duration)
        log.info(
            "ha_cycle",
            decision=decision.summary,
            reason=decision.reason,
            role=self._status.role.value,
            leader=self._status.leader,
            duration_ms=round(duration * 1000, 1),
        )
        if view is None:
            return
        self._unpublished = member_of_status(
            self._status, local, self.settings, backup_pg=pgbackrest.backup_pg(self.settings)
        )
        if self._publish_task is None or self._publish_task.done():
            self._publish_task = asyncio.create_task(
                self._publish_member(), name="dcs-publish-member"
            )

    async def _publish_member(self) -> None:
        """Publish this member's record, the latest one a cycle made, until none is left.

        Off the cycle's path: on a slow link to the DCS (chaos finding 11: 5 s round trips)
        a publish costs one or two round trips (a keepalive, a put), and waiting for it in
        the cycle pushed the next renewal past the fencing deadline of a primary whose
        renewals all succeeded. At most one publish is in flight; a record made meanwhile
        replaces the one waiting (only the newest matters)."""
        while self._unpublished is not None:
            member, self._unpublished = self._unpublished, None
            try:
                await self._call(
                    "publish_member", functools.partial(self.dcs.publish_member, member)
                )
            except (DcsError, TimeoutError) as exc:
                log.warning("dcs_unavailable", operation="publish_member", error=str(exc))

    async def check_fencer(self) -> None:
        """After the postmaster died: count it if the fencer killed it (its deadline passed)."""
        with contextlib.suppress(FenceUnavailable):
            status = await self.fence.status()
            if status.state == FenceState.FENCED:
                log.error("fenced", reason="the lease could not be renewed before its deadline")
                self.metrics.count_fencing()
                # The fencer, not an action of ours, stopped the primary: say so all the same.
                self.executor.callbacks.fire(CallbackEvent.ON_ROLE_CHANGE, ROLE_DEMOTED)
                note = "the fencer stopped PostgreSQL: the lease could not be renewed in time"
                self.events.record(Event(reason=EventReason.FENCED, note=note))
                await self.fence.disarm()
