"""End to end, failsafe mode: three real PostgreSQL instances and three agents with
`ha.failsafe_mode: true` (seeded into the DCS config at bootstrap) and the short e2e timings,
once on real etcd and once on the Kubernetes backend (the in-tree test API server).

With the DCS frozen (SIGSTOP) for twice the ttl, the primary keeps acknowledging writes
(every member confirms it over REST) and nobody else does; with the DCS frozen and one
member's agent dead, the primary cannot be confirmed by all and stops within the same bound
as without failsafe.

The tests share each cluster but not its state: each first waits for a converged cluster with
failsafe mode on and the record written (turning it back on if an earlier test left it off),
so a failing test does not fail the ones after it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from agent.demo import _handle_key
from agent.localcluster import LocalCluster
from tests.support.cluster import (
    converge,
    local_cluster,
    member_writers,
    stop_writers,
    wait_until,
)
from tests.support.pgversions import PgInstall
from tests.support.workload import ensure_table

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TTL = 6.0


@dataclass(frozen=True, slots=True)
class Started:
    cluster: LocalCluster
    seeded_failsafe: object  # the config record's failsafe_mode once the cluster first formed


async def _seeded_failsafe(cluster: LocalCluster) -> object:
    await converge(cluster, timeout=60)
    async with aiohttp.ClientSession() as session:
        view = await cluster.cluster_json(session)
    return None if view is None else view.get("failsafe_mode")


@pytest.fixture(scope="module", params=["etcd", "kubernetes"])
def started(request: pytest.FixtureRequest, pg_install: PgInstall) -> Iterator[Started]:
    with local_cluster(
        cluster="fs",
        dcs_kind=request.param,
        extra={"ha": {"failsafe_mode": True}},
        pg=pg_install,
    ) as running:
        # Read before any test changes it, whichever test runs first.
        yield Started(cluster=running, seeded_failsafe=asyncio.run(_seeded_failsafe(running)))


@pytest.fixture
def cluster(started: Started) -> LocalCluster:
    return started.cluster


async def _failsafe_ready(cluster: LocalCluster) -> int:
    """Converged (see `converge`), failsafe mode on, and the leader's record naming every
    other member; the leader's index."""
    primary = await converge(cluster)
    async with aiohttp.ClientSession() as session:
        view = await cluster.cluster_json(session)
        if view is None or view.get("failsafe_mode") is not True:
            status, body = await cluster.patch_config(session, {"failsafe_mode": True})
            assert status == 200, body
    others = sorted(m.name for i, m in enumerate(cluster.members) if i != primary)

    async def recorded() -> bool:
        return await _failsafe_record(cluster, primary) == others

    await wait_until(recorded, timeout=15, what="the failsafe record naming the replicas")
    return primary


def _dcs_pid(cluster: LocalCluster) -> int:
    """The process to freeze for a DCS outage: etcd, or the Kubernetes API server."""
    proc = cluster.etcd if cluster.dcs_kind == "etcd" else cluster.apiserver
    assert proc is not None
    return proc.pid


async def _failsafe_record(cluster: LocalCluster, primary: int) -> list[str]:
    """The members named by the DCS `failsafe` record, read through the primary's API."""
    async with aiohttp.ClientSession() as session:
        body = await cluster.cluster_json(session)
    assert body is not None
    record = body.get("failsafe")
    if not isinstance(record, dict):
        return []
    return sorted(record.get("members") or [])


async def _metric(cluster: LocalCluster, index: int, name: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(cluster.members[index].api_url + "/metrics") as resp,
    ):
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_the_bootstrapping_member_seeds_failsafe_mode_from_its_yaml(started: Started) -> None:
    assert started.seeded_failsafe is True


async def test_the_leader_names_every_other_member_in_the_failsafe_record(
    cluster: LocalCluster,
) -> None:
    await _failsafe_ready(cluster)  # waits for the record


