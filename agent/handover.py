"""Switchover, leader side: the steps of a `HandOver` action (see its docstring in actions.py).

Write the switchover request (if there is none, so only the candidate races), checkpoint,
stop fast, wait until the candidate has received WAL past our shutdown checkpoint, record that
position in the request (`handover_lsn`: the hand-over is complete), release the lease. The
lease is held (and renewed by the loop) throughout. On failure our request is deleted and
PostgreSQL starts again as the primary, unless we are shutting down (then the next decision
releases the lease naming nobody).

Also here: `DcsCalls`, the DCS calls of the executor and the hand-over, each bounded by
`retry_timeout_s` and timed into the metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import structlog

from agent.clock import Clock
from agent.dcs.base import Dcs, DcsError
from agent.fence import Fence
from agent.metrics import Metrics
from agent.model import ClusterView, Lsn, Member, MemberName, RecordKind, SwitchoverRequest
from agent.postgres.control import RECEIVED_ATTEMPT_S, PostgresControl
from agent.postgres.process import StopMode
from agent.settings import Settings

log = structlog.get_logger("pgwarden.loop")
_T = TypeVar("_T")

Sleep = Callable[[float], Awaitable[None]]

# Pause between two reads of the candidate's received position (seconds).
RECEIVED_POLL_S = 0.02


class ActionFailed(Exception):
    """An action could not be carried out; the rest of the decision is skipped."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DcsCalls:
    """DCS calls bounded by `retry_timeout_s` and timed into the metrics."""

    dcs: Dcs
    clock: Clock
    metrics: Metrics
    timeout_s: float

    async def __call__(self, operation: str, call: Callable[[], Awaitable[_T]]) -> _T:
        t0 = self.clock.monotonic()
        ok = False
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await call()
            ok = True
            return result
        finally:
            self.metrics.observe_dcs(operation, self.clock.monotonic() - t0, ok)


def member_of(view: ClusterView | None, name: MemberName) -> Member:
    member = view.member(name) if view is not None else None
    if member is None:
        raise ActionFailed(f"member {name} has no record in the DCS")
    return member


@dataclass(frozen=True, slots=True, kw_only=True)
class Handover:
    """Runs one hand-over; everything it touches is handed in."""

    settings: Settings
    clock: Clock
    dcs: Dcs
    call: DcsCalls
    pg: PostgresControl
    fence: Fence
    sleep: Sleep

    async def run(
        self,
        view: ClusterView | None,
        candidate: MemberName,
        *,
        shutting_down: bool,
        lease_holds: Callable[[], bool] = lambda: True,
    ) -> None:
        """The hand-over to `candidate`; raises ActionFailed (after the abort path) when it
        did not complete, DcsError/TimeoutError when the request could not be written."""
        timing = self.settings.timing
        target = member_of(view, candidate)
        # Our own request, naming the candidate we chose, over whatever is there (an
        # operator's request, or the completed one that made us leader): only the candidate
        # races, and only once we complete it with handover_lsn. If it cannot be written we
        # stop here, before PostgreSQL is stopped.
        existing = view.switchover if view is not None else None
        request = SwitchoverRequest(
            leader=MemberName(self.settings.name),
            candidate=candidate,
            scheduled_at=existing.scheduled_at if existing is not None else None,
        )
        ours = existing == replace(request, version=existing.version if existing else "")
        if not ours and not await self.call(
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
        await self.pg.checkpoint(timeout_s=timing.switchover_timeout_s)
        await self.pg.stop(StopMode.FAST, timeout_s=timing.switchover_timeout_s)
        stopped_at = self.clock.monotonic()
        try:
            control = await self._shutdown_checkpoint()
            await self._wait_received(target, control, timing.switchover_timeout_s)
            await self._record(candidate, control)
        except (ActionFailed, DcsError, TimeoutError) as exc:
            log.error("switchover_aborted", candidate=candidate, reason=str(exc))
            await self._delete_own_request()
            # Started again as the primary only while our lease runs: an agent stopped
            # during the hand-over for longer (crash points, issue 16) finds another leader.
            if not shutting_down and lease_holds():
                await self.pg.start(standby=None, timeout_s=timing.primary_start_timeout_s)
            raise ActionFailed(f"hand-over to {candidate} aborted: {exc}") from exc
        await self.call("release_leader", self.dcs.release_leader)
        await self.fence.disarm()
        log.info(
            "handed_over",
            candidate=candidate,
            handover_lsn=control,
            stop_s=round(stopped_at - t0, 3),
            total_s=round(self.clock.monotonic() - t0, 3),
        )

    async def _shutdown_checkpoint(self) -> Lsn:
        """The shutdown checkpoint's LSN of our stopped data directory."""
        lsn = await self.pg.checkpoint_lsn()
        if lsn is None:
            raise ActionFailed("pg_controldata gave nothing after the shutdown")
        return lsn

    async def _record(self, candidate: MemberName, control_lsn: Lsn) -> None:
        """Complete our switchover request with the position the candidate received."""
        view = await self.call("get_cluster", self.dcs.get_cluster)
        request = view.switchover
        if (
            request is None
            or request.leader != self.settings.name
            or (request.candidate not in (None, candidate))
        ):
            raise ActionFailed("the switchover request was cancelled or replaced")
        done = replace(request, candidate=candidate, handover_lsn=control_lsn)
        if not await self.call(
            "write_record",
            lambda: self.dcs.write_record(
                RecordKind.SWITCHOVER, done.to_json(), expected_version=request.version
            ),
        ):
            raise ActionFailed("the switchover request changed under us")

    async def _delete_own_request(self) -> None:
        """Best effort: a failed hand-over leaves no request naming its candidate behind."""
        try:
            view = await self.call("get_cluster", self.dcs.get_cluster)
            request = view.switchover
            if request is not None and request.leader == self.settings.name:
                await self.call(
                    "write_record",
                    lambda: self.dcs.write_record(
                        RecordKind.SWITCHOVER, None, expected_version=request.version
                    ),
                )
        except (DcsError, TimeoutError) as exc:
            log.warning("switchover_not_deleted", error=repr(exc))

    async def _wait_received(self, target: Member, control_lsn: Lsn, timeout_s: float) -> None:
        """Wait until `target` has received WAL past our shutdown checkpoint."""
        deadline = self.clock.monotonic() + timeout_s
        while self.clock.monotonic() < deadline:
            received = await self.pg.received_lsn(target, timeout_s=RECEIVED_ATTEMPT_S)
            if received is not None and received > control_lsn:
                return
            await self.sleep(RECEIVED_POLL_S)
        raise ActionFailed(f"{target.name} did not receive WAL past {control_lsn} in time")
