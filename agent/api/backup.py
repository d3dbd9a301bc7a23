"""POST /backup and GET /backup: a pgBackRest backup of this member's PostgreSQL, on the
primary (issue 17; `pgwarden ctl backup` finds the primary and asks it).

One backup at a time per member, run as a named task that outlives the request (a backup of
a big database takes long); GET /backup says whether one runs and how the last one ended.
Backups from a standby (pgBackRest's backup-standby) need pgBackRest to reach the primary's
host too (SSH or its TLS server): not done here, see README "Backups".
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

from agent.api.errors import ApiError
from agent.api.operations import reject_unknown_fields
from agent.clock import Clock
from agent.model import AgentStatus, Role
from agent.postgres import pgbackrest
from agent.postgres.osfiles import PostgresError
from agent.settings import Settings

log = structlog.get_logger("pgwarden.api")


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupRun:
    """One backup: its type, when it started and ended (wall clock), and how it ended."""

    type: pgbackrest.BackupType
    started_at: float
    finished_at: float | None = None
    ok: bool | None = None  # None while it runs
    error: str | None = None

    def body(self) -> dict[str, object]:
        return {
            "type": self.type.value,
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

    async def get(self, request: web.Request) -> web.StreamResponse:
        last = self._last.body() if self._last is not None else None
        return web.json_response({"running": self._running(), "last": last})

    async def post(self, request: web.Request) -> web.StreamResponse:
        kind = _backup_type(await _body(request))
        if self._settings.pgbackrest is None:
            raise ApiError(409, "backup: pgbackrest is not configured on this member")
        status = self._status()
        if status.role is not Role.PRIMARY or not status.lease_held:
            leader = status.leader or "unknown"
            raise ApiError(409, f"backup: this member is not the primary (leader: {leader})")
        if self._running():
            raise ApiError(409, "backup: a backup is already running on this member")
        run = BackupRun(type=kind, started_at=self._clock.wall())
        self._last = run
        self._task = asyncio.create_task(self._run(run), name="pgbackrest-backup")
        log.info("backup_started", type=kind.value)
        return web.json_response({"accepted": True, **run.body()}, status=202)

    async def _run(self, run: BackupRun) -> None:
        error: str | None = None
        try:
            await pgbackrest.backup(self._settings, run.type)
        except (PostgresError, OSError) as exc:
            error = str(exc)[-2000:]
        now = self._clock.wall()
        self._last = BackupRun(
            type=run.type, started_at=run.started_at, finished_at=now, ok=error is None,
            error=error,
        )  # fmt: skip
        log.info("backup_done", type=run.type.value, ok=error is None, error=error,
                 duration_s=round(now - run.started_at, 3))  # fmt: skip

    async def close(self) -> None:
        """Cancel a backup still running (pgBackRest's process group is killed)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def _body(request: web.Request) -> dict[str, object]:
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
    app: web.Application, *, settings: Settings, status: Callable[[], AgentStatus], clock: Clock
) -> BackupRoutes:
    routes = BackupRoutes(settings=settings, status=status, clock=clock)
    app.router.add_get("/backup", routes.get)
    app.router.add_post("/backup", routes.post)

    async def on_cleanup(_: web.Application) -> None:
        await routes.close()

    app.on_cleanup.append(on_cleanup)
    return routes
