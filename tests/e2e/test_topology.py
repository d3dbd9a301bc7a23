"""End to end, topology tags: real etcd, three real PostgreSQL, three agents.

pg-0 bootstraps alone; pg-1 (`clonefrom`, `noloadbalance`) clones from it; pg-2
(`replicatefrom: pg-1`) clones from pg-1 and streams from it (PostgreSQL's own
pg_stat_replication says so, and the leader keeps no slot for it). `pgwarden ctl topology`
draws that tree. pg-1 is SIGKILLed with its PostgreSQL: pg-2 streams from the leader within
about a ttl and receives what is written meanwhile; pg-1 comes back and pg-2 cascades from
it again.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import aiohttp
import asyncpg
import pytest

from agent.ctl import run as ctl_run
from agent.localcluster import LocalCluster
from agent.postgres.replication import slot_name_for
from tests.support.cluster import (
    E2E_TIMING,
    converge,
    new_base,
    start_first_member,
    started,
    wait_until,
)
from tests.support.pgversions import PgInstall

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TTL = E2E_TIMING["ttl_s"]


@pytest.fixture(scope="module")
def cluster(pg_install: PgInstall) -> Iterator[LocalCluster]:
    running = LocalCluster(
        base=new_base(), size=3, timing=dict(E2E_TIMING), pg_bin=pg_install.bin_dir
    )
    running.member_extra["pg-1"] = {"tags": {"clonefrom": True, "noloadbalance": True}}
    running.member_extra["pg-2"] = {"tags": {"replicatefrom": "pg-1"}}
    with started(running, start_first_member):
        yield running


async def _fetch(port: int, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(
        host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=3
    )
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def _downstream(cluster: LocalCluster, index: int) -> set[str]:
    """The members streaming from member `index`, as its pg_stat_replication says."""
    try:
        rows = await _fetch(
            cluster.members[index].pg_port,
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'",
        )
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return set()
    return {str(r["application_name"]) for r in rows}


async def _probe(
    session: aiohttp.ClientSession, cluster: LocalCluster, index: int, path: str
) -> int:
    async with session.get(cluster.members[index].api_url + path) as resp:
        return resp.status


async def _log_reasons(cluster: LocalCluster, index: int) -> list[str]:
    reasons = []
    for line in cluster.members[index].log_path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "ha_cycle":
            reasons.append(str(event.get("reason")))
    return reasons


async def test_a_cascading_replica_streams_from_its_upstream_and_falls_back_when_it_dies(
    cluster: LocalCluster,
) -> None:
    async with aiohttp.ClientSession() as session:

        async def pg0_leads() -> bool:
            return await cluster.primary_index(session) == 0

        await wait_until(pg0_leads, timeout=60, what="pg-0 bootstrapped")
        cluster.start_member(1)

        async def pg1_streams() -> bool:
            return "pg-1" in await _downstream(cluster, 0)

        await wait_until(pg1_streams, timeout=60, what="pg-1 streaming")
        cluster.start_member(2)
        assert await converge(cluster, timeout=60) == 0

        async def cascading() -> bool:
            return await _downstream(cluster, 1) == {"pg-2"} and await _downstream(cluster, 0) == {
                "pg-1"
            }

        await wait_until(cascading, timeout=30, what="pg-2 streaming from pg-1")
        assert "no data: cloning from pg-1" in await _log_reasons(cluster, 2)
        slots = await _fetch(
            cluster.members[0].pg_port, "SELECT slot_name FROM pg_replication_slots"
        )
        names = {str(r["slot_name"]) for r in slots}
        assert slot_name_for("pg-1") in names
        assert slot_name_for("pg-2") not in names  # no slot for a cascading member

        # noloadbalance: pg-1 serves no reads through the probes; pg-2 does.
        assert await _probe(session, cluster, 1, "/replica") == 503
        assert await _probe(session, cluster, 1, "/read-only") == 503
        assert await _probe(session, cluster, 1, "/health") == 200
        assert await _probe(session, cluster, 2, "/replica") == 200

        out, err = io.StringIO(), io.StringIO()
        code = await ctl_run(
            ["--url", cluster.members[0].api_url, "topology"], env={}, out=out, err=err
        )
        assert code == 0, err.getvalue()
        lines = out.getvalue().splitlines()
        assert lines[1].startswith("+ pg-0 [leader] (primary, running")
        assert lines[2].startswith("  + pg-1 (replica, streaming")
        assert "noloadbalance" in lines[2] and "clonefrom" in lines[2]
        assert lines[3].startswith("    + pg-2 (replica, streaming")

        # pg-1 dies: pg-2 falls back to the leader and gets what is written meanwhile.
        t0 = time.monotonic()
        cluster.kill_member(1)
        primary = cluster.members[0].pg_port
        await _fetch(primary, "CREATE TABLE IF NOT EXISTS topo (v int)")
        await _fetch(primary, "INSERT INTO topo VALUES (1)")

        async def fell_back() -> bool:
            return "pg-2" in await _downstream(cluster, 0)

        await wait_until(fell_back, timeout=3 * TTL, what="pg-2 streaming from pg-0")
        took = time.monotonic() - t0
        print(f"cascading replica back on the leader {took:.2f} s after its upstream died")
        assert took < TTL + 3 * E2E_TIMING["loop_wait_s"] + 2.0

        async def has_row() -> bool:
            try:
                rows = await _fetch(cluster.members[2].pg_port, "SELECT v FROM topo")
            except asyncpg.PostgresError:
                return False
            return [r["v"] for r in rows] == [1]

        await wait_until(has_row, timeout=10, what="the row on pg-2")

        # pg-1 comes back: pg-2 cascades from it again.
        cluster.start_member(1)
        await wait_until(cascading, timeout=60, what="pg-2 streaming from pg-1 again")
