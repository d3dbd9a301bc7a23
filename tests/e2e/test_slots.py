"""End to end: a permanent logical slot (DCS `config` record) and a change-data-capture
consumer across a switchover and a hard kill of the primary.

The consumer reads the slot with test_decoding's SQL interface on whichever member is the
primary, keeps its own confirmed position (the commit LSN of the last transaction it took,
also confirmed to the slot with pg_replication_slot_advance) and skips what it is sent again
at or before it, as a consumer does with `START_REPLICATION ... <its position>`. It must see
every committed row exactly once and no row that the cluster does not hold in the end.

On PostgreSQL 17+ the slot is a failover slot: the standbys keep synchronized copies, and the
primary holds changes back from logical consumers until its streaming standbys have them
(`synchronized_standby_slots`). On 15 and 16 the new primary creates the slot afresh at its
own position: changes between the consumer's position and the promotion are not sent
(docs/slots.md); the test states that limit instead of hiding it.
"""

from __future__ import annotations

import itertools
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from agent.localcluster import LocalCluster
from agent.localproc import LocalMember
from tests.support.cluster import E2E_TIMING, converge, new_primary, wait_until
from tests.support.pgversions import PgInstall

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SLOT = "cdc"
SLOT_SPEC = {"type": "logical", "database": "postgres", "plugin": "test_decoding"}
TABLE = "cdc_rows"
_MARKERS = itertools.count(1_000_000)  # rows that let the slot move (see `_synced`)
_INSERT = re.compile(rf"^table public\.{TABLE}: INSERT: v\[integer\]:(\d+)$")


@dataclass(kw_only=True)
class LogicalCluster(LocalCluster):
    """A LocalCluster whose members run with wal_level = logical."""

    def config_for(self, member: LocalMember) -> dict[str, object]:
        config = super().config_for(member)
        postgresql = config["postgresql"]
        assert isinstance(postgresql, dict)
        postgresql["parameters"] = {**postgresql["parameters"], "wal_level": "logical"}
        return config


@pytest.fixture(scope="module")
def cluster(pg_install: PgInstall) -> Iterator[LogicalCluster]:
    base = Path(tempfile.mkdtemp(prefix="pgwarden-slots-", dir="/tmp"))
    running = LogicalCluster(
        base=base, size=3, timing=dict(E2E_TIMING), cluster="slots", pg_bin=pg_install.bin_dir
    )
    try:
        running.start()
        yield running
    finally:
        running.stop()
        shutil.rmtree(base, ignore_errors=True)


async def _connect(cluster: LocalCluster, index: int) -> asyncpg.Connection:
    port = cluster.members[index].pg_port
    conn: asyncpg.Connection = await asyncpg.connect(
        host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=3
    )
    return conn


@dataclass
class Consumer:
    """A test_decoding consumer with its own confirmed position."""

    confirmed: int = 0
    seen: list[int] = field(default_factory=list)

    async def take(self, conn: asyncpg.Connection, *, limit: int | None = None) -> int:
        """Take up to `limit` changes (whole transactions only), confirm the last commit
        taken; return how many rows it took."""
        rows = await conn.fetch(
            "SELECT lsn, data FROM pg_logical_slot_peek_changes($1, NULL, $2)", SLOT, limit
        )
        pending: list[int] = []
        last_commit, taken = None, 0
        for row in rows:
            lsn, data = int(row["lsn"]), str(row["data"])
            if data.startswith("BEGIN"):
                pending = []
            elif (found := _INSERT.match(data)) is not None:
                pending.append(int(found.group(1)))
            elif data.startswith("COMMIT"):
                if lsn > self.confirmed:  # at or before it: sent again, already taken
                    self.seen += pending
                    taken += len(pending)
                    last_commit = lsn
                pending = []
        if last_commit is not None:
            await conn.execute("SELECT pg_replication_slot_advance($1, $2)", SLOT, last_commit)
            self.confirmed = last_commit
        return taken


async def _insert(conn: asyncpg.Connection, values: range) -> None:
    for value in values:  # one transaction each
        await conn.execute(f"INSERT INTO {TABLE} (v) VALUES ($1)", value)


async def _synced_everywhere(cluster: LocalCluster, primary: int) -> bool:
    """Each standby holds a persistent synchronized copy of the slot (17+)."""
    for index in range(len(cluster.members)):
        if index == primary:
            continue
        conn = await _connect(cluster, index)
        try:
            row = await conn.fetchrow(
                "SELECT synced, temporary FROM pg_replication_slots WHERE slot_name = $1", SLOT
            )
        finally:
            await conn.close()
        if row is None or not row["synced"] or row["temporary"]:
            return False
    return True


async def _slot_on_primary(cluster: LocalCluster, primary: int) -> None:
    async def there() -> bool:
        conn = await _connect(cluster, primary)
        try:
            count = await conn.fetchval(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", SLOT
            )
            return bool(count == 1)
        finally:
            await conn.close()

    await wait_until(there, timeout=20, what="the permanent slot on the primary")


