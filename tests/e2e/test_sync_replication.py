"""End to end, synchronous replication: real etcd, three real PostgreSQL, three agents.

One cluster, started with `ha.synchronous_mode: on` (so the bootstrapping leader seeds the
DCS config record), then switched with PATCH /config. An application writer (libpq
multi-host, read-write) records every acknowledged commit; after each SIGKILL of the primary
(agent and PostgreSQL) every acknowledged commit must be on the new primary in `on` and
`quorum` modes. In `off` mode commits may be lost, but only the tail that had not reached the
standby yet: every commit acknowledged longer than `ASYNC_TAIL_S` before the kill must be there.

The tests share the cluster but not its state: each one first sets the whole synchronous
configuration it needs and waits for a converged cluster with that configuration in force (a
stopped or frozen member is revived), so a failing test does not fail the ones after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import asyncpg
import pytest

from agent.localcluster import LocalCluster
from tests.support.cluster import (
    converge,
    converged,
    local_cluster,
    query_values,
    revive,
    wait_until,
)
from tests.support.pgversions import PgInstall
from tests.support.workload import AppWriter, WriterLog, ensure_table

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TTL = 6.0
# Asynchronous replication on loopback shows a commit on the standby 14-18 ms after it is
# acknowledged (docs/facts.md, "PostgreSQL 15"); a second is sixty times that and still a small
# tail.
ASYNC_TAIL_S = 1.0


@dataclass(frozen=True, slots=True)
class Started:
    cluster: LocalCluster
    seeded_mode: object  # the config record's synchronous_mode once the cluster first formed


async def _seeded_mode(cluster: LocalCluster) -> object:
    await converge(cluster, timeout=60)
    return (await _cluster_json(cluster)).get("synchronous_mode")


@pytest.fixture(scope="module")
def started(pg_install: PgInstall) -> Iterator[Started]:
    with local_cluster(extra={"ha": {"synchronous_mode": "on"}}, pg=pg_install) as running:
        # Read before any test changes it, whichever test runs first.
        yield Started(cluster=running, seeded_mode=asyncio.run(_seeded_mode(running)))


@pytest.fixture
def cluster(started: Started) -> LocalCluster:
    return started.cluster


async def _cluster_json(cluster: LocalCluster) -> dict[str, object]:
    async with aiohttp.ClientSession() as session:
        return await cluster.cluster_json(session) or {}


async def _sync_settled(cluster: LocalCluster, members: int) -> int:
    """Wait until the cluster converged and the `sync` record of the current leader names
    `members` standbys that the leader's PostgreSQL reports as synchronous; the leader's index."""
    revive(cluster)
    found: list[int] = []

    async def ready() -> bool:
        async with aiohttp.ClientSession() as session:
            if not await converged(cluster, session):
                return False
            view = await cluster.cluster_json(session)
            index = await cluster.primary_index(session)
        if view is None or index is None:
            return False
        sync = view.get("sync")
        if not isinstance(sync, dict) or sync.get("leader") != view.get("leader"):
            return False
        rows = view.get("members")
        if not isinstance(rows, list):
            return False
        roles = [m.get("sync_role") for m in rows if isinstance(m, dict)]
        listed = sync.get("members")
        if not isinstance(listed, list) or len(listed) != members:
            return False
        if sum(1 for r in roles if r in ("sync", "quorum")) != members:
            return False
        found[:] = [index]
        return True

    await wait_until(ready, timeout=60, what=f"a settled synchronous set of {members}")
    return found[0]


async def _configure(
    cluster: LocalCluster, mode: str, *, members: int, node_count: int = 1, strict: bool = False
) -> int:
    """Whatever an earlier test left: every member running, the whole synchronous
    configuration set, and a settled synchronous set of `members`; the leader's index."""
    revive(cluster)
    await _patch_config(
        cluster,
        {
            "synchronous_mode": mode,
            "synchronous_node_count": node_count,
            "synchronous_mode_strict": strict,
        },
    )
    return await _sync_settled(cluster, members)