async def test_the_demo_key_turns_failsafe_off_which_deletes_the_record_and_on_again(
    cluster: LocalCluster,
) -> None:
    primary = await _failsafe_ready(cluster)
    others = sorted(m.name for i, m in enumerate(cluster.members) if i != primary)
    async with aiohttp.ClientSession() as session:
        assert (await _handle_key(cluster, session, "f")).startswith("failsafe_mode off: HTTP 200")

        async def deleted() -> bool:
            return await _failsafe_record(cluster, primary) == []

        await wait_until(deleted, timeout=15, what="the failsafe record deleted")
        assert (await _handle_key(cluster, session, "f")).startswith("failsafe_mode on: HTTP 200")

        async def recorded() -> bool:
            return await _failsafe_record(cluster, primary) == others

        await wait_until(recorded, timeout=15, what="the failsafe record written again")


async def test_with_the_dcs_down_the_confirmed_primary_keeps_writing_and_nobody_else_does(
    cluster: LocalCluster,
) -> None:
    primary = await _failsafe_ready(cluster)
    await ensure_table("127.0.0.1", cluster.members[primary].pg_port)
    name = cluster.members[primary].name
    pid = cluster.members[primary].postmaster_pid()
    rounds_before = await _metric(cluster, primary, 'pgwarden_failsafe_rounds_total{result="co')
    writers = member_writers(cluster, 500_000)
    for w in writers.values():
        w.start()
    await asyncio.sleep(0.5)
    t_stop = time.monotonic()
    assert cluster.toggle_dcs_frozen()  # as the demo's [d] key does
    try:
        await asyncio.sleep(2 * TTL + 2)
        async with aiohttp.ClientSession() as session:
            health = await cluster.health(session, primary)
            still_primary = await cluster.primary_index(session)
    finally:
        if cluster.dcs_frozen:
            cluster.toggle_dcs_frozen()
    t_cont = time.monotonic()
    logs = await stop_writers(writers)
    gap = logs[name].longest_gap(t_stop, t_cont)
    assert gap < 1.5, f"the primary stopped acknowledging for {gap:.2f}s during the outage"
    others = [a for n, log in logs.items() if n != name for a in log.acks if a.at >= t_stop]
    assert not others, "another member acknowledged writes during the outage"
    assert health is not None and health.get("failsafe_active") is True, health
    assert still_primary == primary, "the /primary probe stopped routing to the primary"
    assert cluster.members[primary].postmaster_pid() == pid, "PostgreSQL was restarted"
    rounds = await _metric(cluster, primary, 'pgwarden_failsafe_rounds_total{result="co')
    assert rounds > rounds_before
    # The DCS is back: the same member takes its lease back; nobody failed over.
    assert await converge(cluster, timeout=30) == primary


async def test_with_the_dcs_down_and_a_member_unreachable_the_primary_stops_in_time(
    cluster: LocalCluster,
) -> None:
    primary = await _failsafe_ready(cluster)
    await ensure_table("127.0.0.1", cluster.members[primary].pg_port)
    name = cluster.members[primary].name
    victim = (primary + 1) % len(cluster.members)
    writers = member_writers(cluster, 600_000)
    for w in writers.values():
        w.start()
    await asyncio.sleep(0.5)
    cluster.signal_agent(victim, signal.SIGKILL)
    t_stop = time.monotonic()
    os.kill(_dcs_pid(cluster), signal.SIGSTOP)
    try:
        await asyncio.sleep(TTL + 2)
    finally:
        os.kill(_dcs_pid(cluster), signal.SIGCONT)
    logs = await stop_writers(writers)
    last = max((a.at for a in logs[name].acks if a.at >= t_stop), default=t_stop)
    assert last - t_stop < TTL, f"primary kept writing {last - t_stop:.2f}s unconfirmed"
    others = [a for n, log in logs.items() if n != name for a in log.acks if a.at >= t_stop]
    assert not others, "a replica accepted writes while the DCS was down"
    await converge(cluster, timeout=60)
