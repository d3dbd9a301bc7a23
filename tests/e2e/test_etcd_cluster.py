"""End to end: real etcd, three real PostgreSQL instances, three agent processes.

The scenarios share one cluster, with short timings (ttl 6 s), but not its state: each starts
with `converge`, which revives what an earlier scenario that failed half-way left stopped or
frozen and waits for one primary, streaming replicas and no pending switchover; a failing
scenario does not fail the ones after it. Writers record every acknowledged insert per
member, so the tests can check that at no instant two members accepted writes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import aiohttp
import pytest

from agent.localcluster import LocalCluster
from tests.support.cluster import (
    converge,
    local_cluster,
    member_writers,
    new_primary,
    query_values,
    stop_writers,
    wait_until,
)
from tests.support.pgversions import PgInstall
from tests.support.workload import (
    AppWriter,
    ensure_table,
    has_split_brain,
    writer_sequence,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TTL = 6.0


@pytest.fixture(scope="module")
def cluster(pg_install: PgInstall) -> Iterator[LocalCluster]:
    """One cluster for the module, with the writers' table, so that each test can also run
    alone (they used to rely on the bootstrap test creating it)."""
    with local_cluster(pg=pg_install) as running:
        primary = asyncio.run(converge(running, timeout=60))
        asyncio.run(ensure_table("127.0.0.1", running.members[primary].pg_port))
        yield running


async def test_bootstrap_elects_one_primary_and_two_streaming_replicas(
    cluster: LocalCluster,
) -> None:
    primary = await converge(cluster, timeout=60)
    port = cluster.members[primary].pg_port
    await ensure_table("127.0.0.1", port)
    writer = AppWriter(hosts=[("127.0.0.1", m.pg_port) for m in cluster.members])
    writer.start()
    await asyncio.sleep(0.5)
    log = await writer.stop()
    assert log.acks, "no write was acknowledged"
    wanted = log.acked_values()

    async def replicas_have_rows() -> bool:
        for index, member in enumerate(cluster.members):
            if index != primary and not wanted <= await query_values(member.pg_port):
                return False
        return True

    await wait_until(replicas_have_rows, timeout=10, what="rows on both replicas")


async def test_rest_switchover_hands_over_with_a_short_write_gap(cluster: LocalCluster) -> None:
    old = await converge(cluster)
    candidate = (old + 1) % 3
    app = AppWriter(hosts=[("127.0.0.1", m.pg_port) for m in cluster.members], start_value=10_000)
    app.start()
    await asyncio.sleep(0.5)
    async with aiohttp.ClientSession() as session:
        t0 = time.monotonic()
        status, body = await cluster.post(
            session, old, "/switchover", {"candidate": cluster.members[candidate].name}
        )
        assert status == 202, body
    new = await new_primary(cluster, old, timeout=15)
    assert new == candidate
    await asyncio.sleep(1.0)
    log = await app.stop()
    gap = log.longest_gap(t0, time.monotonic())
    assert gap < 3.0, f"switchover left {gap:.2f}s without writes"
    await converge(cluster)


async def test_sigterm_on_the_primary_agent_hands_over_then_it_rejoins(
    cluster: LocalCluster,
) -> None:
    old = await converge(cluster)
    app = AppWriter(hosts=[("127.0.0.1", m.pg_port) for m in cluster.members], start_value=20_000)
    app.start()
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    cluster.signal_agent(old, signal.SIGTERM)
    await new_primary(cluster, old, timeout=15)
    process = cluster.members[old].process
    assert process is not None
    await asyncio.to_thread(process.wait, 20)
    await asyncio.sleep(0.5)
    log = await app.stop()
    gap = log.longest_gap(t0, time.monotonic())
    assert gap < 3.0, f"SIGTERM hand-over left {gap:.2f}s without writes (ttl is {TTL}s)"
    cluster.start_member(old)
    await converge(cluster)


async def test_postgres_crash_under_the_leader_is_restarted_in_place(
    cluster: LocalCluster,
) -> None:
    primary = await converge(cluster)
    old_pid = cluster.members[primary].postmaster_pid()
    cluster.kill_postgres(primary)

    async def restarted() -> bool:
        pid = cluster.members[primary].postmaster_pid()
        async with aiohttp.ClientSession() as session:
            return pid not in (None, old_pid) and await cluster.primary_index(session) == primary

    await wait_until(restarted, timeout=15, what="PostgreSQL restarted in place as primary")
    await converge(cluster)


async def test_hard_kill_of_the_primary_fails_over_and_it_rejoins_with_no_divergent_rows(
    cluster: LocalCluster,
) -> None:
    old = await converge(cluster)
    writers = member_writers(cluster, 100_000)
    for w in writers.values():
        w.start()
    await asyncio.sleep(0.5)
    t_kill = time.monotonic()
    cluster.kill_member(old)
    new = await new_primary(cluster, old, timeout=TTL + 10)
    assert time.monotonic() - t_kill < TTL + 5
    await asyncio.sleep(0.5)
    logs = await stop_writers(writers)
    sequence = writer_sequence(logs, start=t_kill - 1, end=time.monotonic())
    assert not has_split_brain(sequence), sequence
    cluster.start_member(old)
    await converge(cluster)
    # The old primary was rewound: it holds exactly the new primary's rows.
    await asyncio.sleep(1.0)
    assert await query_values(cluster.members[old].pg_port) == await query_values(
        cluster.members[new].pg_port
    )


@pytest.mark.parametrize("how", ["SIGSTOP", "SIGKILL"])
async def test_primary_agent_frozen_or_killed_fences_postgres_before_the_lease_expires(
    cluster: LocalCluster, how: str
) -> None:
    old = await converge(cluster)
    old_name = cluster.members[old].name
    writers = member_writers(cluster, 200_000 if how == "SIGSTOP" else 300_000)
    for w in writers.values():
        w.start()
    await asyncio.sleep(0.5)
    t_fault = time.monotonic()
    cluster.signal_agent(old, getattr(signal, how))
    try:
        new = await new_primary(cluster, old, timeout=TTL + 10)
        await asyncio.sleep(1.0)
        logs = await stop_writers(writers)
    finally:
        if how == "SIGSTOP":
            cluster.signal_agent(old, signal.SIGCONT)
    old_acks = [a.at for a in logs[old_name].acks if a.at >= t_fault]
    new_acks = [a.at for a in logs[cluster.members[new].name].acks if a.at >= t_fault]
    assert new_acks, "the new primary acknowledged nothing"
    last_old = max(old_acks, default=t_fault)
    assert last_old < min(new_acks), "two members accepted writes at once"
    assert last_old - t_fault < TTL, f"old primary wrote {last_old - t_fault:.2f}s after the fault"
    sequence = writer_sequence(logs, start=t_fault - 1, end=time.monotonic())
    assert not has_split_brain(sequence), sequence
    if how == "SIGKILL":
        process = cluster.members[old].process
        assert process is not None
        process.wait()
        cluster.start_member(old)
    await converge(cluster)


async def test_etcd_unreachable_longer_than_the_ttl_demotes_the_primary_in_time(
    cluster: LocalCluster,
) -> None:
    primary = await converge(cluster)
    name = cluster.members[primary].name
    writers = member_writers(cluster, 400_000)
    for w in writers.values():
        w.start()
    await asyncio.sleep(0.5)
    assert cluster.etcd is not None
    t_stop = time.monotonic()
    os.kill(cluster.etcd.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(TTL + 2)
    finally:
        os.kill(cluster.etcd.pid, signal.SIGCONT)
    logs = await stop_writers(writers)
    last = max((a.at for a in logs[name].acks if a.at >= t_stop), default=t_stop)
    assert last - t_stop < TTL, f"primary kept writing {last - t_stop:.2f}s without the DCS"
    others = [a for n, log in logs.items() if n != name for a in log.acks if a.at >= t_stop]
    assert not others, "a replica accepted writes while the DCS was down"
    await converge(cluster, timeout=60)


async def test_bad_api_requests_get_4xx_and_change_nothing(cluster: LocalCluster) -> None:
    primary = await converge(cluster)
    async with aiohttp.ClientSession() as session:
        before = await cluster.cluster_json(session)
        url = cluster.members[primary].api_url
        auth = {"Authorization": f"Bearer {cluster.token}"}
        cases = [
            ("/switchover", {"candidate": "nobody"}, auth),
            ("/switchover", {"candidate": cluster.members[primary].name}, auth),
            ("/switchover", {"candidat": "x"}, auth),
            ("/failover", {}, auth),
            ("/switchover", {}, {}),
            ("/switchover", {}, {"Authorization": "Bearer wrong"}),
        ]
        for path, body, headers in cases:
            async with session.post(url + path, json=body, headers=headers) as resp:
                assert 400 <= resp.status < 500, (path, body, resp.status)
                assert "error" in await resp.json()
        async with session.post(url + "/switchover", data=b"{not json", headers=auth) as resp:
            assert resp.status == 400
        after = await cluster.cluster_json(session)
    assert before is not None and after is not None
    assert after["leader"] == before["leader"]
    assert after["switchover"] is None
