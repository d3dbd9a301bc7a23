"""Composition root: builds every part, starts the named root tasks, handles SIGTERM.

Root tasks: the HA loop (owns the lease and the postmaster) and the REST API server. An
unexpected exit of the loop stops the agent. Helpers that never stop it: the pod role
labeler (Kubernetes) and the PostgreSQL certificate renewal (postgresql.tls). SIGTERM or
SIGINT asks the loop to shut down: a leader hands over to the healthiest replica first, then
stops PostgreSQL and releases the lease; the whole shutdown is bounded by
`timing.shutdown_timeout_s` (plus the switchover).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from agent.api.server import build_app, start_api
from agent.api.tls import ReloadingTls
from agent.callbacks import Callbacks
from agent.clock import Clock, SystemClock
from agent.config import DcsKind, Settings
from agent.dcs.base import Dcs
from agent.fence import FenceClient, FenceUnavailable
from agent.http.server import HttpServer
from agent.logging import bind_member, configure_logging
from agent.loop import HaLoop
from agent.looplag import watch_event_loop_lag
from agent.metrics import Metrics
from agent.model import AgentStatus
from agent.namecheck import name_in_use
from agent.peers import HttpPeers
from agent.postgres import datadir, pgbackrest
from agent.postgres.checker import ConfigChecker
from agent.postgres.control import LocalPostgres, PostgresControl
from agent.postgres.probe import Prober
from agent.postgres.process import Postmaster
from agent.postgres.tls import TlsRenewal, check_server_files
from agent.settings import FencerMode

if TYPE_CHECKING:
    from agent.kube.events import KubeEvents

log = structlog.get_logger("pgwarden.app")
_EVENTS_FLUSH_S = 2.0  # at shutdown, for the Events not sent yet (the hand-over's)
# Exit code when another live agent runs under this member's name (agent/namecheck.py): the
# same code as a configuration the agent refuses (the name is the configuration at fault).
EXIT_NAME_IN_USE = 2


def build_dcs(settings: Settings, clock: Clock) -> Dcs:
    """The configured backend, timing on `clock`. Constructing it does no I/O (it works
    while the DCS is down)."""
    if settings.dcs.kind == DcsKind.ETCD:
        from agent.dcs.etcd import EtcdDcs  # noqa: PLC0415 - only the configured backend loads

        return EtcdDcs.from_settings(settings, clock=clock)
    if settings.dcs.kind == DcsKind.KUBERNETES:
        from agent.dcs.kubernetes import KubernetesDcs  # noqa: PLC0415 - as above
        from agent.kube.client import client_factory  # noqa: PLC0415 - as above

        k8s = settings.dcs.kubernetes
        if k8s is None:
            raise SystemExit("dcs.kubernetes: required when dcs.kind is kubernetes")
        return KubernetesDcs.from_settings(
            settings, client_factory=client_factory(k8s.kubeconfig), clock=clock
        )
    raise SystemExit(f"unknown DCS kind {settings.dcs.kind}")


def watch_dcs_throttling(settings: Settings, dcs: Dcs, metrics: Metrics) -> None:
    """With the Kubernetes DCS: its 429s and early renewals as metrics (read when scraped)."""
    if settings.dcs.kind != DcsKind.KUBERNETES:
        return
    from agent.dcs.kubernetes import KubernetesDcs  # noqa: PLC0415 - Kubernetes only

    if isinstance(dcs, KubernetesDcs):
        throttle = dcs.throttle
        metrics.read_dcs_throttling(lambda: (throttle.refusals, throttle.renewals.urgent))


def start_pod_labeler(
    settings: Settings,
    status: Callable[[], AgentStatus],
    changed: asyncio.Event,
    dcs: Dcs | None = None,
) -> asyncio.Task[None] | None:
    """Start the pod role label task when Kubernetes settings are present and labels are
    managed; it only reads the published status (and, with the Kubernetes DCS, the pod labels
    its watch sees) and never stops the agent (failures are logged and retried inside it)."""
    k8s = settings.dcs.kubernetes
    if k8s is None or not k8s.manage_role_label:
        return None
    from agent.kube.client import client_factory  # noqa: PLC0415 - Kubernetes only
    from agent.kube.labels import (  # noqa: PLC0415 - Kubernetes only
        PodLabeler,
        RoleLabel,
        cluster_selector,
    )

    observed = None
    if settings.dcs.kind == DcsKind.KUBERNETES:
        from agent.dcs.kubernetes import KubernetesDcs  # noqa: PLC0415 - Kubernetes only

        if isinstance(dcs, KubernetesDcs):
            observed = dcs.observed_pod_labels
    labeler = PodLabeler(
        client_factory=client_factory(k8s.kubeconfig),
        namespace=k8s.namespace,
        pod_name=k8s.pod_name or settings.name,
        label=RoleLabel.from_settings(k8s),
        status=status,
        changed=changed,
        reassert_s=max(10 * settings.timing.loop_wait_s, 30.0),
        timeout_s=settings.timing.retry_timeout_s,
        peers_selector=(
            cluster_selector(k8s.labels, settings.cluster)
            if settings.dcs.kind == DcsKind.KUBERNETES
            else None
        ),
        observed=observed,
    )
    return asyncio.create_task(labeler.run(), name="pod-labeler")


def start_tls_renewal(settings: Settings, postmaster: Postmaster) -> asyncio.Task[None] | None:
    """With postgresql.tls: the task that has PostgreSQL take a rotated certificate without a
    restart (agent/postgres/tls.py), checking the files every `loop_wait_s`. It never stops
    the agent (its failures are logged inside)."""
    tls = settings.postgresql.tls
    if tls is None:
        return None
    renewal = TlsRenewal(
        tls, running=lambda: postmaster.pid() is not None, reload=postmaster.reload
    )
    return asyncio.create_task(
        renewal.run(settings.timing.loop_wait_s), name="postgres-tls-renewal"
    )


def build_events(settings: Settings) -> KubeEvents | None:
    """The Kubernetes Events of this member's pod, when Kubernetes settings are present and
    events are on (it never stops the agent: failures are logged and dropped inside it)."""
    k8s = settings.dcs.kubernetes
    if k8s is None or not k8s.events:
        return None
    from agent.kube.client import client_factory  # noqa: PLC0415 - Kubernetes only
    from agent.kube.events import KubeEvents  # noqa: PLC0415 - Kubernetes only

    return KubeEvents(
        client_factory=client_factory(k8s.kubeconfig),
        namespace=k8s.namespace,
        pod_name=k8s.pod_name or settings.name,
        instance=settings.name,
        timeout_s=settings.timing.retry_timeout_s,
    )


def _prepare_run(settings: Settings) -> None:
    """Logging, the run directory and the files PostgreSQL reads before anything starts."""
    configure_logging(settings.log)
    bind_member(settings.cluster, settings.name)
    os.makedirs(settings.run_dir, exist_ok=True)
    volatile = datadir.volatile_run_dir(settings.run_dir, settings.postgresql.data_dir)
    if volatile is not None:
        # It holds the marker of a copy or pg_rewind in progress (docs/configuration.md).
        log.warning("run_dir_not_durable", reason=volatile)
    if settings.pgbackrest is not None:
        # PostgreSQL's archive_command and restore_command read it on every member, also on
        # one that never ran a pgBackRest command itself (cloned by pg_basebackup).
        pgbackrest.write_conf(settings)


def _build_postgres(settings: Settings) -> tuple[Postmaster, LocalPostgres]:
    postmaster = Postmaster(
        settings.postgresql,
        member_name=settings.name,
        run_dir=settings.run_dir,
        ttl_s=settings.timing.ttl_s,
        archive=pgbackrest.archive_settings(settings),
    )
    postmaster.renice()  # one already running (an agent restart) is adopted at its nice
    prober = Prober(settings.postgresql, run_dir=settings.run_dir, member_name=settings.name)
    return postmaster, LocalPostgres(settings, postmaster=postmaster, prober=prober)


def _load_tls(settings: Settings) -> ReloadingTls | None:
    """The REST API's TLS (None without api.tls), after checking PostgreSQL's server files."""
    # Loaded before anything starts: a certificate that does not load stops the agent here.
    try:
        api_tls = ReloadingTls(settings.api.tls) if settings.api.tls is not None else None
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(f"api.tls: the certificate, key or CA does not load: {exc}") from None
    pg_tls = settings.postgresql.tls
    if pg_tls is not None:
        try:
            check_server_files(pg_tls.cert_file, pg_tls.key_file, pg_tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise SystemExit(
                f"postgresql.tls: the certificate, key or CA does not load: {exc}"
            ) from None
    return api_tls


def _start_helpers(
    settings: Settings,
    *,
    loop: HaLoop,
    dcs: Dcs,
    postmaster: Postmaster,
    events: KubeEvents | None,
    clock: Clock,
    metrics: Metrics,
) -> list[asyncio.Task[None]]:
    """The side tasks that never stop the agent (cancelled by `_stop_helpers`)."""
    tasks = [
        start_pod_labeler(settings, loop.status, loop.status_changed, dcs),
        start_tls_renewal(settings, postmaster),
        asyncio.create_task(events.run(), name="kube-events") if events is not None else None,
        asyncio.create_task(watch_event_loop_lag(clock, metrics), name="event-loop-lag"),
    ]
    return [task for task in tasks if task is not None]


async def _stop_helpers(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def _start_fence(fence: FenceClient) -> str:
    """Adopt or start the fencer; its state. An external fencer that is not there (yet) is
    no reason to stop: every call to it fails until it answers, so this member does not
    lead meanwhile (the executor undoes an acquire it cannot arm)."""
    try:
        return (await fence.start()).state.value
    except FenceUnavailable as exc:
        if not fence.external:
            raise
        log.error("fencer_unavailable", socket=fence.socket_path, error=str(exc))
        return "unavailable"


async def run_agent(settings: Settings) -> int:
    _prepare_run(settings)
    clock = SystemClock()
    dcs = build_dcs(settings, clock)
    api_tls = _load_tls(settings)
    peers = HttpPeers(settings, clock, api_tls.client if api_tls is not None else None)
    taken = await name_in_use(settings, dcs, peers.identify)
    if taken is not None:  # before anything touches PostgreSQL or the DCS's records
        log.error("name_in_use", url=taken.url, error=taken.message(settings))
        await peers.close()
        await dcs.close()
        return EXIT_NAME_IN_USE
    postmaster, pg = _build_postgres(settings)
    fence = FenceClient(
        run_dir=settings.run_dir,
        data_dir=settings.postgresql.data_dir,
        grace_s=settings.timing.fence_margin_s / 2,
        socket_path=settings.fencer.socket,
        external=settings.fencer.mode is FencerMode.EXTERNAL,
    )
    metrics = Metrics()
    watch_dcs_throttling(settings, dcs, metrics)
    events = build_events(settings)
    log.info("agent_starting", fence=await _start_fence(fence), api=settings.api.url)
    loop = HaLoop(
        settings=settings,
        clock=clock,
        dcs=dcs,
        pg=pg,
        fence=fence,
        peers=peers,
        metrics=metrics,
        callbacks=Callbacks(settings, clock=clock, metrics=metrics),
        events=events,
    )
    app = build_app(
        settings=settings,
        status=loop.status,
        dcs=dcs,
        requests=loop,
        metrics=metrics,
        clock=clock,
        validator=ConfigChecker(settings, postmaster),
    )
    server = await start_api(app, settings.api, api_tls)
    ev_loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        ev_loop.add_signal_handler(sig, loop.request_shutdown)
    ha_task = asyncio.create_task(loop.run(), name="ha-loop")
    helpers = _start_helpers(
        settings,
        loop=loop,
        dcs=dcs,
        postmaster=postmaster,
        events=events,
        clock=clock,
        metrics=metrics,
    )
    exit_code = 0
    try:
        await ha_task
        log.info("agent_stopped")
    except Exception as exc:
        log.exception("ha_loop_crashed", error=repr(exc))
        exit_code = 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            ev_loop.remove_signal_handler(sig)
        if events is not None:  # the hand-over on SIGTERM is reported before we exit
            await events.flush(_EVENTS_FLUSH_S)
        await _stop_helpers(helpers)
        await _bounded_cleanup(settings, pg, dcs, server)
    return exit_code


async def _bounded_cleanup(
    settings: Settings,
    pg: PostgresControl,
    dcs: Dcs,
    server: HttpServer,
) -> None:
    """Close everything; never wait longer than the configured shutdown timeout.

    The fencer is left alone: disarmed, it exits once this process is gone; still armed
    (the loop crashed while primary), it fences at the deadline, as it must."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(settings.timing.shutdown_timeout_s):
            await server.close()
            await pg.close()
            await dcs.close()
