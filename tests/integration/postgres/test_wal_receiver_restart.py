"""A WAL receiver stuck in its connection start-up, and the restart that frees it, against
real postmasters (PostgreSQL 15 and 18; chaos finding 17, agent/postgres/walreceiver.py).

The standby is pointed at a peer that accepts connections and never answers (the kernel
acknowledges what the receiver sends; a wedged proxy or pooler). PostgreSQL never gives up on
it: `connect_timeout` (2 s in the agent's conninfo) is not enforced by the walreceiver's
connection loop, and `wal_receiver_timeout` only covers an established stream. Once the peer
forwards new connections, only a new receiver streams again: `restart_wal_receiver` signals
the stuck one, and the startup process starts the next.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from agent.postgres.datadir import StandbyConfig
from agent.postgres.walreceiver import restart_wal_receiver
from tests.support.pgversions import PgInstall
from tests.support.ports import free_ports
from tests.support.postgres import PgNode, eventually, streaming_pair

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

TTL_S = 6.0  # wal_retrieve_retry_interval 300 ms, wal_receiver_timeout 6 s
SQL_TIMEOUT_S = 5.0


class HangingPeer:
    """A TCP listener in front of the primary: while `hanging`, a new connection is accepted
    and never answered (held open, nothing read); otherwise forwarded. A hung connection
    stays hung when `hanging` ends, as on a wedged middlebox."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.hanging = True
        self.hung = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self.hanging:
            self.hung += 1
            return  # the connection stays open, unread, until close()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.append(up_writer)
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))

    def close(self) -> None:
        for writer in self._writers:
            writer.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@pytest_asyncio.fixture(loop_scope="module")
async def hung(pg_install: PgInstall) -> AsyncIterator[tuple[PgNode, PgNode, HangingPeer]]:
    """A streaming pair whose standby was then pointed at the primary through a hanging peer."""
    async with streaming_pair(
        install=pg_install, table_sql="CREATE TABLE t (v int)", ttl_s=TTL_S
    ) as (primary, standby):
        peer = HangingPeer(primary.port)
        port = free_ports(1)[0]
        server = await asyncio.start_server(peer.serve, "127.0.0.1", port)
        try:
            through = StandbyConfig(
                primary_host="127.0.0.1",
                primary_port=port,
                slot_name=standby.slot,
                application_name=standby.name,
            )
            await standby.postmaster.follow(through)
            await eventually(lambda: _receiver_pid(standby, hanging_on=peer), timeout_s=10)
            yield primary, standby, peer
        finally:
            peer.close()
            server.close()


async def _receiver_pid(standby: PgNode, *, hanging_on: HangingPeer) -> bool:
    rows = await standby.postmaster.fetch(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walreceiver'",
        timeout_s=SQL_TIMEOUT_S,
    )
    return bool(rows) and hanging_on.hung > 0


async def _streaming(standby: PgNode) -> bool:
    rows = await standby.postmaster.fetch(
        "SELECT status FROM pg_stat_wal_receiver", timeout_s=SQL_TIMEOUT_S
    )
    return bool(rows) and rows[0][0] == "streaming"


async def test_a_receiver_hung_on_a_silent_peer_streams_only_once_restarted(
    hung: tuple[PgNode, PgNode, HangingPeer],
) -> None:
    primary, standby, peer = hung
    await primary.postmaster.execute("INSERT INTO t VALUES (1)", timeout_s=SQL_TIMEOUT_S)
    peer.hanging = False  # the fault leaves the path: new connections go through
    # Twice its connect_timeout and more than wal_receiver_timeout: PostgreSQL still waits.
    await asyncio.sleep(TTL_S + 1)
    assert not await _streaming(standby)
    assert peer.hung == 1
    pid = await restart_wal_receiver(standby.postmaster, timeout_s=SQL_TIMEOUT_S)
    assert pid is not None
    await eventually(lambda: _streaming(standby), timeout_s=5)

    async def replayed() -> bool:
        rows = await standby.postmaster.fetch("SELECT count(*) FROM t", timeout_s=SQL_TIMEOUT_S)
        return rows[0][0] == 1

    await eventually(replayed, timeout_s=5)
    # A server without a receiver (the primary) is left alone.
    assert await restart_wal_receiver(primary.postmaster, timeout_s=SQL_TIMEOUT_S) is None
