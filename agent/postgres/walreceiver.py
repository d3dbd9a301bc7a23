"""Restarting a standby's WAL receiver without touching the rest of the server.

SIGTERM makes the walreceiver exit at its next wait (its connection start-up, a query, or
the stream: every wait in it checks for interrupts); the startup process then starts a new
one after `wal_retrieve_retry_interval`, on a new connection. Measured on PostgreSQL 15 and
18 with a receiver stuck in its connection start-up on a peer that accepts and never
answers: streaming again 0.06-0.07 s after the signal. The other ways, measured the same
way: `pg_terminate_backend()` refuses (the walreceiver is an auxiliary process, not a
backend: it returns false with a warning), and a reload with a changed `primary_conninfo`
works as fast but rewrites postgresql.auto.conf and re-reads every setting to restart one
process. A restart of the server is never needed.

The agent signals its PostgreSQL already (process.py reloads it with SIGHUP): whatever user
runs it can signal the server's children too.
"""

from __future__ import annotations

import os
import signal

from agent.postgres.process import Postmaster
from agent.proctree import children

_RECEIVER_SQL = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walreceiver'"


async def restart_wal_receiver(postmaster: Postmaster, *, timeout_s: float) -> int | None:
    """SIGTERM the WAL receiver of the running standby; its pid, or None when it has none
    now (between two attempts of the startup process; nothing to do). Only a child of our
    postmaster is signalled: a pid read from SQL may have exited since. Raises
    PostgresError when the server does not answer."""
    server = postmaster.pid()
    rows = await postmaster.fetch(_RECEIVER_SQL, timeout_s=timeout_s)
    for (pid,) in rows:
        if server is None or not isinstance(pid, int) or pid not in children(server):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        return pid
    return None
