"""End to end, day-2 operations on one cluster of real etcd, PostgreSQL and agents: a
parameter changed with `pgwarden ctl edit-config` reaches every member by reload within two
loop waits; a bad parameter or pg_hba line is refused by name and changes nothing; a
restart-only parameter leaves every member pending restart until `pgwarden ctl restart
--pending`, which restarts them with writes never stopped longer than a switchover."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Iterator

import aiohttp
import asyncpg
import pytest

from agent import ctl
from agent.localcluster import LocalCluster
from agent.localproc import LocalMember
from tests.support.cluster import E2E_TIMING, converge, new_base, started, wait_until
from tests.support.pgversions import PgInstall
from tests.support.workload import AppWriter, ensure_table

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

LOOP_WAIT_S = E2E_TIMING["loop_wait_s"]


class Day2Cluster(LocalCluster):
    """The demo cluster without its local shared_buffers (it would outrank the DCS)."""

    def config_for(self, member: LocalMember) -> dict[str, object]:
        config = super().config_for(member)
        postgresql = config["postgresql"]
        assert isinstance(postgresql, dict)
        postgresql["parameters"] = {
            k: v for k, v in postgresql["parameters"].items() if k != "shared_buffers"
        }
        return config


@pytest.fixture(scope="module")
def cluster(pg_install: PgInstall) -> Iterator[LocalCluster]:
    running = Day2Cluster(
        base=new_base(), size=3, timing=dict(E2E_TIMING), cluster="day2", pg_bin=pg_install.bin_dir
    )
    with started(running):
        yield running


async def pgctl(cluster: LocalCluster, *argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    env = {
        "PGWARDEN_URL": ",".join(m.api_url for m in cluster.members),
        "PGWARDEN_TOKEN": cluster.token,
    }
    code = await ctl.run(argv, env=env, out=out, err=err)
    return code, out.getvalue() + err.getvalue()


async def show(port: int, name: str) -> str:
    conn = await asyncpg.connect(
        host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=3
    )
    try:
        return str(await conn.fetchval(f"SHOW {name}"))
    finally:
        await conn.close()


async def shown_everywhere(cluster: LocalCluster, name: str) -> set[str]:
    return {await show(m.pg_port, name) for m in cluster.members}


async def pending(cluster: LocalCluster, session: aiohttp.ClientSession) -> dict[str, list[str]]:
    view = await cluster.cluster_json(session)
    members = view.get("members") if view is not None else None
    assert isinstance(members, list)
    return {m["name"]: m["pending_restart"] for m in members}


async def test_a_reload_parameter_reaches_every_member_and_bad_input_changes_nothing(
    cluster: LocalCluster,
) -> None:
    await converge(cluster, timeout=60)
    assert await shown_everywhere(cluster, "log_min_duration_statement") == {"-1"}
    t0 = time.monotonic()
    code, out = await pgctl(
        cluster, "edit-config", "--set", "log_min_duration_statement=250ms", "--force"
    )
    assert code == 0, out

    async def everywhere() -> bool:
        return await shown_everywhere(cluster, "log_min_duration_statement") == {"250ms"}

    await wait_until(everywhere, timeout=10, interval=0.02, what="every member running it")
    took = time.monotonic() - t0
    assert took <= 2 * LOOP_WAIT_S, f"{took:.2f} s until every member ran it"

    async with aiohttp.ClientSession() as session:
        code, before = await pgctl(cluster, "show-config")
        hba = [(m.run_dir / "postgres" / "pg_hba.conf").read_text() for m in cluster.members]
        for body, named in (
            ({"parameters": {"shared_bufers": "1GB"}}, "shared_bufers: unknown parameter"),
            ({"parameters": {"work_mem": "lots"}}, "work_mem: expected an integer"),
            ({"parameters": {"max_connections": "0"}}, "max_connections: 0 is out of range"),
            ({"pg_hba": ["host all all 10.0.0.0/33 md5"]}, "pg_hba[0]: invalid CIDR mask"),
            ({"pg_hba": ["local all all reject"]}, "pg_hba[0]: would lock the agent out"),
        ):
            status, answer = await cluster.patch_config(session, {"postgresql": body})
            assert status == 400, answer
            assert named in str(answer["error"]), answer
        code, after = await pgctl(cluster, "show-config")
        assert (code, after) == (0, before)
        assert [
            (m.run_dir / "postgres" / "pg_hba.conf").read_text() for m in cluster.members
        ] == hba
        assert await shown_everywhere(cluster, "log_min_duration_statement") == {"250ms"}
        code, out = await pgctl(cluster, "reload")
        assert code == 0 and out.count("reload requested") == 3, out


async def test_a_restart_only_parameter_is_pending_until_a_pending_rolling_restart(
    cluster: LocalCluster,
) -> None:
    old = await converge(cluster, timeout=60)
    writer = AppWriter(hosts=[("127.0.0.1", m.pg_port) for m in cluster.members], start_value=1)
    async with aiohttp.ClientSession() as session:
        code, out = await pgctl(cluster, "edit-config", "--set", "shared_buffers=48MB", "--force")
        assert code == 0, out
        assert "Only a restart applies shared_buffers" in out

        async def all_pending() -> bool:
            return all("shared_buffers" in p for p in (await pending(cluster, session)).values())

        await wait_until(all_pending, timeout=10, what="every member pending restart")
        code, table = await pgctl(cluster, "list")
        assert table.count(" * ") == 3, table
        health = await cluster.health(session, old)
        assert health is not None and "shared_buffers" in health["pending_restart"]  # type: ignore[operator]
        async with session.get(cluster.members[old].api_url + "/metrics") as response:
            exposition = await response.text()
        assert "pgwarden_pending_restart 1.0" in exposition
        # The agent's event-loop lag watcher runs (agent/looplag.py, a sample every 2 s).
        lag_count = re.search(r"^pgwarden_event_loop_lag_seconds_count (\S+)$", exposition, re.M)
        assert lag_count is not None and float(lag_count.group(1)) >= 1, exposition

        await ensure_table("127.0.0.1", cluster.members[old].pg_port)
        writer.start()
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        code, out = await pgctl(cluster, "restart", "--pending", "--timeout", "120")
        assert code == 0, (out, await cluster.cluster_json(session))
        restarted_in = time.monotonic() - t0
        await asyncio.sleep(0.5)
        log = await writer.stop()
        gap = log.longest_gap(t0, time.monotonic())
        assert gap < 3.0, f"the rolling restart left {gap:.2f} s without writes"
        new = await converge(cluster, timeout=30)
        assert new != old, "the leader should have handed over, not restarted in place"
        assert await shown_everywhere(cluster, "shared_buffers") == {"48MB"}

        async def none_pending() -> bool:
            return all(p == [] for p in (await pending(cluster, session)).values())

        await wait_until(none_pending, timeout=10, what="nobody pending restart")
        print(f"rolling restart: {restarted_in:.2f} s, longest write gap {gap:.3f} s")


async def postmaster_started(port: int) -> str | None:
    try:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=3
        )
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        return str(await conn.fetchval("SELECT pg_postmaster_start_time()"))
    finally:
        await conn.close()


async def test_post_restart_on_the_leader_restarts_it_in_place_and_keeps_the_lease(
    cluster: LocalCluster,
) -> None:
    # The real RestartPrimary path (checkpoint, fast stop, start as primary) while the loop
    # renews the lease: the same leader afterwards, on a new postmaster, no failover.
    leader = await converge(cluster, timeout=60)
    port = cluster.members[leader].pg_port
    before = await postmaster_started(port)
    assert before is not None
    async with aiohttp.ClientSession() as session:
        status, body = await cluster.post(session, leader, "/restart", {})
        assert status == 202, body

        async def restarted() -> bool:
            return await postmaster_started(port) not in (None, before)

        await wait_until(restarted, timeout=30, what="the leader's PostgreSQL restarted")
        assert await converge(cluster, timeout=30) == leader
