"""Operator requests: checked against a fresh DCS read, then written to the DCS with a
compare-and-set (configuration, pause, switchover, failover, rolling restart) so that every
member sees the same request, or queued for this member's HA loop (restart, reinitialize,
reload); the failsafe round's answer to a primary asking whether it may keep writing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import structlog

from agent.api.errors import ApiError
from agent.api.http import json_answer, json_object
from agent.api.operations import (
    apply_config_patch,
    parse_config_patch,
    parse_failover_body,
    parse_switchover_body,
    parse_timestamp,
    plan_failover,
    plan_switchover,
    reject_unknown_fields,
)
from agent.api.pgconfig import ConfigValidator, check_postgresql, plan_restart
from agent.api.views import Json, config_body, iso_utc, restart_body
from agent.clock import Clock
from agent.config import Settings
from agent.dcs.base import Dcs
from agent.http.routing import Handler, Request, Response
from agent.model import (
    AgentStatus,
    ClusterView,
    DynamicConfig,
    LocalRequestKind,
    RecordKind,
    Role,
    SwitchoverRequest,
)

# The logger name the API has always logged under (split from server.py).
_log = structlog.get_logger("agent.api.server")


class LocalRequestSink(Protocol):
    """Where the API hands requests that concern only this member (the HA loop's inbox)."""

    def submit(self, kind: LocalRequestKind) -> None:
        """Queue a local request and wake the HA loop."""

    def wake(self) -> None:
        """Wake the HA loop now (after the API wrote a request to the DCS)."""

    def accept_failsafe(self, leader: str) -> str | None:
        """A primary in failsafe mode asks this member to confirm it; accepting promises not
        to race for the lease for one ttl. Returns why it refuses, or None."""


class OperatorRoutes:
    """The handlers of operator requests, holding only what they read (status, DCS, inbox,
    clock)."""

    def __init__(
        self,
        *,
        settings: Settings,
        status: Callable[[], AgentStatus],
        dcs: Dcs,
        requests: LocalRequestSink,
        clock: Clock,
        validator: ConfigValidator | None = None,
    ) -> None:
        self._settings = settings
        self._validator = validator
        self._status = status
        self._dcs = dcs
        self._requests = requests
        self._clock = clock
        # A DCS call made for a request must end well before a client or probe gives up.
        self._dcs_timeout_s = settings.timing.retry_timeout_s

    # ------------------------------------------------------------------ DCS access

    async def _fresh_view(self) -> ClusterView:
        try:
            async with asyncio.timeout(self._dcs_timeout_s):
                return await self._dcs.get_cluster()
        except TimeoutError:
            raise ApiError(503, "the DCS did not answer in time") from None

    async def _write(self, kind: RecordKind, value: str | None, version: str | None) -> bool:
        try:
            async with asyncio.timeout(self._dcs_timeout_s):
                return await self._dcs.write_record(kind, value, expected_version=version)
        except TimeoutError:
            # The write may or may not have landed; the client must look before retrying.
            raise ApiError(503, "the DCS did not answer in time; check GET /cluster") from None

    # ------------------------------------------------------------------ config and pause

    async def get_config(self, request: Request) -> Response:
        config = (await self._fresh_view()).config
        response = json_answer(config_body(config))
        response.headers["ETag"] = f'"{config.version}"'
        return response

    async def _change_config(
        self,
        change: Callable[[DynamicConfig], DynamicConfig],
        view: ClusterView | None = None,
        extra: Json | None = None,
    ) -> Response:
        """Apply `change` to the config record as read now (or in `view`); write it (CAS) if
        it differs. `extra`: more fields for the answer."""
        view = view if view is not None else await self._fresh_view()
        wanted = change(view.config)
        if wanted.to_json() != view.config.to_json() or not view.config.version:
            if not await self._write(
                RecordKind.CONFIG, wanted.to_json(), view.config.version or None
            ):
                raise ApiError(409, "config: changed concurrently; read it again and retry")
            _log.info("api_config_changed", config=wanted.to_json())
            self._requests.wake()
        return json_answer({**config_body(wanted), **(extra or {})})

    async def _set_paused(self, paused: bool) -> Response:
        view = await self._fresh_view()
        if view.config.paused == paused:
            return json_answer(config_body(view.config))
        return await self._change_config(lambda c: replace(c, paused=paused))

    async def patch_config(self, request: Request) -> Response:
        body = await json_object(request, allow_empty=False)
        patch = parse_config_patch(body)
        view = await self._fresh_view()
        expected = request.headers.get("If-Match")
        if expected is not None and expected.strip('"') != view.config.version:
            raise ApiError(412, "config: changed since it was read (If-Match); read it again")
        before = view.config.postgresql
        after = apply_config_patch(view.config, patch).postgresql
        restart: list[str] = []
        if after != before:
            restart = await check_postgresql(
                self._validator, before, after, timeout_s=self._dcs_timeout_s
            )
        return await self._change_config(
            lambda c: apply_config_patch(c, patch), view, {"restart_needed": restart}
        )

    async def pause(self, request: Request) -> Response:
        reject_unknown_fields(await json_object(request, allow_empty=True), set())
        return await self._set_paused(True)

    async def resume(self, request: Request) -> Response:
        reject_unknown_fields(await json_object(request, allow_empty=True), set())
        return await self._set_paused(False)

    # ------------------------------------------------------------------ switchover / failover

    async def _write_switchover(self, request: SwitchoverRequest) -> Response:
        if not await self._write(RecordKind.SWITCHOVER, request.to_json(), None):
            raise ApiError(409, "switchover: another request is pending")
        self._requests.wake()
        return json_answer(
            {
                "accepted": True,
                "leader": request.leader,
                "candidate": request.candidate,
                "scheduled_at": iso_utc(request.scheduled_at),
            },
            status=202,
        )

    async def post_switchover(self, request: Request) -> Response:
        body = parse_switchover_body(
            await json_object(request, allow_empty=True), now_wall=self._clock.wall()
        )
        view = await self._fresh_view()
        planned = plan_switchover(
            body, view, max_lag_bytes=self._settings.ha.maximum_lag_on_failover_bytes
        )
        response = await self._write_switchover(planned)
        _log.info(
            "api_switchover_requested",
            leader=planned.leader,
            candidate=planned.candidate,
            scheduled_at=planned.scheduled_at,
        )
        return response

    async def delete_switchover(self, request: Request) -> Response:
        reject_unknown_fields(await json_object(request, allow_empty=True), set())
        view = await self._fresh_view()
        pending = view.switchover
        if pending is None:
            raise ApiError(404, "switchover: none is pending")
        if pending.scheduled_at is None or pending.scheduled_at <= self._clock.wall():
            # Its time has come: the leader may already be handing over.
            raise ApiError(
                409, "switchover: only a scheduled switchover still to come can be cancelled"
            )
        if not await self._write(RecordKind.SWITCHOVER, None, pending.version):
            raise ApiError(409, "switchover: changed concurrently; read it again and retry")
        _log.info("api_switchover_cancelled", leader=pending.leader, candidate=pending.candidate)
        self._requests.wake()
        return json_answer(
            {"cancelled": True, "leader": pending.leader, "candidate": pending.candidate}
        )

    async def post_failover(self, request: Request) -> Response:
        candidate = parse_failover_body(await json_object(request, allow_empty=False))
        planned = plan_failover(candidate, await self._fresh_view())
        response = await self._write_switchover(planned)
        _log.info("api_failover_requested", leader=planned.leader, candidate=planned.candidate)
        return response

    # ------------------------------------------------------------------ rolling restart

    async def post_rolling_restart(self, request: Request) -> Response:
        body = await json_object(request, allow_empty=True)
        reject_unknown_fields(body, {"members", "role", "pending", "in_place", "scheduled_at"})
        at = body.get("scheduled_at")
        now = self._clock.wall()
        scheduled_at = (
            now if at is None else parse_timestamp(at, field="scheduled_at", now_wall=now)
        )
        view = await self._fresh_view()
        schedule = plan_restart(body, view, scheduled_at=scheduled_at)
        version = view.restart.version if view.restart is not None else None
        if not await self._write(RecordKind.RESTART, schedule.to_json(), version):
            raise ApiError(409, "restart: changed concurrently; read it again and retry")
        _log.info("api_rolling_restart", members=list(schedule.members), at=scheduled_at)
        self._requests.wake()
        return json_answer({"accepted": True, **(restart_body(schedule) or {})}, status=202)

    async def get_rolling_restart(self, request: Request) -> Response:
        view = await self._fresh_view()
        if view.restart is None:
            raise ApiError(404, "restart: no rolling restart is scheduled")
        return json_answer(restart_body(view.restart) or {})

    async def delete_rolling_restart(self, request: Request) -> Response:
        reject_unknown_fields(await json_object(request, allow_empty=True), set())
        view = await self._fresh_view()
        if view.restart is None:
            raise ApiError(404, "restart: no rolling restart is scheduled")
        if not await self._write(RecordKind.RESTART, None, view.restart.version):
            raise ApiError(409, "restart: changed concurrently; read it again and retry")
        _log.info("api_rolling_restart_cancelled", done=list(view.restart.done))
        self._requests.wake()
        return json_answer({"cancelled": True, "done": list(view.restart.done)})

    # ------------------------------------------------------------------ failsafe

    async def post_failsafe(self, request: Request) -> Response:
        """A primary that cannot reach the DCS asks us to confirm it (failsafe mode)."""
        body = await json_object(request, allow_empty=False)
        reject_unknown_fields(body, {"leader", "cluster", "sent_at"})
        leader, cluster, sent_at = body.get("leader"), body.get("cluster"), body.get("sent_at")
        if not isinstance(leader, str) or not leader:
            raise ApiError(400, "leader: expected the requesting member's name")
        if isinstance(sent_at, bool) or not isinstance(sent_at, int | float):
            raise ApiError(400, "sent_at: expected the sender's wall-clock time (epoch seconds)")
        age = self._clock.wall() - float(sent_at)
        if abs(age) > self._settings.timing.ttl_s / 2:
            # Delivered late (a request kept in TCP retransmission while the network was
            # cut): its sender stopped waiting long ago and may be fenced by now; promising
            # it would only hold failover back. Sent "from the future": the two wall clocks
            # are apart (one was stepped), so how late it is cannot be told either; refusing
            # costs the sender its failsafe (it demotes at its deadline), never a split brain.
            _log.warning("failsafe_refused", primary=leader, reason="stale", age_s=round(age, 3))
            raise ApiError(409, f"failsafe: request sent {age:.1f} s ago (stale, or clocks apart)")
        if not isinstance(cluster, str) or cluster != self._settings.cluster:
            raise ApiError(
                409, f"cluster: this member belongs to {self._settings.cluster!r}, not {cluster!r}"
            )
        refusal = self._requests.accept_failsafe(leader)
        if refusal is not None:
            _log.warning("failsafe_refused", primary=leader, reason=refusal)
            raise ApiError(409, f"failsafe: {refusal}")
        return json_answer(
            {
                "accepted": True,
                "member": self._settings.name,
                "leader": leader,
                "promise_s": self._settings.timing.ttl_s,
            }
        )

    # ------------------------------------------------------------------ local requests

    def local(self, kind: LocalRequestKind) -> Handler:
        async def handle(request: Request) -> Response:
            reject_unknown_fields(await json_object(request, allow_empty=True), set())
            status = self._status()
            if kind is LocalRequestKind.REINITIALIZE and (
                status.role is Role.PRIMARY or status.lease_held or status.leader == status.name
            ):
                raise ApiError(409, "reinitialize: this member is the leader; switch over first")
            self._requests.submit(kind)
            _log.info("api_local_request", request=kind.value)
            return json_answer({"accepted": True, "request": kind.value}, status=202)

        return handle
