"""Day-2 benchmark: PostgreSQL settings from the DCS and the `--pending` rolling restart, on a
real 3-member cluster (etcd, PostgreSQL, agents with the default timings).

Per run:
- the time from `pgwarden ctl edit-config --set <a reload parameter>` (the command's return)
  until every member's PostgreSQL runs the new value (SHOW, polled every 10 ms);
- a restart-only parameter (shared_buffers) set the same way, then, once every member is
  pending restart, `pgwarden ctl restart --pending` under a client inserting every 50 ms
  through libpq multi-host (target_session_attrs=read-write): the longest time without an
  acknowledged write, and how long the whole rolling restart took;
- for reference in the same run, the write gap of a plain REST switchover.

    .venv/bin/python bench/rolling_restart.py [--runs 5] [--json]

Prints one table (median, min, max per figure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.localcluster import LocalCluster
from agent.localproc import LocalMember
from bench.writes import pgctl, table, under_writes
from tests.support.cluster import converged, wait_until
from tests.support.workload import ensure_table


class BenchCluster(LocalCluster):
    """The demo cluster without its local shared_buffers (it would outrank the DCS)."""

    def config_for(self, member: LocalMember) -> dict[str, object]:
        config = super().config_for(member)
        postgresql = config["postgresql"]
        assert isinstance(postgresql, dict)
        postgresql["parameters"] = {
            k: v for k, v in postgresql["parameters"].items() if k != "shared_buffers"
        }
        return config


async def show_all(cluster: LocalCluster, name: str) -> set[str]:
    """The values the members run (a member that refuses connections, as one still starting
    after the previous step's restart, counts as an unknown value)."""
    values = set()
    for member in cluster.members:
        try:
            conn = await asyncpg.connect(
                host="127.0.0.1",
                port=member.pg_port,
                user="postgres",
                database="postgres",
                timeout=3,
            )
        except (OSError, asyncpg.PostgresError):
            values.add("?")
            continue
        try:
            values.add(str(await conn.fetchval(f"SHOW {name}")))
        finally:
            await conn.close()
    return values


async def converge(cluster: LocalCluster, session: aiohttp.ClientSession) -> None:
    await wait_until(lambda: converged(cluster, session), timeout=120, what="a converged cluster")


async def reload_propagation(cluster: LocalCluster, value_ms: int) -> float:
    t0 = time.monotonic()
    await pgctl(
        cluster, "edit-config", "--set", f"log_min_duration_statement={value_ms}ms", "--force"
    )
    wanted = {f"{value_ms}ms"}
    while await show_all(cluster, "log_min_duration_statement") != wanted:
        if time.monotonic() - t0 > 60:
            raise RuntimeError("the parameter did not reach every member within 60 s")
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


async def pending_restart(
    cluster: LocalCluster, session: aiohttp.ClientSession, shared_buffers: str
) -> tuple[float, float]:
    """(longest write gap, duration) of `ctl restart --pending` after shared_buffers changed."""
    await pgctl(cluster, "edit-config", "--set", f"shared_buffers={shared_buffers}", "--force")

    async def all_pending() -> bool:
        view = await cluster.cluster_json(session)
        members = view.get("members") if view else None
        return isinstance(members, list) and all(m["pending_restart"] for m in members)

    await wait_until(all_pending, timeout=60, what="every member pending restart")
    return await under_writes(
        cluster, lambda: pgctl(cluster, "restart", "--pending", "--timeout", "300"), after_s=1.0
    )


async def switchover_gap(cluster: LocalCluster, session: aiohttp.ClientSession) -> float:
    gap, _ = await under_writes(
        cluster, lambda: pgctl(cluster, "switchover", "--wait"), after_s=1.5
    )
    return gap


async def measure(runs: int) -> dict[str, list[float]]:
    base = Path(tempfile.mkdtemp(prefix="pgwarden-bench-", dir="/tmp"))
    cluster = BenchCluster(base=base, size=3, cluster="bench")
    figures: dict[str, list[float]] = {
        "edit-config of a reload parameter until every member runs it (s)": [],
        "write gap of restart --pending (s)": [],
        "duration of restart --pending, 3 members (s)": [],
        "write gap of a REST switchover, same cluster (s)": [],
    }
    names = list(figures)
    try:
        cluster.start()
        async with aiohttp.ClientSession() as session:
            await converge(cluster, session)
            primary = await cluster.primary_index(session)
            assert primary is not None
            await ensure_table("127.0.0.1", cluster.members[primary].pg_port)
            for run in range(runs):
                await converge(cluster, session)
                figures[names[0]].append(await reload_propagation(cluster, 100 + run))
                await converge(cluster, session)
                gap, took = await pending_restart(cluster, session, f"{32 + 8 * (run % 2)}MB")
                figures[names[1]].append(gap)
                figures[names[2]].append(took)
                await converge(cluster, session)
                figures[names[3]].append(await switchover_gap(cluster, session))
                print(
                    f"run {run + 1}/{runs}: " + ", ".join(f"{v[-1]:.3f}" for v in figures.values()),
                    file=sys.stderr,
                )
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = asyncio.run(measure(args.runs))
    print(json.dumps(figures, indent=2) if args.json else table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
