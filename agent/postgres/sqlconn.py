"""The agent's superuser connections over the unix socket, and the one control connection a
`Postmaster` runs its statements on.

Peer authentication via the ident map (replication.py renders it); every statement has a
deadline, and a failure is a PostgresError that names the statement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from agent.config import PostgresSettings
from agent.postgres import replication
from agent.postgres.osfiles import PostgresError


class ControlConnection:
    """One connection made on first use and again after a failure of its own; one statement
    at a time on it (`Postmaster.fetch` / `execute`)."""

    def __init__(self, settings: PostgresSettings) -> None:
        self._settings = settings
        self._conn: asyncpg.Connection | None = None
        # One statement at a time on the control connection: the loop's short actions, a
        # hand-over's CHECKPOINT in the background and the API share it, and asyncpg refuses
        # a second operation in progress (the refusal used to drop the connection under the
        # first). A waiting caller still keeps its own time limit.
        self._sql_lock = asyncio.Lock()

    async def _connection(self, timeout_s: float) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = await connect_local(self._settings, timeout_s=timeout_s, purpose="control")
        return self._conn

    async def close(self) -> None:
        """Drop the connection (the next statement makes a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def fetch(self, sql: str, *args: object, timeout_s: float) -> list[tuple[object, ...]]:
        """Run a query as the superuser over the unix socket; rows as tuples.

        Raises PostgresError on any failure (SQL error, connection refused, timeout); the
        connection is dropped after a failure of its own and made again on the next call.
        """
        rows = await self._on_connection(sql, timeout_s, lambda conn: conn.fetch(sql, *args))
        return [tuple(row) for row in rows]

    async def execute(self, sql: str, *args: object, timeout_s: float) -> None:
        """Run one statement as the superuser over the unix socket (see `fetch` for errors).

        Without `args` it goes over the simple protocol, so utility statements such as
        ALTER SYSTEM work."""
        await self._on_connection(sql, timeout_s, lambda conn: conn.execute(sql, *args))

    async def _on_connection(
        self,
        sql: str,
        timeout_s: float,
        statement: Callable[[asyncpg.Connection], Awaitable[Any]],
    ) -> Any:
        """`statement` on the control connection, alone on it, within `timeout_s` (waiting
        for the connection included). Only a failure while this caller holds the connection
        drops it: a caller that timed out waiting leaves the running statement alone."""
        try:
            async with asyncio.timeout(timeout_s), self._sql_lock:
                try:
                    conn = await self._connection(timeout_s)
                    return await statement(conn)
                except asyncpg.PostgresError:
                    raise  # an SQL error: the connection is fine
                except BaseException:  # interface error, OSError, our timeout's cancellation
                    await self.close()
                    raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise PostgresError(f"{_first_line(sql)}: {exc!r}") from exc


def _first_line(sql: str) -> str:
    line = sql.strip().splitlines()[0] if sql.strip() else ""
    return line[:80]


async def connect_local(
    settings: PostgresSettings,
    *,
    timeout_s: float,
    purpose: str,
    cache_statements: bool = False,
    database: str = "postgres",
) -> asyncpg.Connection:
    """A superuser connection over the unix socket (peer authentication via the ident map).

    `cache_statements` keeps prepared statements: a repeated query then costs one round trip
    instead of two (parse, then execute); off for ad-hoc control statements."""
    conn: asyncpg.Connection = await asyncpg.connect(
        host=replication.socket_dir(settings),
        port=settings.port,
        user=settings.superuser.username,
        database=database,
        timeout=timeout_s,
        statement_cache_size=100 if cache_statements else 0,
        server_settings={"application_name": f"pgwarden-{purpose}"},
    )
    return conn