async def _patch_config(cluster: LocalCluster, body: dict[str, object]) -> None:
    """PATCH /config on the current primary (any member would do; this one is up)."""
    index = await _sync_settled_any(cluster)
    async with (
        aiohttp.ClientSession() as session,
        session.patch(
            cluster.members[index].api_url + "/config",
            json=body,
            headers={"Authorization": f"Bearer {cluster.token}"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


async def _sync_settled_any(cluster: LocalCluster) -> int:
    found: list[int] = []

    async def ready() -> bool:
        async with aiohttp.ClientSession() as session:
            index = await cluster.primary_index(session)
        found[:] = [] if index is None else [index]
        return index is not None

    await wait_until(ready, timeout=60, what="a primary")
    return found[0]


async def _new_primary(cluster: LocalCluster, old: int) -> int:
    found: list[int] = []

    async def other() -> bool:
        async with aiohttp.ClientSession() as session:
            index = await cluster.primary_index(session)
        if index is not None and index != old:
            found[:] = [index]
            return True
        return False

    await wait_until(other, timeout=TTL + 20, what="a new primary")
    return found[0]


@dataclass(frozen=True, slots=True)
class Round:
    """One SIGKILL of the primary: the acknowledged commits the new primary lacks, each as
    the seconds between its acknowledgement and the kill (negative: acknowledged just after
    the signal was sent, before the old primary died)."""

    lost_ages_s: tuple[float, ...]

    @property
    def lost(self) -> int:
        return len(self.lost_ages_s)


def _round(log: WriterLog, present: set[int], killed_at: float) -> Round:
    ages = sorted(killed_at - a.at for a in log.acks if a.value not in present)
    return Round(lost_ages_s=tuple(ages))


async def _kill_rounds(cluster: LocalCluster, rounds: int, members: int) -> list[Round]:
    """SIGKILL the primary `rounds` times under a continuous writer; per round, what the new
    primary lacks of the acknowledged commits."""
    lost: list[Round] = []
    primary = await _sync_settled(cluster, members)
    hosts = [("127.0.0.1", m.pg_port) for m in cluster.members]
    await ensure_table("127.0.0.1", cluster.members[primary].pg_port)
    writer = AppWriter(hosts=hosts, interval_s=0.01, start_value=int(time.time() * 1000) * 1000)
    writer.start()
    try:
        for _ in range(rounds):
            primary = await _sync_settled(cluster, members)
            await asyncio.sleep(1.0)  # commits in flight when the primary dies
            acked_before = len(writer.log.acks)
            killed_at = time.monotonic()
            cluster.kill_member(primary)
            new = await _new_primary(cluster, primary)
            await asyncio.sleep(0.5)
            # The acknowledgements are read first: a commit acknowledged by the new primary
            # after the query is no loss.
            log = WriterLog(acks=list(writer.log.acks))
            present = await query_values(cluster.members[new].pg_port)
            lost.append(_round(log, present, killed_at))
            assert len(writer.log.acks) > acked_before  # the writer did write
            cluster.start_member(primary)
    finally:
        await writer.stop()
    return lost


def test_the_bootstrapping_member_seeds_synchronous_mode_from_its_yaml(started: Started) -> None:
    assert started.seeded_mode == "on"


async def test_on_mode_loses_no_acknowledged_commit_over_repeated_primary_kills(
    cluster: LocalCluster,
) -> None:
    await _configure(cluster, "on", members=1)
    lost = [r.lost for r in await _kill_rounds(cluster, rounds=3, members=1)]
    print(f"synchronous_mode=on: acknowledged commits lost per kill: {lost}")
    assert lost == [0, 0, 0]


async def test_quorum_mode_loses_no_acknowledged_commit_over_repeated_primary_kills(
    cluster: LocalCluster,
) -> None:
    await _configure(cluster, "quorum", members=2)
    lost = [r.lost for r in await _kill_rounds(cluster, rounds=3, members=2)]
    print(f"synchronous_mode=quorum: acknowledged commits lost per kill: {lost}")
    assert lost == [0, 0, 0]


async def test_quorum_candidate_waits_until_it_sees_enough_of_the_set(
    cluster: LocalCluster,
) -> None:
    """ANY 1 of 2: with the primary and one standby killed together, the survivor sees 1 of
    the 2 it needs (N - k + 1) and does not promote; when the other comes back, the most
    advanced of them does, with every acknowledged commit. The restarted standby may hold
    WAL in pg_wal it has not replayed yet: its reported position must cover it (the probe's
    scan of the local WAL), or the survivor could promote without a commit only it had."""
    primary = await _configure(cluster, "quorum", members=2)
    await ensure_table("127.0.0.1", cluster.members[primary].pg_port)
    standby = next(i for i in range(len(cluster.members)) if i != primary)
    hosts = [("127.0.0.1", m.pg_port) for m in cluster.members]
    writer = AppWriter(hosts=hosts, interval_s=0.01, start_value=int(time.time() * 1000) * 1000)
    writer.start()
    try:
        await asyncio.sleep(1.0)
        cluster.kill_member(standby)
        cluster.kill_member(primary)
        deadline = time.monotonic() + TTL + 4
        while time.monotonic() < deadline:
            async with aiohttp.ClientSession() as session:
                assert await cluster.primary_index(session) is None, "promoted without a quorum"
            await asyncio.sleep(0.5)
        cluster.start_member(standby)
        new = await _new_primary(cluster, primary)
        await asyncio.sleep(0.5)
        # The snapshot of acknowledgements comes first: the writer goes on writing to the new
        # primary, and a commit acknowledged after the query is no loss.
        acked = writer.log.acked_values()
        present = await query_values(cluster.members[new].pg_port)
        assert acked <= present
    finally:
        await writer.stop()
        for index in (standby, primary):
            process = cluster.members[index].process
            if process is not None and process.poll() is not None:
                cluster.start_member(index)


async def test_off_mode_loses_at_most_the_commits_of_the_last_moment_before_a_primary_kill(
    cluster: LocalCluster,
) -> None:
    await _configure(cluster, "off", members=0)
    (kill,) = await _kill_rounds(cluster, rounds=1, members=0)
    oldest = max(kill.lost_ages_s, default=0.0)
    print(
        f"synchronous_mode=off: {kill.lost} acknowledged commits lost by the kill, the oldest "
        f"acknowledged {oldest * 1000:.0f} ms before it"
    )
    assert oldest < ASYNC_TAIL_S, f"lost a commit acknowledged {oldest:.2f} s before the kill"


async def _try_write(port: int, timeout_s: float) -> bool:
    """Whether one commit is acknowledged within `timeout_s`. (A statement_timeout would not
    do: PostgreSQL cancels the wait for the standby with a warning and reports success.)"""
    conn = await asyncpg.connect(
        host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=3
    )
    try:
        async with asyncio.timeout(timeout_s):
            await conn.execute("CREATE TABLE IF NOT EXISTS sync_probe (at timestamptz)")
            await conn.execute("INSERT INTO sync_probe VALUES (now())")
        return True
    except TimeoutError:
        return False
    finally:
        conn.terminate()


async def test_strict_mode_blocks_commits_without_replicas_and_non_strict_degrades_and_recovers(
    cluster: LocalCluster,
) -> None:
    primary = await _configure(cluster, "on", members=1, strict=True)
    port = cluster.members[primary].pg_port
    await _try_write(port, 5.0)  # the table exists before the replicas go
    replicas = [i for i in range(len(cluster.members)) if i != primary]
    for index in replicas:
        cluster.kill_member(index)
    await asyncio.sleep(TTL + 2)  # their member records expire; the leader re-plans
    assert not await _try_write(port, 1.5), "strict mode accepted an unreplicated commit"

    await _patch_config(cluster, {"synchronous_mode_strict": False})

    async def degraded() -> bool:
        sync = (await _cluster_json(cluster)).get("sync")
        return isinstance(sync, dict) and sync.get("members") == []

    await wait_until(degraded, timeout=20, what="the recorded fallback to asynchronous")
    assert await _try_write(port, 1.5)
    for index in replicas:
        cluster.start_member(index)
    assert await _sync_settled(cluster, 1) == primary


async def test_a_synchronous_standby_whose_stream_goes_silent_stalls_commits_about_one_ttl(
    cluster: LocalCluster,
) -> None:
    """The synchronous standby's WAL receiver stops (SIGSTOP: no FIN, no RST, as behind a
    silent partition of the replication link) while its agent and PostgreSQL still answer.
    The primary's walsender stays 'streaming' until wal_sender_timeout, which the agent sets
    to one ttl (PostgreSQL's default: 60 s); then the leader moves the synchronous role to the
    other standby and commits resume."""
    primary = await _configure(cluster, "on", members=1)
    sync = (await _cluster_json(cluster)).get("sync")
    assert isinstance(sync, dict)
    names = sync.get("members")
    assert isinstance(names, list) and len(names) == 1
    standby = next(m for m in cluster.members if m.name == names[0])
    conn = await asyncpg.connect(
        host="127.0.0.1", port=standby.pg_port, user="postgres", database="postgres", timeout=3
    )
    try:
        receiver = await conn.fetchval("SELECT pid FROM pg_stat_wal_receiver")
    finally:
        conn.terminate()
    assert isinstance(receiver, int)
    await ensure_table("127.0.0.1", cluster.members[primary].pg_port)
    hosts = [("127.0.0.1", m.pg_port) for m in cluster.members]
    writer = AppWriter(hosts=hosts, interval_s=0.01, start_value=int(time.time() * 1000) * 1000)
    writer.start()
    try:
        await asyncio.sleep(1.0)
        os.kill(receiver, signal.SIGSTOP)
        stopped_at = time.monotonic()
        await asyncio.sleep(TTL + 8)
        stall = writer.log.longest_gap(stopped_at, time.monotonic())
        print(f"silent synchronous standby (ttl {TTL:g} s): commits stalled {stall:.1f} s")
        assert stall < TTL + 4, f"commits stalled {stall:.1f} s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(receiver, signal.SIGCONT)
        await writer.stop()
    await _sync_settled(cluster, 1)
