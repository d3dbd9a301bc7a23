"""The agent's REST API: health probes, cluster views, operator requests, Prometheus metrics.

The API never decides anything. Probes and views read the AgentStatus the HA loop last
published; operator requests are checked against a fresh DCS read and then either written to
the DCS with a compare-and-set (switchover, failover, pause) so that every member sees the
same request, or queued for this member's HA loop (restart, reinitialize). Either way the HA
loop is woken and acts on its next cycle.

Every error answer, the server's own 404 and 405 included, is JSON `{"error": "<message>"}`. A
refused request changes nothing.

Here: the probes, views and /metrics, and the application's routes. The operator requests'
handlers are in operator.py, the JSON and authentication plumbing in http.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import structlog

from agent.api.backup import add_backup_routes
from agent.api.errors import ApiError
from agent.api.health import Probe, parse_lag, probe_ok, status_age_s
from agent.api.http import MAX_BODY_BYTES, auth_middleware, errors_as_json, json_answer
from agent.api.operator import LocalRequestSink, OperatorRoutes
from agent.api.pgconfig import ConfigValidator
from agent.api.tls import ReloadingTls
from agent.api.views import (
    cluster_body,
    history_body,
    status_body,
)
from agent.clock import Clock
from agent.config import ApiSettings, Settings
from agent.dcs.base import Dcs
from agent.http.routing import App, Handler, Request, Response
from agent.http.server import HttpServer, Limits
from agent.model import (
    AgentStatus,
    ClusterView,
    LocalRequestKind,
)

_log = structlog.get_logger(__name__)

_START_TIMEOUT_S = 10.0
# A request's head and body arrive within 10 s, a kept-alive connection idles up to 75 s (as
# aiohttp's server did), requests being served get 2 s to finish at shutdown.
API_LIMITS = Limits(
    max_head_bytes=16 * 1024, read_timeout_s=10.0, idle_timeout_s=75.0, shutdown_timeout_s=2.0
)


class MetricsSource(Protocol):
    """What /metrics needs: `agent.metrics.Metrics` is one."""

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type."""
        ...


class _ViewRoutes:
    """The probes, views and /metrics, holding only what they read (status, metrics, clock)."""

    def __init__(
        self,
        *,
        settings: Settings,
        status: Callable[[], AgentStatus],
        metrics: MetricsSource,
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._status = status
        self._metrics = metrics
        self._clock = clock

    def probe(self, probe: Probe) -> Handler:
        async def handle(request: Request) -> Response:
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
            return json_answer(body, status=200 if ok else 503)

        return handle

    def _published_view(self) -> ClusterView:
        view = self._status().cluster_view
        if view is None:
            raise ApiError(503, "no cluster view yet: the agent has not read the DCS")
        return view

    async def cluster(self, request: Request) -> Response:
        view = self._published_view()
        return json_answer(cluster_body(self._settings.cluster, view, wall_now=self._clock.wall()))

    async def history(self, request: Request) -> Response:
        return json_answer(history_body(self._published_view()))

    async def metrics(self, request: Request) -> Response:
        body, content_type = self._metrics.render()
        return Response.of(body, headers={"Content-Type": content_type})


def build_app(
    *,
    settings: Settings,
    status: Callable[[], AgentStatus],
    dcs: Dcs,
    requests: LocalRequestSink,
    metrics: MetricsSource,
    clock: Clock,
    validator: ConfigValidator | None = None,
) -> App:
    """The API as an application (agent/http/routing.py). `status` returns the latest
    published AgentStatus (called once per request, never blocks); `dcs` is used only for a
    fresh read and compare-and-set writes of operator requests; `requests` receives local
    requests."""
    views = _ViewRoutes(settings=settings, status=status, metrics=metrics, clock=clock)
    routes = OperatorRoutes(
        settings=settings,
        status=status,
        dcs=dcs,
        requests=requests,
        clock=clock,
        validator=validator,
    )
    app = App(
        middlewares=[errors_as_json, auth_middleware(settings.api)],
        max_body=MAX_BODY_BYTES,
    )
    app.add_get("/health", views.probe(Probe.HEALTH))
    app.add_get("/liveness", views.probe(Probe.LIVENESS))
    app.add_get("/readiness", views.probe(Probe.READINESS))
    for path in ("/primary", "/leader", "/read-write"):
        app.add_get(path, views.probe(Probe.PRIMARY))
    app.add_get("/replica", views.probe(Probe.REPLICA))
    app.add_get("/read-only", views.probe(Probe.READ_ONLY))
    for path in ("/sync", "/synchronous"):
        app.add_get(path, views.probe(Probe.SYNC))
    app.add_get("/quorum", views.probe(Probe.QUORUM))
    for path in ("/async", "/asynchronous"):
        app.add_get(path, views.probe(Probe.ASYNC))
    app.add_get("/cluster", views.cluster)
    app.add_get("/history", views.history)
    app.add_get("/config", routes.get_config)
    app.add_patch("/config", routes.patch_config)
    app.add_post("/pause", routes.pause)
    app.add_post("/resume", routes.resume)
    app.add_get("/metrics", views.metrics)
    app.add_post("/switchover", routes.post_switchover)
    app.add_delete("/switchover", routes.delete_switchover)
    app.add_post("/failover", routes.post_failover)
    app.add_post("/failsafe", routes.post_failsafe)
    app.add_post("/restart", routes.local(LocalRequestKind.RESTART))
    app.add_post("/reinitialize", routes.local(LocalRequestKind.REINITIALIZE))
    app.add_post("/reload", routes.local(LocalRequestKind.RELOAD))
    app.add_get("/rolling-restart", routes.get_rolling_restart)
    app.add_post("/rolling-restart", routes.post_rolling_restart)
    app.add_delete("/rolling-restart", routes.delete_rolling_restart)
    app.add_get("/openapi.json", _openapi)
    add_backup_routes(app, settings=settings, status=status, clock=clock)
    return app


async def _openapi(request: Request) -> Response:
    # Imported here: the document is for whoever asks for it, not for a running agent
    # (about 0.1 MB resident; tests/integration/test_start_memory.py).
    from agent.api import openapi  # noqa: PLC0415

    return json_answer(openapi.document())


async def start_api(app: App, settings: ApiSettings, tls: ReloadingTls | None = None) -> HttpServer:
    """Serve `app` on settings.listen_host:port, over TLS when `tls` is given (then plain
    HTTP is not served at all). Returns the server; the caller owns it and must
    `await server.close()` (also when anything after this call fails)."""
    async with asyncio.timeout(_START_TIMEOUT_S):
        server = await HttpServer.start(
            app,
            settings.listen_host,
            settings.port,
            ssl_context=tls.listener if tls is not None else None,
            limits=API_LIMITS,
        )
    _log.info("api_listening", host=settings.listen_host, port=settings.port, tls=tls is not None)
    return server
