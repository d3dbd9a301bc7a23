"""Data directories made from the pgBackRest repository (issue 17): a replica created by the
configured methods in order, and a new cluster bootstrapped from a backup.

A replica: each method of `create_replica_methods` in turn (`pgbackrest`: restore the latest
backup as a standby, which then replays the archive through restore_command and streams from
the leader once the archive has no more; `basebackup`: pg_basebackup from the leader); a
method that fails leaves its remains behind the clone marker, and the next one clears them.

A bootstrap: restore to the target, start PostgreSQL, wait until recovery reached the target
and promoted it (a new timeline); a target the archive cannot reach makes PostgreSQL stop
with `recovery ended before configured recovery target was reached`: the server is then
stopped, the data directory emptied, and that reason raised (nothing is left behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import structlog

from agent.backup_settings import ReplicaMethod
from agent.postgres import bootstrap, pgbackrest
from agent.postgres.datadir import (
    StandbyConfig,
    configure_standby,
    is_initialized,
    mark_bootstrap,
    write_client_files,
)
from agent.postgres.osfiles import PostgresError
from agent.postgres.process import Postmaster, StopMode
from agent.settings import Settings

log = structlog.get_logger("pgwarden.restore")

_POLL_S = 0.1


async def _restore_standby(settings: Settings, source: StandbyConfig, *, timeout_s: float) -> None:
    pg, run_dir = settings.postgresql, settings.run_dir
    marker = bootstrap.prepare_clone(pg, run_dir)
    write_client_files(pg, run_dir)
    await pgbackrest.restore_standby(settings, timeout_s=timeout_s)
    configure_standby(pg, source, run_dir=run_dir)
    os.unlink(marker)


async def clone_by_methods(
    settings: Settings, source: StandbyConfig, *, timeout_s: float
) -> ReplicaMethod:
    """Make this member a standby of `source` by the first of `create_replica_methods` that
    succeeds; the method used. Raises PostgresError naming every method's failure."""
    failures = []
    for method in settings.create_replica_methods:
        try:
            if method is ReplicaMethod.PGBACKREST:
                backrest = settings.pgbackrest
                limit = backrest.restore_timeout_s if backrest is not None else timeout_s
                await _restore_standby(settings, source, timeout_s=limit)
            else:
                await bootstrap.clone(
                    settings.postgresql, source, run_dir=settings.run_dir, timeout_s=timeout_s
                )
        except (PostgresError, OSError) as exc:
            log.warning("replica_method_failed", method=method.value, error=str(exc)[-500:])
            failures.append(f"{method.value}: {exc}")
            continue
        log.info("replica_created", method=method.value)
        return method
    raise PostgresError("every replica creation method failed: " + "; ".join(failures))


async def restore_bootstrap(settings: Settings, postmaster: Postmaster) -> None:
    """A new cluster from the repository: restore, recover to the target, promote. Leaves a
    running primary on a new timeline, listening on its Unix socket only (the bootstrap opens
    it once complete); on failure, an empty data directory and the reason."""
    pg = settings.postgresql
    bootstrap.discard_interrupted_copy(pg, settings.run_dir)
    if is_initialized(pg) or not bootstrap.is_empty_dir(pg.data_dir):
        raise PostgresError(f"bootstrap: data directory {pg.data_dir} is not empty")
    backrest = settings.pgbackrest
    if backrest is None:
        raise PostgresError("bootstrap from a backup needs the pgbackrest section")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + backrest.restore_timeout_s
    marker = bootstrap.prepare_clone(pg, settings.run_dir)
    try:
        await pgbackrest.restore_for_bootstrap(settings, timeout_s=backrest.restore_timeout_s)
        mark_bootstrap(pg)
        # No TCP client may write to it before the bootstrap completed (post_bootstrap).
        await postmaster.start(
            standby=None, timeout_s=max(deadline - loop.time(), 1.0), socket_only=True
        )
        await _wait_promoted(postmaster, deadline)
        for name in pgbackrest.RECOVERY_TARGET_SETTINGS:
            await postmaster.execute(f"ALTER SYSTEM RESET {name}", timeout_s=5.0)
        await postmaster.execute("SELECT pg_reload_conf()", timeout_s=5.0)
    except BaseException as exc:
        await postmaster.stop(StopMode.IMMEDIATE, timeout_s=settings.timing.shutdown_timeout_s)
        bootstrap.clear_data_dir(pg)
        if isinstance(exc, PostgresError | OSError):
            log.error("bootstrap_from_backup_failed", error=str(exc)[-1000:])
            raise PostgresError(f"bootstrap from backup failed: {failure_reason(exc)}") from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(marker)
    log.info("bootstrapped_from_backup", target=settings.bootstrap.target)


async def _wait_promoted(postmaster: Postmaster, deadline: float) -> None:
    """Until recovery ended and the server accepts writes; PostgresError with the log's
    reason if the postmaster exits first (a target the archive cannot reach)."""
    loop = asyncio.get_running_loop()
    while True:
        if postmaster.pid() is None:
            raise PostgresError(f"PostgreSQL stopped during recovery: {postmaster.log_tail()}")
        try:
            rows = await postmaster.fetch("SELECT pg_is_in_recovery()", timeout_s=2.0)
            if rows[0][0] is False:
                return
        except PostgresError:
            pass  # not accepting connections yet, or going down: the pid check decides
        if loop.time() >= deadline:
            raise PostgresError("recovery did not reach its target within restore_timeout_s")
        await asyncio.sleep(_POLL_S)


# FATAL lines that only refuse a connection while the server recovers or goes down after its
# startup process exited (the agent's own attempts to ask it; SQLSTATE 57P03): never the
# reason recovery stopped.
_REFUSALS = (
    "not yet accepting connections",
    "is not accepting connections",
    "is starting up",
    "is shutting down",
    "is in recovery mode",
)


def failure_reason(exc: BaseException) -> str:
    """PostgreSQL's last FATAL line that is not a refused connection (why recovery stopped),
    else the error itself."""
    text = str(exc)
    fatal = [
        line.split("FATAL:", 1)[1].strip()
        for line in text.splitlines()
        if "FATAL:" in line and not any(refusal in line for refusal in _REFUSALS)
    ]
    return fatal[-1] if fatal else text[-1000:]