async def _synced(cluster: LocalCluster, primary: int, consumer: Consumer) -> None:
    """Wait until every standby holds a persistent synchronized copy of the slot (17+).

    A standby's copy stays temporary until the primary's slot has moved past the catalog
    xmin the standby could reserve (PostgreSQL logs "could not synchronize replication slot";
    with a busy primary this takes a few seconds, once a running-transactions record is
    decoded and confirmed). So each round writes one marker row after such a record and the
    consumer takes it, as a live consumer would."""

    async def all_synced() -> bool:
        conn = await _connect(cluster, primary)
        try:
            await conn.execute("SELECT pg_log_standby_snapshot()")
            value = next(_MARKERS)
            await _insert(conn, range(value, value + 1))
            await consumer.take(conn)
        finally:
            await conn.close()
        return await _synced_everywhere(cluster, primary)

    await wait_until(
        all_synced, timeout=60, interval=0.5, what="synchronized copies on every standby"
    )


async def _drain(cluster: LocalCluster, primary: int, consumer: Consumer, want: int) -> None:
    """Take changes on `primary` until `want` distinct rows were seen (or time runs out)."""

    async def caught_up() -> bool:
        conn = await _connect(cluster, primary)
        try:
            await consumer.take(conn)
        finally:
            await conn.close()
        return len(set(consumer.seen)) >= want

    await wait_until(caught_up, timeout=30, interval=0.3, what=f"{want} rows consumed")


async def test_a_logical_consumer_sees_every_committed_row_once_across_switchover_and_kill(
    cluster: LogicalCluster, pg_install: PgInstall
) -> None:
    if pg_install.major < 17:
        pytest.skip(
            "PostgreSQL 15 and 16 have no failover slots: the new primary creates the slot "
            "afresh and changes between the consumer's position and the promotion are not "
            "sent (docs/slots.md)"
        )
    primary = await converge(cluster, timeout=60)
    conn = await _connect(cluster, primary)
    try:
        await conn.execute(f"CREATE TABLE {TABLE} (v integer PRIMARY KEY)")
    finally:
        await conn.close()
    async with aiohttp.ClientSession() as session:
        status, body = await cluster.patch_config(
            session,
            {"slots": {SLOT: SLOT_SPEC}},
        )
    assert status == 200, body
    await _slot_on_primary(cluster, primary)
    consumer = Consumer()

    # 1. Rows 1-50, the standbys' copies made; rows 51-150 committed and the consumer takes
    # part of them; then a switchover.
    conn = await _connect(cluster, primary)
    try:
        await _insert(conn, range(1, 51))
    finally:
        await conn.close()
    await _synced(cluster, primary, consumer)
    conn = await _connect(cluster, primary)
    try:
        await _insert(conn, range(51, 151))
        before = len(consumer.seen)
        await consumer.take(conn, limit=120)  # about 40 of the 100 transactions
    finally:
        await conn.close()
    assert 0 < len(consumer.seen) - before < 100
    candidate = (primary + 1) % len(cluster.members)
    async with aiohttp.ClientSession() as session:
        status, body = await cluster.post(
            session, primary, "/switchover", {"candidate": cluster.members[candidate].name}
        )
    assert status in (200, 202), body
    primary = await new_primary(cluster, primary, timeout=30)
    await _drain(cluster, primary, consumer, before + 100)

    # 2. The former primary's copy made again; rows 201-300, part taken, then the primary
    # is killed (agent and PostgreSQL); rows 301-350 on the new one.
    primary = await converge(cluster, timeout=60)
    await _synced(cluster, primary, consumer)
    conn = await _connect(cluster, primary)
    try:
        await _insert(conn, range(201, 301))
        await consumer.take(conn, limit=150)
    finally:
        await conn.close()
    old = primary
    cluster.kill_member(old)
    primary = await new_primary(cluster, old, timeout=30)
    cluster.start_member(old)
    conn = await _connect(cluster, primary)
    try:
        await _insert(conn, range(301, 351))
        committed = {int(r["v"]) for r in await conn.fetch(f"SELECT v FROM {TABLE}")}
    finally:
        await conn.close()
    await _drain(cluster, primary, consumer, len(committed))

    repeated = sorted({v for v in consumer.seen if consumer.seen.count(v) > 1})
    assert not repeated, f"rows sent twice past the confirmed position: {repeated[:10]}"
    assert set(consumer.seen) == committed, (
        f"missing {sorted(committed - set(consumer.seen))[:10]}, "
        f"not in the cluster {sorted(set(consumer.seen) - committed)[:10]}"
    )

    # 3. The killed primary comes back by pg_rewind (its crash recovery runs with the
    # server's own wal_level = logical, or it refuses to start over its logical slot and
    # the member is cloned anew), and drops its own copy of the slot although the leader
    # was there before it started: the next failover finds a synchronized copy on it too.
    primary = await converge(cluster, timeout=60)
    await _synced(cluster, primary, consumer)
    log = cluster.members[old].log_path.read_text()
    assert "rewinding to follow" in log
    assert "re-cloning" not in log, "the rewind of the killed primary failed"
