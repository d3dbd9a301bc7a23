"""Replication timeouts derived from the HA ttl, against real postmasters.

A synchronous standby cut off without a TCP reset (here: its postmaster's process group
stopped with SIGSTOP, so the kernel still acknowledges the stream) keeps the primary's
walsender 'streaming' until wal_sender_timeout: with PostgreSQL's default that is 60 s of
blocked commits, and the agent, which plans the synchronous set from pg_stat_replication,
cannot drop the standby before. With the agent's options the walsender is gone about one
ttl after the standby's last reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from agent.postgres import Postmaster, StopMode
from agent.postgres.replication import socket_dir
from tests.support.pgversions import PgInstall
from tests.support.postgres import PgNode, streaming_pair

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

START_TIMEOUT_S = 20.0
SQL_TIMEOUT_S = 5.0
TTL_S = 4.0


@pytest_asyncio.fixture(loop_scope="module")
async def pair(pg_install: PgInstall) -> AsyncIterator[tuple[PgNode, PgNode]]:
    async with streaming_pair(
        install=pg_install, table_sql="CREATE TABLE t (v int)", ttl_s=TTL_S
    ) as nodes:
        try:
            yield nodes
        finally:
            for node in nodes:  # a test may leave a server stopped (SIGSTOP)
                pid = node.postmaster.pid()
                if pid is not None:
                    with contextlib.suppress(OSError):
                        _signal_server(pid, signal.SIGCONT)


def _signal_server(pid: int, sig: signal.Signals) -> None:
    """Signal a postmaster and each of its children: PostgreSQL's children call setsid(),
    so they are not in the postmaster's process group and killpg() would miss them."""
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
        children = [int(word) for word in handle.read().split()]
    for target in (pid, *children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, sig)


async def _show(postmaster: Postmaster, name: str) -> object:
    rows = await postmaster.fetch(f"SHOW {name}", timeout_s=SQL_TIMEOUT_S)
    return rows[0][0]


async def test_both_servers_run_with_the_timeouts_derived_from_the_ttl(
    pair: tuple[PgNode, PgNode],
) -> None:
    for node in pair:
        assert await _show(node.postmaster, "wal_sender_timeout") == "4s"
        assert await _show(node.postmaster, "wal_receiver_timeout") == "4s"
        assert await _show(node.postmaster, "wal_receiver_status_interval") == "1s"


async def test_a_value_in_postgresql_parameters_wins_over_the_derived_one(
    pair: tuple[PgNode, PgNode],
) -> None:
    """Restart the standby with its own wal_receiver_timeout: the user's value is used."""
    primary, standby = pair
    await standby.postmaster.stop(StopMode.FAST, timeout_s=10)
    own = dataclasses.replace(
        standby.settings,
        parameters=(*standby.settings.parameters, ("wal_receiver_timeout", "37s")),
    )
    standby.postmaster = Postmaster(
        own, member_name=standby.name, run_dir=standby.run_dir, ttl_s=TTL_S
    )
    await standby.postmaster.start(standby=standby.standby_of(primary), timeout_s=START_TIMEOUT_S)
    assert await _show(standby.postmaster, "wal_receiver_timeout") == "37s"
    assert await _show(standby.postmaster, "wal_sender_timeout") == "4s"


async def _connect(node: PgNode) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(
        host=socket_dir(node.settings),
        port=node.port,
        user=node.settings.superuser.username,
        database="postgres",
        timeout=SQL_TIMEOUT_S,
    )
    return conn


async def test_a_silent_synchronous_standby_loses_its_walsender_within_one_ttl(
    pair: tuple[PgNode, PgNode],
) -> None:
    primary, standby = pair
    await primary.postmaster.execute(
        f"ALTER SYSTEM SET synchronous_standby_names = '\"{standby.name}\"'",
        timeout_s=SQL_TIMEOUT_S,
    )
    await primary.postmaster.execute("SELECT pg_reload_conf()", timeout_s=SQL_TIMEOUT_S)

    async def walsender() -> tuple[object, ...] | None:
        rows = await primary.postmaster.fetch(
            "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = $1",
            standby.name,
            timeout_s=SQL_TIMEOUT_S,
        )
        return rows[0] if rows else None

    deadline = time.monotonic() + 10
    while await walsender() != ("streaming", "sync"):
        assert time.monotonic() < deadline, await walsender()
        await asyncio.sleep(0.05)
    await primary.postmaster.execute("INSERT INTO t VALUES (1)", timeout_s=SQL_TIMEOUT_S)

    pid = standby.postmaster.pid()
    assert pid is not None
    writer = await _connect(primary)
    _signal_server(pid, signal.SIGSTOP)  # silent: no FIN, no RST, the kernel still ACKs
    stopped_at = time.monotonic()
    commit = asyncio.create_task(writer.execute("INSERT INTO t VALUES (2)"), name="blocked-commit")
    try:
        while await walsender() is not None:
            assert time.monotonic() - stopped_at < TTL_S + 4, "the walsender outlived its timeout"
            await asyncio.sleep(0.05)
        gone_s = time.monotonic() - stopped_at
        print(
            f"\n[pg-timing] walsender of a silent standby gone after {gone_s:.2f} s (ttl {TTL_S})"
        )
        assert gone_s >= TTL_S - 1.5  # its last reply was at most a status interval earlier
        assert not commit.done()  # still named in synchronous_standby_names: still waiting

        # What the leader's sync logic does once the walsender is gone: drop it from the set.
        await primary.postmaster.execute(
            "ALTER SYSTEM RESET synchronous_standby_names", timeout_s=SQL_TIMEOUT_S
        )
        await primary.postmaster.execute("SELECT pg_reload_conf()", timeout_s=SQL_TIMEOUT_S)
        async with asyncio.timeout(5):
            await commit
    finally:
        _signal_server(pid, signal.SIGCONT)
        commit.cancel()
        with contextlib.suppress(BaseException):
            await commit
        writer.terminate()
