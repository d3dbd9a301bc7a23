"""Two safety edges on a real postmaster (review R4 and R8).

- A new cluster is started on its Unix socket only while its bootstrap runs (post_bootstrap):
  no TCP client can connect, so no write can be acknowledged that a failed hook would
  discard; the probe reports it (`socket_only`, and the data directory's incomplete-bootstrap
  marker, which also tells while the server is down); `open_to_clients` restarts it listening
  as configured.
- A synchronous_standby_names that ALTER SYSTEM left in postgresql.auto.conf without a reload
  (the reload of SetSyncStandbyNames failed) is seen by the probe of a fresh agent, at once.
"""

from __future__ import annotations

import asyncio

import pytest

from agent.model import SyncStandbys
from agent.postgres import Prober, initdb
from agent.postgres.datadir import mark_bootstrap, unmark_bootstrap
from agent.postgres.replication import ASYNC, quote_literal
from tests.support.postgres import PgNode, eventually

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

START_TIMEOUT_S = 20.0


async def _tcp_open(node: PgNode) -> bool:
    try:
        _, writer = await asyncio.open_connection(node.settings.listen_host, node.port)
    except ConnectionRefusedError:
        return False
    writer.close()
    return True


async def test_a_new_cluster_takes_no_tcp_client_until_opened(spare_node: PgNode) -> None:
    node = spare_node
    pm = node.postmaster
    await initdb(node.settings, run_dir=node.run_dir)
    mark_bootstrap(node.settings)  # what LocalPostgres.initdb does after initdb
    prober = Prober(node.settings, run_dir=node.run_dir, member_name=node.name)
    try:
        # Down, the marker tells (the whole pod died): discarded at the next start.
        down = await prober.probe(running=False, postmaster_pid=None, timeout_s=5)
        assert down.bootstrap_incomplete and not down.running
        await pm.start(standby=None, timeout_s=START_TIMEOUT_S, socket_only=True)
        first = pm.pid()
        assert not await _tcp_open(node)
        # Up, so does listen_addresses (an agent restarted now discards it too).
        up = await prober.probe(running=True, postmaster_pid=first, timeout_s=5)
        assert up.socket_only and up.bootstrap_incomplete
        unmark_bootstrap(node.settings)  # LocalPostgres.open_to_clients, before the restart
        # What the bootstrap does meanwhile (create_roles, post_bootstrap) works on the socket.
        await pm.execute("CREATE TABLE made_by_the_hook (v int)", timeout_s=5)
        assert await pm.open_to_clients(timeout_s=START_TIMEOUT_S)
        assert pm.pid() != first  # restarted
        assert await _tcp_open(node)
        state = await prober.probe(running=True, postmaster_pid=pm.pid(), timeout_s=5)
        assert state.running and not state.socket_only and not state.bootstrap_incomplete
    finally:
        await prober.close()
    rows = await pm.fetch("SELECT count(*) FROM made_by_the_hook", timeout_s=5)
    assert rows[0][0] == 0
    assert not await pm.open_to_clients(timeout_s=START_TIMEOUT_S)  # open already: nothing
    await pm.close()


async def test_a_fresh_probe_sees_synchronous_standby_names_left_without_a_reload(
    node: PgNode,
) -> None:
    value = 'ANY 1 ("pg-b", "pg-c")'
    await node.postmaster.execute(
        f"ALTER SYSTEM SET synchronous_standby_names = {quote_literal(value)}", timeout_s=5
    )
    # No reload: the running value is still the old one; a fresh agent's probe.
    prober = Prober(node.settings, run_dir=node.run_dir, member_name=node.name)
    try:
        state = await prober.probe(running=True, postmaster_pid=node.postmaster.pid(), timeout_s=5)
        assert state.sync_standbys == ASYNC
        assert state.sync_standbys_pending == SyncStandbys(
            quorum=True, count=1, names=("pg-b", "pg-c")
        )
        await node.postmaster.execute("SELECT pg_reload_conf()", timeout_s=5)

        async def applied() -> bool:
            s = await prober.probe(running=True, postmaster_pid=node.postmaster.pid(), timeout_s=5)
            return s.sync_standbys_pending is None and s.sync_standbys == pending

        pending = state.sync_standbys_pending
        await eventually(applied, timeout_s=10)  # once it runs, nothing is pending
    finally:
        await prober.close()
