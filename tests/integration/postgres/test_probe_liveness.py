"""The probe against a real server: a primary proves it can commit, a hung one is told apart
from a stopped one (issue 10 item 1b, issue 16 item 1)."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from agent.postgres.probe import Prober
from tests.support.postgres import PgNode

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


def _prober(node: PgNode) -> Prober:
    return Prober(node.settings, run_dir=node.run_dir, member_name=node.name)


async def test_the_heartbeat_commits_locally_even_without_its_sync_standby(
    node: PgNode,
) -> None:
    prober = _prober(node)
    try:
        pid = node.postmaster.pid()
        state = await prober.probe(running=True, postmaster_pid=pid, timeout_s=3.0)
        assert state.is_primary and not state.commit_stalled and not state.unresponsive
        # A synchronous standby that does not exist blocks every ordinary commit; the
        # heartbeat commits locally, so the primary is not taken for a broken one.
        await node.postmaster.execute(
            "ALTER SYSTEM SET synchronous_standby_names = 'nobody'", timeout_s=5
        )
        await node.postmaster.execute("SELECT pg_reload_conf()", timeout_s=5)
        time.sleep(0.3)
        assert await prober._can_commit(2.0)
    finally:
        await node.postmaster.execute("ALTER SYSTEM RESET synchronous_standby_names", timeout_s=5)
        await node.postmaster.execute("SELECT pg_reload_conf()", timeout_s=5)
        await prober.close()


async def test_an_idle_primary_is_probed_without_writing_wal(node: PgNode) -> None:
    prober = _prober(node)
    try:
        pid = node.postmaster.pid()
        first = await prober.probe(running=True, postmaster_pid=pid, timeout_s=3.0)
        for _ in range(5):
            state = await prober.probe(running=True, postmaster_pid=pid, timeout_s=3.0)
            assert not state.commit_stalled
        assert state.wal_lsn == first.wal_lsn
    finally:
        await prober.close()


async def test_wal_waiting_for_a_flush_that_does_not_move_is_settled_by_the_heartbeat(
    node: PgNode,
) -> None:
    rows = await node.postmaster.fetch(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'", timeout_s=5
    )
    walwriter = int(str(rows[0][0]))
    os.kill(walwriter, signal.SIGSTOP)  # nobody flushes asynchronous commits now
    prober = _prober(node)
    try:
        await node.postmaster.execute(
            "SET synchronous_commit = off; CREATE TABLE IF NOT EXISTS hb (v int);"
            " INSERT INTO hb VALUES (1)",
            timeout_s=5,
        )
        pid = node.postmaster.pid()
        await prober.probe(running=True, postmaster_pid=pid, timeout_s=3.0)
        pending = await node.postmaster.fetch(
            "SELECT pg_current_wal_insert_lsn()::text,"
            " pg_current_wal_insert_lsn() > pg_current_wal_flush_lsn()",
            timeout_s=5,
        )
        inserted, waiting = pending[0]
        assert waiting is True
        # Second probe: WAL still waits and the flush did not move: the heartbeat runs,
        # commits (this storage is fine) and so flushes everything before it.
        state = await prober.probe(running=True, postmaster_pid=pid, timeout_s=3.0)
        assert state.is_primary and not state.commit_stalled
        flushed = await node.postmaster.fetch(
            "SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn", inserted, timeout_s=5
        )
        assert flushed[0][0] is True
    finally:
        os.kill(walwriter, signal.SIGCONT)
        await node.postmaster.execute("SET synchronous_commit = on", timeout_s=5)
        await prober.close()


async def test_a_commit_that_does_not_complete_in_time_is_a_stall(node: PgNode) -> None:
    prober = _prober(node)
    pid = node.postmaster.pid()
    state = await prober.probe(running=True, postmaster_pid=pid, timeout_s=3.0)
    assert state.is_primary and not state.commit_stalled
    conn = prober._conn
    assert conn is not None
    backend = conn.get_server_pid()
    # The backend that would commit stops (as if blocked in fsync on hung storage).
    os.kill(backend, signal.SIGSTOP)
    try:
        began = time.monotonic()
        assert not await prober._can_commit(0.5)
        assert time.monotonic() - began < 1.5
        assert prober._conn is None  # dropped: its backend may stay blocked
    finally:
        os.kill(backend, signal.SIGCONT)
        await prober.close()


async def test_a_stopped_postmaster_is_unresponsive_not_down(node: PgNode) -> None:
    prober = _prober(node)
    pid = node.postmaster.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        state = await prober.probe(running=True, postmaster_pid=pid, timeout_s=1.0)
        assert not state.running and state.unresponsive and state.postmaster_pid == pid
    finally:
        os.kill(pid, signal.SIGCONT)
        await prober.close()
    again = _prober(node)
    try:
        state = await again.probe(running=True, postmaster_pid=pid, timeout_s=3.0)
        assert state.running and not state.unresponsive
    finally:
        await again.close()


async def test_a_data_directory_holding_a_backup_label_is_reported(node: PgNode) -> None:
    """A base backup whose recovery has not started: the decision must not take its copied
    control file ("in production") for a former primary (chaos finding 21)."""
    prober = _prober(node)
    label = os.path.join(node.settings.data_dir, "backup_label")
    try:
        state = await prober.probe(running=False, postmaster_pid=None, timeout_s=3.0)
        assert not state.backup_label
        with open(label, "w") as f:
            f.write("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n")
        state = await prober.probe(running=False, postmaster_pid=None, timeout_s=3.0)
        assert state.backup_label and state.control is not None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(label)
        await prober.close()
