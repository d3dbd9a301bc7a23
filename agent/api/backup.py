"""POST /backup and GET /backup: a pgBackRest backup, from this member (issue 17;
`pgwarden ctl backup` asks a healthy replica first, then the primary).

On the primary holding the lease: a backup of its PostgreSQL. On a streaming replica: a
backup from it (pgBackRest's backup-standby: the backup starts and stops on the primary,
the files are copied from the standby), which needs pgBackRest to reach the primary's
PostgreSQL as a second `pg` of the stanza. pgwarden gives it the primary's data directory and
socket from its member record (`backup_pg`), so only when both run on one host (the same
`postgresql.connect_host`); across hosts pgBackRest would need SSH or its TLS server, which
pgwarden does not set up, and the replica answers 409 (ctl then backs up on the primary).

One backup at a time per member, run as a named task that outlives the request (a backup of
a big database takes long); GET /backup says whether one runs and how the last one ended.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

import structlog

from agent.api.errors import ApiError
from agent.api.operations import reject_unknown_fields
from agent.clock import Clock
from agent.http.routing import App, Request, Response, json_response
from agent.model import AgentStatus, PgState, Role
from agent.postgres import pgbackrest
from agent.postgres.osfiles import PostgresError
from agent.settings import Settings

log = structlog.get_logger("pgwarden.api")


class BackupSource(StrEnum):
    PRIMARY = "primary"  # this member is the primary
    STANDBY = "standby"  # this member is a replica: backup-standby


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupRun:
    """One backup: its type, where it is taken, when it started and ended (wall clock), and
    how it ended."""

    type: pgbackrest.BackupType
    member: str
    source: BackupSource
    primary: str | None  # the primary's member name
    started_at: float
    finished_at: float | None = None
    ok: bool | None = None  # None while it runs
    error: str | None = None

    def body(self) -> dict[str, object]:
        return {
            "type": self.type.value,
            "member": self.member,
            "source": self.source.value,
            "primary": self.primary,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "ok": self.ok,
            "error": self.error,
        }


class BackupRoutes:
    """The two handlers and the one backup task."""

    def __init__(
        self, *, settings: Settings, status: Callable[[], AgentStatus], clock: Clock
    ) -> None:
        self._settings = settings
        self._status = status
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._last: BackupRun | None = None

    def _running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def get(self, request: Request) -> Response:
        last = self._last.body() if self._last is not None else None
        return json_response({"running": self._running(), "last": last})

    async def post(self, request: Request) -> Response:
        kind = _backup_type(await _body(request))
        if self._settings.pgbackrest is None:
            raise ApiError(409, "backup: pgbackrest is not configured on this member")
        status = self._status()
        primary = backup_primary(status, self._settings)
        if self._running():
            raise ApiError(409, "backup: a backup is already running on this member")
        source = BackupSource.PRIMARY if primary is None else BackupSource.STANDBY
        run = BackupRun(
            type=kind,
            member=self._settings.name,
            source=source,
            primary=self._settings.name if primary is None else status.leader,
            started_at=self._clock.wall(),
        )
        self._last = run
        self._task = asyncio.create_task(self._run(run, primary), name="pgbackrest-backup")
        log.info("backup_started", type=kind.value, source=source.value, primary=run.primary)
        return json_response({"accepted": True, **run.body()}, status=202)

    async def _run(self, run: BackupRun, primary: pgbackrest.PrimaryPg | None) -> None:
        error: str | None = None
        try:
            await pgbackrest.backup(self._settings, run.type, primary)
        except (PostgresError, OSError) as exc:
            error = str(exc)[-2000:]
        now = self._clock.wall()
        self._last = replace(run, finished_at=now, ok=error is None, error=error)
        log.info("backup_done", type=run.type.value, source=run.source.value, ok=error is None,
                 error=error, duration_s=round(now - run.started_at, 3))  # fmt: skip

    async def close(self) -> None:
        """Cancel a backup still running (pgBackRest's process group is killed)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def backup_primary(status: AgentStatus, settings: Settings) -> pgbackrest.PrimaryPg | None:
    """Where a backup requested here is taken: None on the primary holding the lease; on a
    replica that streams, the primary's PostgreSQL for pgBackRest (backup-standby). Raises
    ApiError 409 saying why this member cannot take one. Pure."""
    leader = status.leader or "unknown"
    if status.role is Role.PRIMARY and status.lease_held:
        return None
    if status.role is not Role.REPLICA or status.state is not PgState.STREAMING:
        raise ApiError(
            409, f"backup: this member is neither the primary nor a streaming replica "
            f"(leader: {leader})"
        )  # fmt: skip
    view = status.cluster_view
    record = view.leader_member if view is not None else None
    if record is None or record.role is not Role.PRIMARY:
        raise ApiError(409, f"backup: the primary's member record is not known (leader: {leader})")
    if record.backup_pg is None:
        raise ApiError(409, f"backup: the primary {leader} publishes no pgBackRest location")
    if record.host != settings.postgresql.connect_host:
        raise ApiError(
            409, f"backup: the primary {leader} runs on {record.host}, not on this host "
            f"({settings.postgresql.connect_host}): a backup from a standby needs pgBackRest "
            "to reach it there, which pgwarden does not set up; back up on the primary"
        )  # fmt: skip
    return pgbackrest.PrimaryPg(pg=record.backup_pg, port=record.port)


async def _body(request: Request) -> dict[str, object]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"body: malformed JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "body: expected a JSON object")
    return data


def _backup_type(body: dict[str, object]) -> pgbackrest.BackupType:
    reject_unknown_fields(body, {"type"})
    value = body.get("type", "full")
    try:
        return pgbackrest.BackupType(str(value))
    except ValueError:
        allowed = ", ".join(t.value for t in pgbackrest.BackupType)
        raise ApiError(400, f"type: expected one of {allowed}, got {value!r}") from None


def add_backup_routes(
    app: App, *, settings: Settings, status: Callable[[], AgentStatus], clock: Clock
) -> BackupRoutes:
    routes = BackupRoutes(settings=settings, status=status, clock=clock)
    app.add_get("/backup", routes.get)
    app.add_post("/backup", routes.post)
    app.on_cleanup.append(routes.close)
    return routes
