"""A standby's reported WAL position against real postmasters.

A standby killed while it held more WAL in pg_wal than it had replayed, restarted with no
upstream, accepts connections (hot standby) before its startup process has replayed all of
that WAL. The position it reports (LocalState.wal_lsn: what it publishes and what its REST
/health answers a failover candidate) must still cover all of it, or a peer holding less
may judge itself the most advanced and promote without a commit only this standby has.

Replay is held behind deterministically: before the kill with pg_wal_replay_pause(), after
the restart with recovery_min_apply_delay (the startup process waits at the first commit
record it meets once consistent, for an hour).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from agent.model import LocalState
from agent.postgres import (
    Postmaster,
    Prober,
    StandbyConfig,
)
from tests.support.pgversions import PgInstall
from tests.support.postgres import PgNode, streaming_pair

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

START_TIMEOUT_S = 20.0
SQL_TIMEOUT_S = 5.0


@pytest_asyncio.fixture(loop_scope="module")
async def pair(pg_install: PgInstall) -> AsyncIterator[tuple[PgNode, PgNode]]:
    async with streaming_pair(install=pg_install, table_sql="CREATE TABLE t (v text)") as nodes:
        yield nodes


async def _probe(node: PgNode, postmaster: Postmaster) -> tuple[LocalState, float]:
    prober = Prober(node.settings, run_dir=node.run_dir, member_name=node.name)
    try:
        pid = postmaster.pid()
        began = time.monotonic()
        state = await prober.probe(running=pid is not None, postmaster_pid=pid, timeout_s=5.0)
        return state, time.monotonic() - began
    finally:
        await prober.close()


async def _lsn(postmaster: Postmaster, sql: str) -> int:
    rows = await postmaster.fetch(sql, timeout_s=SQL_TIMEOUT_S)
    value = rows[0][0]
    assert isinstance(value, int)
    return value


async def test_a_restarted_standby_reports_the_end_of_its_local_wal_not_its_replay_position(
    pair: tuple[PgNode, PgNode],
) -> None:
    primary, standby = pair
    await standby.postmaster.execute("SELECT pg_wal_replay_pause()", timeout_s=SQL_TIMEOUT_S)
    for _ in range(60):  # a few MB of WAL, received and flushed by the standby, not replayed
        await primary.postmaster.execute(
            "INSERT INTO t SELECT 'row ' || g FROM generate_series(1, 1000) AS g",
            timeout_s=SQL_TIMEOUT_S,
        )
    target = await _lsn(primary.postmaster, "SELECT pg_current_wal_lsn()")

    async def received() -> int:
        return await _lsn(standby.postmaster, "SELECT pg_last_wal_receive_lsn()")

    deadline = time.monotonic() + 10
    while await received() < target:
        assert time.monotonic() < deadline, "the standby did not receive the WAL"
        await asyncio.sleep(0.02)
    held = await received()
    replayed = await _lsn(standby.postmaster, "SELECT pg_last_wal_replay_lsn()")
    assert replayed < held  # paused: the WAL is in pg_wal, not replayed

    # Both die; the standby comes back alone, with replay held at its first commit record.
    standby.postmaster.kill()
    await standby.postmaster.wait_for_exit()
    primary_end = await _lsn(primary.postmaster, "SELECT pg_current_wal_lsn()")
    primary.postmaster.kill()
    await primary.postmaster.wait_for_exit()
    await standby.postmaster.close()
    delayed_settings = dataclasses.replace(
        standby.settings,
        parameters=(*standby.settings.parameters, ("recovery_min_apply_delay", "1h")),
    )
    restarted = Postmaster(delayed_settings, member_name=standby.name, run_dir=standby.run_dir)
    try:
        await restarted.start(
            standby=StandbyConfig(
                primary_host="", primary_port=0, slot_name=None, application_name=standby.name
            ),
            timeout_s=START_TIMEOUT_S,
        )
        prober = Prober(standby.settings, run_dir=standby.run_dir, member_name=standby.name)
        try:
            pid = restarted.pid()
            began = time.monotonic()
            state = await prober.probe(running=True, postmaster_pid=pid, timeout_s=5.0)
            scanned_s = time.monotonic() - began
            began = time.monotonic()
            again = await prober.probe(running=True, postmaster_pid=pid, timeout_s=5.0)
            cached_s = time.monotonic() - began
        finally:
            await prober.close()
        print(f"\n[pg-timing] probe with a pg_waldump scan: {scanned_s * 1000:.1f} ms")
        print(f"[pg-timing] probe with the cached end: {cached_s * 1000:.1f} ms")
        assert state.is_replica and not state.streaming
        assert state.receive_lsn is None  # no WAL receiver ran since the start
        assert state.replay_lsn is not None and state.replay_lsn < held  # replay is behind
        assert state.wal_lsn is not None
        assert held <= state.wal_lsn <= primary_end
        assert again.wal_lsn == state.wal_lsn
        assert again.replay_lsn is not None and again.replay_lsn < held  # still held back

        # Let replay go on (a restart without the delay): the startup process replays to
        # exactly the end the scan found, and waits for WAL.
        restarted.kill()
        await restarted.wait_for_exit()
        await restarted.close()
        await standby.postmaster.start(
            standby=StandbyConfig(
                primary_host="", primary_port=0, slot_name=None, application_name=standby.name
            ),
            timeout_s=START_TIMEOUT_S,
        )
        deadline = time.monotonic() + 15
        while True:
            settled, _ = await _probe(standby, standby.postmaster)
            if settled.replay_lsn == state.wal_lsn:
                break
            assert time.monotonic() < deadline, (settled.replay_lsn, state.wal_lsn)
            await asyncio.sleep(0.05)
        assert settled.wal_lsn == state.wal_lsn
    finally:
        await restarted.close()
        restarted.kill()
        await restarted.wait_for_exit()
