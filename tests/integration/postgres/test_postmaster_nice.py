"""postgresql.nice against a real server: the postmaster the agent starts, the processes it
forks (a client backend, the checkpointer) and a postmaster the agent adopts run at the
configured nice value, so that inside one CPU quota the agent and its fencer (nice 0) get the
CPU first (docs/ha.md, Fencing)."""

from __future__ import annotations

import dataclasses

import asyncpg
import pytest

from agent.postgres import Postmaster, StopMode
from agent.postgres.replication import socket_dir
from agent.proctree import children
from tests.support.postgres import PgNode

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


def _nice(pid: int) -> int:
    """The nice value of process `pid` (field 19 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return int(handle.read().rsplit(b")", 1)[1].split()[16])


def _title(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return handle.read().replace(b"\0", b" ").decode(errors="replace")


async def _backend_pid(node: PgNode) -> tuple[asyncpg.Connection, int]:
    conn: asyncpg.Connection = await asyncpg.connect(
        host=socket_dir(node.settings),
        port=node.port,
        user=node.settings.superuser.username,
        database="postgres",
        timeout=5,
    )
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    assert isinstance(pid, int)
    return conn, pid


async def test_the_started_postmaster_and_its_children_run_at_the_configured_nice(
    node: PgNode,
) -> None:
    await node.postmaster.stop(StopMode.FAST, timeout_s=20)
    node.postmaster = Postmaster(
        dataclasses.replace(node.settings, nice=10), member_name=node.name, run_dir=node.run_dir
    )
    await node.postmaster.start(standby=None, timeout_s=20)
    postmaster = node.postmaster.pid()
    assert postmaster is not None
    conn, backend = await _backend_pid(node)
    try:
        checkpointer = [c for c in children(postmaster) if "checkpointer" in _title(c)]
        assert checkpointer, [_title(c) for c in children(postmaster)]
        nices = {pid: _nice(pid) for pid in (postmaster, backend, *checkpointer)}
        assert set(nices.values()) == {10}, nices
    finally:
        await conn.close()


async def test_an_adopted_postmaster_is_raised_to_the_nice_value_never_lowered(
    node: PgNode,
) -> None:
    postmaster = node.postmaster.pid()
    assert postmaster is not None
    conn, backend = await _backend_pid(node)
    try:
        # An agent restarted with a higher value adopts the running server (agent/app.py).
        settings = dataclasses.replace(node.settings, nice=15)
        Postmaster(settings, member_name=node.name, run_dir=node.run_dir).renice()
        tree = (postmaster, backend, *children(postmaster))
        assert {_nice(pid) for pid in tree} == {15}
        # A lower value leaves it as it is (lowering needs CAP_SYS_NICE).
        settings = dataclasses.replace(node.settings, nice=3)
        Postmaster(settings, member_name=node.name, run_dir=node.run_dir).renice()
        assert {_nice(pid) for pid in tree} == {15}
    finally:
        await conn.close()
