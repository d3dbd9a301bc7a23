"""The async shell around `decide()`: observe, decide, act, publish.

One `HaLoop` per agent. Each cycle reads the DCS and probes PostgreSQL into immutable
snapshots, asks `decide()` what to do, runs the actions in order (stopping at the first one
that fails), then publishes an `AgentStatus` (API, metrics) and this member's DCS record.
The loop sleeps `loop_wait_s` but wakes at once on a DCS watch event, an API request, the end
of a long action, the death of the postmaster, or when the fencing deadline comes near.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar, assert_never

import aiohttp
import asyncpg
import structlog

from agent.actions import (
    AcquireLeader,
    Action,
    AppendHistory,
    Bootstrap,
    ClaimInitialize,
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
    is_long,
)
from agent.clock import Clock
from agent.config import Settings
from agent.dcs.base import Dcs, DcsError
from agent.decide import (
    Memory,
    Observation,
    Outcome,
    PeerStatus,
    Pending,
    decide,
    failsafe_active,
    fence_deadline,
    pg_state_of,
    record_outcome,
    sync_fallback,
    sync_role_of,
)
from agent.fence import FenceClient, FenceState, FenceUnavailable
from agent.metrics import Metrics
from agent.model import (
    AgentStatus,
    ClusterView,
    HistoryEntry,
    LocalRequestKind,
    LocalState,
    Member,
    MemberName,
    MemberTags,
    PgState,
    RecordKind,
    Role,
    SwitchoverRequest,
    SyncRole,
    history_to_json,
)
from agent.postgres import bootstrap
from agent.postgres.probe import Prober, read_controldata
from agent.postgres.process import PostgresError, Postmaster, StandbyConfig
from agent.postgres.process import StopMode as PgStopMode
from agent.postgres.replication import (
    quote_literal,
    render_synchronous_standby_names,
    slot_name_for,
)

log = structlog.get_logger("pgwarden.loop")
_T = TypeVar("_T")

# A primary in failsafe with the DCS down pauses this long between cycles (seconds).
FAILSAFE_PAUSE_S = 0.3

# Actions that only keep things as they are: a cycle made of these sleeps normally.
_STEADY = (RenewLeader, EnsureSlots, ClearSwitchover, SetInitialize)


class ActionFailed(Exception):
    """An action could not be carried out; the rest of the decision is skipped."""


class HaLoop:
    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        dcs: Dcs,
        postmaster: Postmaster,
        prober: Prober,
        fence: FenceClient,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.dcs = dcs
        self.postmaster = postmaster
        self.prober = prober
        self.fence = fence
        self.metrics = metrics
        self.memory = Memory()
        self._status = AgentStatus(
            name=MemberName(settings.name),
            cluster=settings.cluster,
            role=Role.UNKNOWN,
            state=PgState.UNKNOWN,
            api_url=settings.api.url,
        )
        self._wake = asyncio.Event()
        self._requests: list[LocalRequestKind] = []
        self._shutting_down = False
        self._pending: Pending | None = None
        self._pending_task: asyncio.Task[None] | None = None
        self._pending_outcome: Outcome | None = None
        self._view: ClusterView | None = None
        self._local: LocalState | None = None
        self._cycle = 0
        self._exit = False
        self._watch_task: asyncio.Task[None] | None = None
        self._pg_watch_task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        # Failsafe (decide.py): whom we promised not to race, until when; and whether the
        # decision being executed races for the lease (no promise may be given meanwhile).
        self._started_at = clock.monotonic()
        self._promise: tuple[MemberName, float] | None = None
        self._racing = False
        self._dcs_down = False

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
        promise: no race for the lease for ttl_s from now (decide.py, `failsafe_hold`).
        Returns why we refuse, or None when we accept."""
        local = self._local
        view = self._view
        if leader == self.settings.name:
            return "the request names this member itself"
        if local is not None and local.is_primary:
            return "this member runs a primary"
        if self._racing or self.memory.lease_sent_at is not None:
            return "this member holds or is taking the leader lease"
        if (
            self._status.dcs_ok
            and view is not None
            and view.leader is not None
            and view.leader.name != leader
        ):
            return f"{view.leader.name} holds the leader lease"
        until = self.clock.monotonic() + self.settings.timing.ttl_s
        first = self._promise is None or self._promise[0] != leader
        self._promise = (MemberName(leader), until)
        if first:
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
            while not self._exit:
                busy = await self._cycle_once()
                if self._exit:
                    break
                await self._sleep(0.0 if busy else self._sleep_for())
        finally:
            for task in (self._watch_task, self._pg_watch_task, self._pending_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if self._http is not None:
                await self._http.close()

    def _sleep_for(self) -> float:
        wait = self.settings.timing.loop_wait_s
        if self._dcs_down and self.memory.failsafe_peers is not None:
            # A primary in failsafe renews its deadline only by asking the members: each
            # cycle already waits a whole DCS timeout for the read, so do not sleep long too.
            wait = min(wait, FAILSAFE_PAUSE_S)
        deadline = fence_deadline(self.memory, self.settings)
        if deadline is not None:
            # Wake in time to retry a renewal (or to fence) before the deadline.
            wait = min(wait, max(0.05, deadline - self.clock.monotonic() - 0.5))
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
        if self.postmaster.pid() is None:
            return

        async def wait_exit() -> None:
            await self.postmaster.wait_for_exit()
            log.warning("postmaster_exited")
            self._wake.set()
            await self.check_fencer()

        self._pg_watch_task = asyncio.create_task(wait_exit(), name="postmaster-watch")

    async def _cycle_once(self) -> bool:
        started = self.clock.monotonic()
        self._cycle += 1
        if self._pending_outcome is not None:
            self.memory = record_outcome(self.memory, self._pending_outcome, self.settings)
            self._pending_outcome = None
        obs = await self._observe()
        decision, self.memory = decide(obs, self.memory, self.settings)
        busy = await self._execute(decision, obs)
        self._watch_postmaster()
        await self._publish(obs, decision, started)
        return busy

    # ------------------------------------------------------------------ observe

    async def _observe(self) -> Observation:
        timing = self.settings.timing
        view: ClusterView | None = None
        t0 = self.clock.monotonic()
        try:
            async with asyncio.timeout(timing.retry_timeout_s):
                view = await self.dcs.get_cluster()
            self.metrics.observe_dcs("get_cluster", self.clock.monotonic() - t0, True)
        except (DcsError, TimeoutError) as exc:
            self.metrics.observe_dcs("get_cluster", self.clock.monotonic() - t0, False)
            log.warning("dcs_unavailable", operation="get_cluster", error=str(exc))
        self._view = view if view is not None else self._view
        self._dcs_down = view is None
        pid = self.postmaster.pid()
        local = await self.prober.probe(
            running=pid is not None, postmaster_pid=pid, timeout_s=timing.retry_timeout_s
        )
        self._local = local
        peers = None
        if view is not None and view.leader is None and local.is_replica:
            peers = await self._check_peers(view)
        requests = tuple(self._requests)
        self._requests.clear()
        promise = self._promise
        return Observation(
            now=self.clock.monotonic(),
            wall_now=self.clock.wall(),
            cluster=view,
            local=local,
            pending=self._pending,
            peers=peers,
            local_requests=requests,
            shutting_down=self._shutting_down,
            promised_to=promise[0] if promise is not None else None,
            promised_until=promise[1] if promise is not None else None,
            started_at=self._started_at,
        )

    def _peer_session(self) -> aiohttp.ClientSession:
        """The HTTP session for other members' APIs (peer checks, failsafe rounds)."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _check_peers(self, view: ClusterView) -> tuple[PeerStatus, ...]:
        """Ask every other member directly how far it got (DESIGN.md section 3, failover)."""
        session = self._peer_session()
        timeout = aiohttp.ClientTimeout(total=self.settings.timing.peer_check_timeout_s)

        async def ask(member: Member) -> PeerStatus:
            try:
                async with session.get(member.api_url + "/health", timeout=timeout) as resp:
                    body = await resp.json(content_type=None)
                return PeerStatus(
                    name=member.name,
                    reachable=True,
                    role=Role(body.get("role", "unknown")),
                    state=PgState(body.get("state", "unknown")),
                    timeline=body.get("timeline"),
                    wal_lsn=body.get("wal_lsn"),
                    nofailover=member.tags.nofailover,
                    failover_priority=member.tags.failover_priority,
                )
            except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
                return PeerStatus(name=member.name, reachable=False)

        others = [m for m in view.members if m.name != self.settings.name]
        return tuple(await asyncio.gather(*(ask(m) for m in others)))

    # ------------------------------------------------------------------ act

    async def _execute(self, decision: Decision, obs: Observation) -> bool:
        """Run the actions in order; stop at the first failure. True: cycle again at once."""
        self._racing = any(isinstance(a, AcquireLeader) for a in decision.actions)
        try:
            return await self._execute_actions(decision, obs)
        finally:
            self._racing = False

    async def _execute_actions(self, decision: Decision, obs: Observation) -> bool:
        changed = False
        for action in decision.actions:
            if is_long(action):
                self._start_long(action)
                return False
            sent_at = self.clock.monotonic()
            ok: bool | None
            detail = ""
            try:
                ok = await self._run_action(action, obs)
            except (DcsError, TimeoutError) as exc:
                ok, detail = None, f"DCS: {exc!r}"
            except (
                ActionFailed,
                PostgresError,
                FenceUnavailable,
                asyncpg.PostgresError,
                OSError,
            ) as exc:
                ok, detail = False, repr(exc)
            outcome = Outcome(action=action, ok=bool(ok), sent_at=sent_at, detail=detail)
            if isinstance(action, ConfirmFailsafe):
                # Never stops the decision: the renewal after it may still succeed.
                self.memory = record_outcome(self.memory, outcome, self.settings)
                if ok:
                    await self._arm_failsafe()
                continue
            if isinstance(action, RenewLeader) and ok is None:
                # Unreachable, not lost: keep the lease until its fencing deadline and retry.
                log.warning("renew_failed", detail=detail)
                self.metrics.count_dcs_error("renew_leader")
                return True
            self.memory = record_outcome(self.memory, outcome, self.settings)
            if not ok:
                log.warning("action_failed", action=type(action).__name__, detail=detail)
                if isinstance(action, RenewLeader):
                    self.metrics.count_lease_loss()
                    return True
                return False
            if not isinstance(action, _STEADY):
                changed = True
        return changed

    def _start_long(self, action: Action) -> None:
        started = self.clock.monotonic()
        self._pending = Pending(action=action, started_at=started)
        view = self._view

        async def run() -> None:
            ok, detail, unreachable = False, "", False
            try:
                ok = await self._run_action(
                    action,
                    Observation(
                        now=started,
                        wall_now=self.clock.wall(),
                        cluster=view,
                        local=self._local or LocalState(data_dir_initialized=False, running=False),
                    ),
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                detail = repr(exc)
                unreachable = isinstance(exc, bootstrap.SourceUnreachable)
                log.error("long_action_failed", action=type(action).__name__, error=detail)
            finally:
                self._pending = None
                self._pending_outcome = Outcome(
                    action=action,
                    ok=bool(ok),
                    sent_at=started,
                    detail=detail,
                    unreachable=unreachable,
                )
                self._wake.set()
            log.info(
                "long_action_done",
                action=type(action).__name__,
                ok=ok,
                duration_s=round(self.clock.monotonic() - started, 3),
            )

        self._pending_task = asyncio.create_task(run(), name=f"long-{type(action).__name__}")

    def _member(self, view: ClusterView | None, name: MemberName) -> Member:
        member = view.member(name) if view is not None else None
        if member is None:
            raise ActionFailed(f"member {name} has no record in the DCS")
        return member

    def _standby_of(self, view: ClusterView | None, name: MemberName) -> StandbyConfig:
        member = self._member(view, name)
        return StandbyConfig(
            primary_host=member.host,
            primary_port=member.port,
            slot_name=slot_name_for(self.settings.name),
            application_name=self.settings.name,
        )

    async def _arm_after(self, sent_at: float) -> None:
        await self.fence.arm(self.settings.timing.fence_deadline(sent_at))

    async def _arm_failsafe(self) -> None:
        """Move the fencer's deadline to the one the members just confirmed; without a
        fencer the confirmation is worth nothing (it would not stop us in time)."""
        deadline = fence_deadline(self.memory, self.settings)
        try:
            if deadline is None:
                raise FenceUnavailable("no deadline")
            await self.fence.arm(deadline)
        except FenceUnavailable as exc:
            log.error("failsafe_unarmed", error=repr(exc))
            self.memory = replace(self.memory, failsafe_sent_at=None)

    async def _confirm_failsafe(self, members: tuple[tuple[MemberName, str], ...]) -> bool:
        """POST /failsafe to every member at once; True only if every one accepted."""
        session = self._peer_session()
        timing = self.settings.timing
        # More patient than the pre-race check: one slow answer fails the whole round, and a
        # round only has to be sent before the deadline (a DCS read takes longer anyway).
        timeout = aiohttp.ClientTimeout(
            total=max(timing.peer_check_timeout_s, timing.retry_timeout_s / 2)
        )
        headers = self.settings.api.authorization_header()
        body = {
            "leader": self.settings.name,
            "cluster": self.settings.cluster,
            "sent_at": self.clock.wall(),
        }

        async def ask(name: MemberName, url: str) -> str | None:
            try:
                async with session.post(
                    url + "/failsafe", json=body, headers=headers, timeout=timeout
                ) as resp:
                    if resp.status == 200:
                        return None
                    answer = await resp.json(content_type=None)
                    return f"{name}: {resp.status} {answer.get('error', '')}"
            except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
                return f"{name}: unreachable ({type(exc).__name__})"

        refusals = [r for r in await asyncio.gather(*(ask(n, u) for n, u in members)) if r]
        self.metrics.count_failsafe_round(not refusals)
        if refusals:
            log.warning("failsafe_not_confirmed", refusals=refusals)
            return False
        log.info("failsafe_confirmed_by_all", members=[n for n, _ in members])
        return True

    async def _dcs_call(self, operation: str, call: Callable[[], Awaitable[_T]]) -> _T:
        t0 = self.clock.monotonic()
        ok = False
        try:
            async with asyncio.timeout(self.settings.timing.retry_timeout_s):
                result = await call()
            ok = True
            return result
        finally:
            self.metrics.observe_dcs(operation, self.clock.monotonic() - t0, ok)

    async def _run_action(self, action: Action, obs: Observation) -> bool:
        s = self.settings
        pg = s.postgresql
        timing = s.timing
        view = obs.cluster
        match action:
            case ClaimInitialize():
                return await self._dcs_call(
                    "write_record",
                    lambda: self.dcs.write_record(RecordKind.INITIALIZE, "", expected_version=None),
                )
            case SetInitialize(system_id=system_id, expected_version=version):
                return await self._dcs_call(
                    "write_record",
                    lambda: self.dcs.write_record(
                        RecordKind.INITIALIZE, system_id, expected_version=version or None
                    ),
                )
            case AcquireLeader():
                sent_at = self.clock.monotonic()
                if not await self._dcs_call("acquire_leader", self.dcs.acquire_leader):
                    return False
                try:
                    await self._arm_after(sent_at)
                except FenceUnavailable:
                    # Without a fencer nobody would stop us if we stalled: do not lead.
                    await self._dcs_call("release_leader", self.dcs.release_leader)
                    raise
                self.memory = replace(self.memory, lease_sent_at=sent_at)
                log.info("lease_acquired")
                return True
            case RenewLeader():
                sent_at = self.clock.monotonic()
                if not await self._dcs_call("renew_leader", self.dcs.renew_leader):
                    return False
                await self._arm_after(sent_at)
                self.memory = replace(self.memory, lease_sent_at=sent_at)
                return True
            case ReleaseLeader():
                await self._dcs_call("release_leader", self.dcs.release_leader)
                if self.postmaster.pid() is None or not (self._local and self._local.is_primary):
                    await self.fence.disarm()
                log.info("lease_released")
                return True
            case Bootstrap():
                await bootstrap.initdb(pg, run_dir=s.run_dir)
                await self.postmaster.start(standby=None, timeout_s=timing.primary_start_timeout_s)
                await bootstrap.create_roles(self.postmaster, pg)
                return True
            case Clone(source=source, clear_first=clear_first):
                standby = self._standby_of(view, source)
                if clear_first:
                    await self.postmaster.stop(PgStopMode.FAST, timeout_s=timing.shutdown_timeout_s)
                    bootstrap.clear_data_dir(pg)
                await bootstrap.clone(pg, standby, run_dir=s.run_dir, timeout_s=600.0)
                await self.postmaster.start(
                    standby=standby, timeout_s=timing.primary_start_timeout_s
                )
                return True
            case Rewind(source=source):
                standby = self._standby_of(view, source)
                await self.postmaster.stop(PgStopMode.FAST, timeout_s=timing.shutdown_timeout_s)
                await self.fence.disarm()
                await bootstrap.rewind(pg, standby, run_dir=s.run_dir, timeout_s=300.0)
                await self.postmaster.start(
                    standby=standby, timeout_s=timing.primary_start_timeout_s
                )
                return True
            case StartPostgres(upstream=upstream, as_primary=as_primary):
                if as_primary:
                    await self.postmaster.start(
                        standby=None, timeout_s=timing.primary_start_timeout_s
                    )
                    return True
                if upstream is None:
                    standby = StandbyConfig(
                        primary_host="",
                        primary_port=0,
                        slot_name=None,
                        application_name=s.name,
                    )
                else:
                    standby = self._standby_of(view, upstream)
                await self.postmaster.start(
                    standby=standby, timeout_s=timing.primary_start_timeout_s
                )
                return True
            case StopPostgres(mode=mode):
                if mode is StopMode.KILL:
                    log.error("postgres_killed", reason="the server does not answer")
                    await self.prober.close()
                await self.postmaster.stop(_pg_mode(mode), timeout_s=timing.shutdown_timeout_s)
                await self.fence.disarm()
                return True
            case Demote(mode=mode, reason=reason):
                log.warning("demoting", reason=reason, mode=mode.value)
                # A fast demotion at the fence deadline must be over well before the lease can
                # expire for the others: half the margin, then immediate, then SIGKILL.
                limit = timing.fence_margin_s / 2 if mode == StopMode.FAST else 5.0
                await self.postmaster.stop(_pg_mode(mode), timeout_s=limit)
                await self.fence.disarm()
                self.metrics.count_demotion()
                return True
            case Promote(reason=reason):
                await self._promote(view, obs.local, reason)
                return True
            case Follow(leader=leader):
                await self.postmaster.follow(self._standby_of(view, leader))
                return True
            case EnsureSlots(names=names, drop=drop):
                await bootstrap.ensure_slots(self.postmaster, [slot_name_for(n) for n in names])
                await bootstrap.drop_slots(self.postmaster, [slot_name_for(n) for n in drop])
                return True
            case HandOver(candidate=candidate, shutting_down=shutting_down):
                await self._hand_over(view, candidate, shutting_down=shutting_down)
                return True
            case ClearSwitchover(version=version):
                return await self._dcs_call(
                    "write_record",
                    lambda: self.dcs.write_record(
                        RecordKind.SWITCHOVER, None, expected_version=version
                    ),
                )
            case AppendHistory(entry=entry, expected_version=version):
                return await self._append_history(view, entry, version)
            case SetConfig(config=config, expected_version=version):
                return await self._dcs_call(
                    "write_record",
                    lambda: self.dcs.write_record(
                        RecordKind.CONFIG, config.to_json(), expected_version=version
                    ),
                )
            case SetSyncRecord(record=record, expected_version=version):
                ok = await self._dcs_call(
                    "write_record",
                    lambda: self.dcs.write_record(
                        RecordKind.SYNC, record.to_json(), expected_version=version
                    ),
                )
                log.info(
                    "sync_record_written",
                    ok=ok,
                    members=list(record.members),
                    quorum=record.quorum,
                )
                return ok
            case SetSyncStandbyNames(standbys=standbys):
                value = render_synchronous_standby_names(standbys)
                await self.postmaster.execute(
                    f"ALTER SYSTEM SET synchronous_standby_names = {quote_literal(value)}",
                    timeout_s=timing.retry_timeout_s,
                )
                await self.postmaster.execute(
                    "SELECT pg_reload_conf()", timeout_s=timing.retry_timeout_s
                )
                log.info("synchronous_standby_names_set", value=value)
                return True
            case ConfirmFailsafe(members=members):
                return await self._confirm_failsafe(members)
            case SetFailsafeRecord(record=failsafe, expected_version=version):
                ok = await self._dcs_call(
                    "write_record",
                    lambda: self.dcs.write_record(
                        RecordKind.FAILSAFE,
                        failsafe.to_json() if failsafe is not None else None,
                        expected_version=version,
                    ),
                )
                log.info(
                    "failsafe_record_written",
                    ok=ok,
                    members=[n for n, _ in failsafe.members] if failsafe is not None else None,
                )
                return ok
            case Exit():
                self._exit = True
                return True
            case _:
                assert_never(action)

    async def _promote(self, view: ClusterView | None, local: LocalState, reason: str) -> None:
        old_timeline = local.timeline
        switch_lsn = local.replay_lsn or local.wal_lsn or 0
        t0 = self.clock.monotonic()
        await self.postmaster.promote(timeout_s=self.settings.timing.primary_start_timeout_s)
        log.info("promoted", reason=reason, duration_s=round(self.clock.monotonic() - t0, 3))
        if reason == "switchover":
            self.metrics.count_switchover()
        else:
            self.metrics.count_failover()
        with contextlib.suppress(PostgresError, asyncpg.PostgresError, OSError, TimeoutError):
            switch = await bootstrap.last_timeline_switch(self.postmaster)
            if switch is not None:
                # Exact, unlike the probe taken before the promotion: replicas compare their
                # position with it to decide whether they need pg_rewind.
                old_timeline, switch_lsn = switch
        if old_timeline is not None:
            entry = HistoryEntry(
                timeline=old_timeline,
                switch_lsn=switch_lsn,
                reason=reason,
                at=self.clock.wall(),
                new_leader=MemberName(self.settings.name),
            )
            with contextlib.suppress(DcsError, TimeoutError):
                await self._append_history(view, entry, view.history_version if view else None)

    async def _append_history(
        self, view: ClusterView | None, entry: HistoryEntry, version: str | None
    ) -> bool:
        entries = (view.history if view is not None else ()) + (entry,)
        return await self._dcs_call(
            "write_record",
            lambda: self.dcs.write_record(
                RecordKind.HISTORY,
                history_to_json(entries[-100:]),
                expected_version=version or None,
            ),
        )

    async def _hand_over(
        self, view: ClusterView | None, candidate: MemberName, *, shutting_down: bool
    ) -> None:
        """Switchover, leader side. The lease is held (and renewed by the loop) throughout.

        The candidate streamed from us caught up when this started (decide.py). On success the
        request carries our shutdown checkpoint (`handover_lsn`) before the lease goes, so
        the candidate takes over only holding all our WAL. On failure our request is deleted,
        and PostgreSQL starts again as the primary unless we are shutting down (then the
        next decision releases the lease naming nobody)."""
        timing = self.settings.timing
        target = self._member(view, candidate)
        # Our own request, naming the candidate we chose, over whatever is there (an
        # operator's request, or the completed one that made us leader): only the candidate
        # races, and only once we complete it with handover_lsn.
        existing = view.switchover if view is not None else None
        request = SwitchoverRequest(
            leader=MemberName(self.settings.name),
            candidate=candidate,
            scheduled_at=existing.scheduled_at if existing is not None else None,
        )
        ours = existing == replace(request, version=existing.version if existing else "")
        if not ours and not await self._dcs_call(
            "write_record",
            lambda: self.dcs.write_record(
                RecordKind.SWITCHOVER,
                request.to_json(),
                expected_version=existing.version if existing is not None else None,
            ),
        ):
            raise ActionFailed("the switchover request changed under us; not handing over")
        t0 = self.clock.monotonic()
        # A checkpoint while still writable makes the shutdown checkpoint (write gap) short.
        await self.postmaster.execute("CHECKPOINT", timeout_s=timing.switchover_timeout_s)
        await self.postmaster.stop(PgStopMode.FAST, timeout_s=timing.switchover_timeout_s)
        stopped_at = self.clock.monotonic()
        try:
            control = await bootstrap_controldata(self.settings)
            await self._wait_received(target, control, timing.switchover_timeout_s)
            await self._record_handover(candidate, control)
        except (ActionFailed, DcsError, TimeoutError) as exc:
            log.error("switchover_aborted", candidate=candidate, reason=str(exc))
            await self._delete_own_switchover()
            if not shutting_down:
                await self.postmaster.start(standby=None, timeout_s=timing.primary_start_timeout_s)
            raise ActionFailed(f"hand-over to {candidate} aborted: {exc}") from exc
        await self._dcs_call("release_leader", self.dcs.release_leader)
        await self.fence.disarm()
        log.info(
            "handed_over",
            candidate=candidate,
            handover_lsn=control,
            stop_s=round(stopped_at - t0, 3),
            total_s=round(self.clock.monotonic() - t0, 3),
        )

    async def _record_handover(self, candidate: MemberName, control_lsn: int) -> None:
        """Complete our switchover request with the position the candidate received."""
        view = await self._dcs_call("get_cluster", self.dcs.get_cluster)
        request = view.switchover
        if (
            request is None
            or request.leader != self.settings.name
            or (request.candidate not in (None, candidate))
        ):
            raise ActionFailed("the switchover request was cancelled or replaced")
        done = replace(request, candidate=candidate, handover_lsn=control_lsn)
        if not await self._dcs_call(
            "write_record",
            lambda: self.dcs.write_record(
                RecordKind.SWITCHOVER, done.to_json(), expected_version=request.version
            ),
        ):
            raise ActionFailed("the switchover request changed under us")

    async def _delete_own_switchover(self) -> None:
        """Best effort: a failed hand-over leaves no request naming its candidate behind."""
        try:
            view = await self._dcs_call("get_cluster", self.dcs.get_cluster)
            request = view.switchover
            if request is not None and request.leader == self.settings.name:
                await self._dcs_call(
                    "write_record",
                    lambda: self.dcs.write_record(
                        RecordKind.SWITCHOVER, None, expected_version=request.version
                    ),
                )
        except (DcsError, TimeoutError) as exc:
            log.warning("switchover_not_deleted", error=repr(exc))

    async def _wait_received(self, target: Member, control_lsn: int, timeout_s: float) -> None:
        """Wait until `target` has received WAL past our shutdown checkpoint."""
        pg = self.settings.postgresql
        password = pg.superuser.password.reveal() if pg.superuser.password else None
        loop_deadline = self.clock.monotonic() + timeout_s
        while self.clock.monotonic() < loop_deadline:
            try:
                async with asyncio.timeout(1.0):
                    conn = await asyncpg.connect(
                        host=target.host,
                        port=target.port,
                        user=pg.superuser.username,
                        password=password,
                        database="postgres",
                    )
                    try:
                        received = await conn.fetchval(
                            "SELECT greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())"
                        )
                    finally:
                        await conn.close()
                if received is not None and int(received) > control_lsn:
                    return
            except (OSError, TimeoutError, asyncpg.PostgresError):
                pass
            await asyncio.sleep(0.02)
        raise ActionFailed(f"{target.name} did not receive WAL past {control_lsn} in time")

    # ------------------------------------------------------------------ publish

    async def _publish(self, obs: Observation, decision: Decision, started: float) -> None:
        s = self.settings
        local = self._local or obs.local
        view = obs.cluster
        state = pg_state_of(local)
        if self._pending is not None:
            state = _state_during(self._pending.action, state)
        role = (
            Role.PRIMARY
            if local.is_primary
            else Role.REPLICA
            if local.running
            else (Role.UNINITIALIZED if not local.data_dir_initialized else Role.UNKNOWN)
        )
        now = self.clock.monotonic()
        deadline = fence_deadline(self.memory, s)
        leader = view.leader.name if view is not None and view.leader is not None else None
        leader_member = view.leader_member if view is not None else None
        lag = None
        if leader_member is not None and leader_member.wal_lsn is not None and local.running:
            mine = local.replay_lsn if local.is_replica else local.wal_lsn
            if mine is not None:
                lag = max(0, leader_member.wal_lsn - mine)
        self._status = AgentStatus(
            name=MemberName(s.name),
            cluster=s.cluster,
            role=role,
            state=state,
            api_url=s.api.url,
            timeline=local.timeline,
            wal_lsn=local.wal_lsn,
            replay_lsn=local.replay_lsn,
            lag_bytes=lag if local.is_replica else 0 if local.is_primary else None,
            leader=leader,
            # While the DCS cannot be read, a lease we renewed in time (or the members'
            # failsafe confirmation) still counts: probes and pod labels keep routing to us
            # until the fencing deadline, as the fencer would stop us then.
            lease_held=deadline is not None
            and now < deadline
            and (
                leader == s.name
                or (view is None and self.memory.lease_sent_at is not None)
                or (local.is_primary and failsafe_active(self.memory, now, s))
            ),
            lease_age_s=(now - self.memory.lease_sent_at) if self.memory.lease_sent_at else None,
            fence_remaining_s=(deadline - now) if deadline is not None else None,
            dcs_ok=view is not None,
            paused=view.config.paused if view is not None else False,
            pending=type(self._pending.action).__name__ if self._pending else None,
            last_decision=decision.summary,
            last_reason=decision.reason,
            cycle=self._cycle,
            observed_at=now,
            cluster_view=view if view is not None else self._view,
            replication=local.replication,
            sync_role=sync_role_of(s.name, view, local) if view is not None else SyncRole.NONE,
            sync_fallback=view is not None and sync_fallback(view, local, s),
            failsafe_active=local.is_primary and failsafe_active(self.memory, now, s),
        )
        self.metrics.update(self._status)
        duration = self.clock.monotonic() - started
        self.metrics.observe_cycle(duration)
        log.info(
            "ha_cycle",
            decision=decision.summary,
            reason=decision.reason,
            role=role.value,
            leader=leader,
            duration_ms=round(duration * 1000, 1),
        )
        if view is None:
            return
        member = Member(
            name=MemberName(s.name),
            role=role,
            state=state,
            api_url=s.api.url,
            host=s.postgresql.connect_host,
            port=s.postgresql.port,
            timeline=local.timeline,
            wal_lsn=local.wal_lsn,
            replay_lsn=local.replay_lsn,
            system_id=local.system_id,
            tags=MemberTags(
                nofailover=s.tags.nofailover,
                failover_priority=s.tags.failover_priority,
                nosync=s.tags.nosync,
                sync_priority=s.tags.sync_priority,
            ),
            sync_standbys=tuple(
                MemberName(r.application_name)
                for r in local.replication
                if local.is_primary and r.sync_state in ("sync", "quorum")
            ),
        )
        try:
            await self._dcs_call("publish_member", lambda: self.dcs.publish_member(member))
        except (DcsError, TimeoutError) as exc:
            log.warning("dcs_unavailable", operation="publish_member", error=str(exc))

    async def check_fencer(self) -> None:
        """After the postmaster died: count it if the fencer killed it (its deadline passed)."""
        with contextlib.suppress(FenceUnavailable):
            status = await self.fence.status()
            if status.state == FenceState.FENCED:
                log.error("fenced", reason="the lease could not be renewed before its deadline")
                self.metrics.count_fencing()
                await self.fence.disarm()


def _pg_mode(mode: StopMode) -> PgStopMode:
    match mode:
        case StopMode.FAST:
            return PgStopMode.FAST
        case StopMode.IMMEDIATE:
            return PgStopMode.IMMEDIATE
        case StopMode.KILL:
            return PgStopMode.KILL
        case _:
            assert_never(mode)


def _state_during(action: Action, state: PgState) -> PgState:
    match action:
        case Bootstrap():
            return PgState.BOOTSTRAPPING
        case Clone():
            return PgState.CLONING
        case Rewind():
            return PgState.REWINDING
        case _:
            return state


async def bootstrap_controldata(settings: Settings) -> int:
    """The shutdown checkpoint's LSN of our stopped data directory."""
    control = await read_controldata(settings.postgresql)
    if control is None:
        raise ActionFailed("pg_controldata gave nothing after the shutdown")
    return control.checkpoint_lsn
