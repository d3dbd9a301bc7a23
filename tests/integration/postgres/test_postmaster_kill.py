"""Postmaster.kill() against a real server: nothing PostgreSQL started survives it.

PostgreSQL's children call setsid(), so they are not in the postmaster's process group: a
SIGKILL of that group alone leaves a busy backend running (and able to commit) until its
query ends and it notices the postmaster is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
import pytest

from agent.postgres.replication import socket_dir
from tests.support.postgres import PgNode

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


async def test_kill_leaves_no_backend_running_a_query(node: PgNode) -> None:
    conn: asyncpg.Connection = await asyncpg.connect(
        host=socket_dir(node.settings),
        port=node.port,
        user=node.settings.superuser.username,
        database="postgres",
        timeout=5,
    )
    backend = await conn.fetchval("SELECT pg_backend_pid()")
    assert isinstance(backend, int)
    # CPU-bound for minutes: it never waits, so it never checks for the postmaster's death.
    busy = asyncio.create_task(
        conn.fetchval("SELECT count(*) FROM generate_series(1, 10000000000)"), name="busy-query"
    )
    try:
        await asyncio.sleep(0.3)
        assert _alive(backend)
        node.postmaster.kill()
        deadline = time.monotonic() + 2.0
        while _alive(backend):
            assert time.monotonic() < deadline, "a backend outlived Postmaster.kill()"
            await asyncio.sleep(0.02)
        assert node.postmaster.pid() is None
    finally:
        busy.cancel()
        with contextlib.suppress(BaseException):
            await busy
        conn.terminate()
