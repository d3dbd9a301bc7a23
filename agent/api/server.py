"""The agent's REST API: health probes, cluster views, operator requests, Prometheus metrics.

The API never decides anything. Probes and views read the AgentStatus the HA loop last
published; operator requests are checked against a fresh DCS read and then either written to
the DCS with a compare-and-set (switchover, failover, pause) so that every member sees the
same request, or queued for this member's HA loop (restart, reinitialize). Either way the HA
loop is woken and acts on its next cycle.

Every error answer, aiohttp's own 404 and 405 included, is JSON `{"error": "<message>"}`. A
refused request changes nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Protocol

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from agent.api import auth, openapi
from agent.api.backup import add_backup_routes
from agent.api.errors import ApiError
from agent.api.health import Probe, parse_lag, probe_ok, status_age_s
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
from agent.api.tls import ReloadingTls
from agent.api.views import (
    Json,
    cluster_body,
    config_body,
    history_body,
    iso_utc,
    restart_body,
    status_body,
)
from agent.clock import Clock
from agent.config import ApiSettings, Settings
from agent.dcs.base import Dcs, DcsUnavailable
from agent.model import (
    AgentStatus,
    ClusterView,
    DynamicConfig,
    LocalRequestKind,
    RecordKind,
    Role,
    SwitchoverRequest,
)

_log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024
_START_TIMEOUT_S = 10.0


class LocalRequestSink(Protocol):
    """Where the API hands requests that concern only this member (the HA loop's inbox)."""

    def submit(self, kind: LocalRequestKind) -> None:
        """Queue a local request and wake the HA loop."""

    def wake(self) -> None:
        """Wake the HA loop now (after the API wrote a request to the DCS)."""

    def accept_failsafe(self, leader: str) -> str | None:
        """A primary in failsafe mode asks this member to confirm it; accepting promises not
        to race for the lease for one ttl. Returns why it refuses, or None."""


class MetricsSource(Protocol):
    """What /metrics needs: `agent.metrics.Metrics` is one."""

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        ...


def _json(body: Json | list[object], status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, sort_keys=True))


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    response = _json({"error": message}, status=status)
    if headers:
        response.headers.extend(headers)
    return response


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: every 4xx/5xx leaves as JSON, whoever raised it."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.message)
    except DcsUnavailable as exc:
        return _error(503, f"the DCS is unavailable: {exc}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {k: v for k, v in exc.headers.items() if k.lower() in ("allow",)}
        return _error(exc.status, f"{exc.reason.lower()}: {request.method} {request.path}", kept)
    except Exception:
        _log.exception("api_internal_error", method=request.method, path=request.path)
        return _error(500, "internal error (see the agent's log)")


def _auth_middleware(settings: ApiSettings) -> Middleware:
    @web.middleware
    async def require_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Unknown routes and wrong methods answer 404/405 first: no credentials needed to learn
        # that a route does not exist.
        if request.match_info.http_exception is not None:
            return await handler(request)
        if request.method in auth.MUTATING_METHODS and not auth.is_authorized(
            settings, request.headers.get("Authorization")
        ):
            response = _error(401, "authentication required (Bearer token or HTTP basic)")
            for challenge in auth.challenges(settings):
                response.headers.add("WWW-Authenticate", challenge)
            return response
        return await handler(request)

    return require_auth


async def _json_object(request: web.Request, *, allow_empty: bool) -> Mapping[str, object]:
    """The request body as a JSON object; an empty body is `{}` where `allow_empty`."""
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise ApiError(400, "body: expected a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"body: malformed JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "body: expected a JSON object")
    return data


class _Routes:
    """The handlers, holding only what they read (status, DCS, inbox, metrics, clock)."""

    def __init__(
        self,
        *,
        settings: Settings,
        status: Callable[[], AgentStatus],
        dcs: Dcs,
        requests: LocalRequestSink,
        metrics: MetricsSource,
        clock: Clock,
        validator: ConfigValidator | None = None,
    ) -> None:
        self._settings = settings
        self._validator = validator
        self._status = status
        self._dcs = dcs
        self._requests = requests
        self._metrics = metrics
        self._clock = clock
        # A DCS call made for a request must end well before a client or probe gives up.
        self._dcs_timeout_s = settings.timing.retry_timeout_s

    # ------------------------------------------------------------------ probes and views

    def probe(self, probe: Probe) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            max_lag: int | None = None
            if probe not in (Probe.HEALTH, Probe.LIVENESS, Probe.READINESS, Probe.PRIMARY) and (
                "lag" in request.query
            ):
                try:
                    max_lag = parse_lag(request.query["lag"])
                except ValueError as exc:
                    raise ApiError(400, f"lag: {exc}") from None
            status = self._status()
            now = self._clock.monotonic()
            ok = probe_ok(
                probe, status, now=now, ttl_s=self._settings.timing.ttl_s, max_lag_bytes=max_lag
            )
            body = status_body(status, age_s=status_age_s(status, now), wall_now=self._clock.wall())
            return _json(body, status=200 if ok else 503)

        return handle

    def _published_view(self) -> ClusterView:
        view = self._status().cluster_view
        if view is None:
            raise ApiError(503, "no cluster view yet: the agent has not read the DCS")
        return view

    async def cluster(self, request: web.Request) -> web.StreamResponse:
        view = self._published_view()
        return _json(cluster_body(self._settings.cluster, view, wall_now=self._clock.wall()))

    async def history(self, request: web.Request) -> web.StreamResponse:
        return _json(history_body(self._published_view()))

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        body, content_type = self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

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

    async def get_config(self, request: web.Request) -> web.StreamResponse:
        config = (await self._fresh_view()).config
        response = _json(config_body(config))
        response.headers["ETag"] = f'"{config.version}"'
        return response

    async def _change_config(
        self,
        change: Callable[[DynamicConfig], DynamicConfig],
        view: ClusterView | None = None,
        extra: Json | None = None,
    ) -> web.StreamResponse:
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
        return _json({**config_body(wanted), **(extra or {})})

    async def _set_paused(self, paused: bool) -> web.StreamResponse:
        view = await self._fresh_view()
        if view.config.paused == paused:
            return _json(config_body(view.config))
        return await self._change_config(lambda c: replace(c, paused=paused))

    async def patch_config(self, request: web.Request) -> web.StreamResponse:
        body = await _json_object(request, allow_empty=False)
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

    async def pause(self, request: web.Request) -> web.StreamResponse:
        reject_unknown_fields(await _json_object(request, allow_empty=True), set())
        return await self._set_paused(True)

    async def resume(self, request: web.Request) -> web.StreamResponse:
        reject_unknown_fields(await _json_object(request, allow_empty=True), set())
        return await self._set_paused(False)

    # ------------------------------------------------------------------ switchover / failover

    async def _write_switchover(self, request: SwitchoverRequest) -> web.StreamResponse:
        if not await self._write(RecordKind.SWITCHOVER, request.to_json(), None):
            raise ApiError(409, "switchover: another request is pending")
        self._requests.wake()
        return _json(
            {
                "accepted": True,
                "leader": request.leader,
                "candidate": request.candidate,
                "scheduled_at": iso_utc(request.scheduled_at),
            },
            status=202,
        )

    async def post_switchover(self, request: web.Request) -> web.StreamResponse:
        body = parse_switchover_body(
            await _json_object(request, allow_empty=True), now_wall=self._clock.wall()
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

    async def delete_switchover(self, request: web.Request) -> web.StreamResponse:
        reject_unknown_fields(await _json_object(request, allow_empty=True), set())
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
        return _json({"cancelled": True, "leader": pending.leader, "candidate": pending.candidate})

    async def post_failover(self, request: web.Request) -> web.StreamResponse:
        candidate = parse_failover_body(await _json_object(request, allow_empty=False))
        planned = plan_failover(candidate, await self._fresh_view())
        response = await self._write_switchover(planned)
        _log.info("api_failover_requested", leader=planned.leader, candidate=planned.candidate)
        return response

    # ------------------------------------------------------------------ rolling restart

    async def post_rolling_restart(self, request: web.Request) -> web.StreamResponse:
        body = await _json_object(request, allow_empty=True)
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
        return _json({"accepted": True, **(restart_body(schedule) or {})}, status=202)

    async def get_rolling_restart(self, request: web.Request) -> web.StreamResponse:
        view = await self._fresh_view()
        if view.restart is None:
            raise ApiError(404, "restart: no rolling restart is scheduled")
        return _json(restart_body(view.restart) or {})

    async def delete_rolling_restart(self, request: web.Request) -> web.StreamResponse:
        reject_unknown_fields(await _json_object(request, allow_empty=True), set())
        view = await self._fresh_view()
        if view.restart is None:
            raise ApiError(404, "restart: no rolling restart is scheduled")
        if not await self._write(RecordKind.RESTART, None, view.restart.version):
            raise ApiError(409, "restart: changed concurrently; read it again and retry")
        _log.info("api_rolling_restart_cancelled", done=list(view.restart.done))
        self._requests.wake()
        return _json({"cancelled": True, "done": list(view.restart.done)})

    # ------------------------------------------------------------------ failsafe

    async def post_failsafe(self, request: web.Request) -> web.StreamResponse:
        """A primary that cannot reach the DCS asks us to confirm it (failsafe mode)."""
        body = await _json_object(request, allow_empty=False)
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
        return _json(
            {
                "accepted": True,
                "member": self._settings.name,
                "leader": leader,
                "promise_s": self._settings.timing.ttl_s,
            }
        )

    # ------------------------------------------------------------------ local requests

    def local(self, kind: LocalRequestKind) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            reject_unknown_fields(await _json_object(request, allow_empty=True), set())
            status = self._status()
            if kind is LocalRequestKind.REINITIALIZE and (
                status.role is Role.PRIMARY or status.lease_held or status.leader == status.name
            ):
                raise ApiError(409, "reinitialize: this member is the leader; switch over first")
            self._requests.submit(kind)
            _log.info("api_local_request", request=kind.value)
            return _json({"accepted": True, "request": kind.value}, status=202)

        return handle


def build_app(
    *,
    settings: Settings,
    status: Callable[[], AgentStatus],
    dcs: Dcs,
    requests: LocalRequestSink,
    metrics: MetricsSource,
    clock: Clock,
    validator: ConfigValidator | None = None,
) -> web.Application:
    """The API as an aiohttp application. `status` returns the latest published AgentStatus
    (called once per request, never blocks); `dcs` is used only for a fresh read and
    compare-and-set writes of operator requests; `requests` receives local requests."""
    routes = _Routes(
        settings=settings,
        status=status,
        dcs=dcs,
        requests=requests,
        metrics=metrics,
        clock=clock,
        validator=validator,
    )
    app = web.Application(
        middlewares=[_errors_as_json, _auth_middleware(settings.api)],
        client_max_size=MAX_BODY_BYTES,
    )
    router = app.router
    router.add_get("/health", routes.probe(Probe.HEALTH))
    router.add_get("/liveness", routes.probe(Probe.LIVENESS))
    router.add_get("/readiness", routes.probe(Probe.READINESS))
    for path in ("/primary", "/leader", "/read-write"):
        router.add_get(path, routes.probe(Probe.PRIMARY))
    router.add_get("/replica", routes.probe(Probe.REPLICA))
    router.add_get("/read-only", routes.probe(Probe.READ_ONLY))
    for path in ("/sync", "/synchronous"):
        router.add_get(path, routes.probe(Probe.SYNC))
    router.add_get("/quorum", routes.probe(Probe.QUORUM))
    for path in ("/async", "/asynchronous"):
        router.add_get(path, routes.probe(Probe.ASYNC))
    router.add_get("/cluster", routes.cluster)
    router.add_get("/history", routes.history)
    router.add_get("/config", routes.get_config)
    router.add_patch("/config", routes.patch_config)
    router.add_post("/pause", routes.pause)
    router.add_post("/resume", routes.resume)
    router.add_get("/metrics", routes.metrics)
    router.add_post("/switchover", routes.post_switchover)
    router.add_delete("/switchover", routes.delete_switchover)
    router.add_post("/failover", routes.post_failover)
    router.add_post("/failsafe", routes.post_failsafe)
    router.add_post("/restart", routes.local(LocalRequestKind.RESTART))
    router.add_post("/reinitialize", routes.local(LocalRequestKind.REINITIALIZE))
    router.add_post("/reload", routes.local(LocalRequestKind.RELOAD))
    router.add_get("/rolling-restart", routes.get_rolling_restart)
    router.add_post("/rolling-restart", routes.post_rolling_restart)
    router.add_delete("/rolling-restart", routes.delete_rolling_restart)
    router.add_get("/openapi.json", _openapi)
    add_backup_routes(app, settings=settings, status=status, clock=clock)
    return app


async def _openapi(request: web.Request) -> web.StreamResponse:
    return _json(openapi.document())


async def start_api(
    app: web.Application, settings: ApiSettings, tls: ReloadingTls | None = None
) -> web.AppRunner:
    """Serve `app` on settings.listen_host:port, over TLS when `tls` is given (then plain
    HTTP is not served at all). Returns the runner; the caller owns it and must
    `await runner.cleanup()` (also when anything after this call fails)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    try:
        async with asyncio.timeout(_START_TIMEOUT_S):
            await runner.setup()
            site = web.TCPSite(
                runner,
                settings.listen_host,
                settings.port,
                ssl_context=tls.listener if tls is not None else None,
            )
            await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    _log.info("api_listening", host=settings.listen_host, port=settings.port, tls=tls is not None)
    return runner
