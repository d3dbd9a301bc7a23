"""Rollout benchmark: `pgwarden ctl rollout` of an OnDelete StatefulSet on a real 3-member
cluster (the in-tree test Kubernetes API server as the DCS, Lease lock, PostgreSQL, agents
with the default timings); tests/support/statefulset.py plays the StatefulSet controller
(a deleted pod: SIGTERM its agent, the pod again at the new revision, the agent again) and the
disruption controller.

Per run, under a client inserting every 50 ms through libpq multi-host
(target_session_attrs=read-write):
- a new revision, then `ctl rollout` until every pod runs it: the longest time without an
  acknowledged write, and how long the rollout took;
- for reference in the same run, the write gap of a plain REST switchover
  (`ctl switchover --wait`).

    .venv/bin/python bench/rollout.py [--runs 3] [--json]

Prints one table (median, min, max per figure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.localcluster import LocalCluster
from bench.writes import pgctl, table, under_writes
from tests.support.cluster import converged, wait_until
from tests.support.statefulset import StatefulSetSim
from tests.support.workload import ensure_table


def operator_kubeconfig(cluster: LocalCluster) -> Path:
    path = cluster.base / "operator-kubeconfig.yaml"
    context = {"cluster": "t", "user": "op", "namespace": cluster.kube_namespace}
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "t", "cluster": {"server": cluster.apiserver_url}}],
                "users": [{"name": "op", "user": {"token": cluster.operator_token}}],
                "contexts": [{"name": "t", "context": context}],
                "current-context": "t",
            }
        )
    )
    return path


async def ctl_under_writes(cluster: LocalCluster, *argv: str) -> tuple[float, float]:
    """(longest write gap, duration) of one ctl command (as the operator) under the writer."""
    env = {"KUBECONFIG": str(operator_kubeconfig(cluster))}
    return await under_writes(cluster, lambda: pgctl(cluster, *argv, env=env), after_s=1.5)


async def converge(cluster: LocalCluster, session: aiohttp.ClientSession) -> None:
    await wait_until(lambda: converged(cluster, session), timeout=180, what="a converged cluster")


async def measure(runs: int) -> dict[str, list[float]]:
    base = Path(tempfile.mkdtemp(prefix="pgwarden-bench-", dir="/tmp"))
    cluster = LocalCluster(base=base, size=3, cluster="bench", dcs_kind="kubernetes")
    figures: dict[str, list[float]] = {
        "write gap of ctl rollout, 3 pods (s)": [],
        "duration of ctl rollout, 3 pods (s)": [],
        "write gap of a REST switchover, same cluster (s)": [],
    }
    names = list(figures)
    sim = StatefulSetSim(cluster)
    try:
        cluster.start()
        async with aiohttp.ClientSession() as session:
            await converge(cluster, session)
            primary = await cluster.primary_index(session)
            assert primary is not None
            await ensure_table("127.0.0.1", cluster.members[primary].pg_port)
            await sim.install(session, "rev-1")
            controller = asyncio.create_task(sim.run())
            try:
                for run in range(runs):
                    await converge(cluster, session)
                    await sim.new_revision(f"rev-{run + 2}")
                    gap, took = await ctl_under_writes(
                        cluster, "rollout", "pg", "--timeout", "300", "--poll-interval", "0.2"
                    )
                    figures[names[0]].append(gap)
                    figures[names[1]].append(took)
                    await converge(cluster, session)
                    figures[names[2]].append(
                        (await ctl_under_writes(cluster, "switchover", "--wait"))[0]
                    )
                    print(
                        f"run {run + 1}/{runs}: "
                        + ", ".join(f"{v[-1]:.3f}" for v in figures.values()),
                        file=sys.stderr,
                    )
            finally:
                controller.cancel()
                await asyncio.gather(controller, return_exceptions=True)
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = asyncio.run(measure(args.runs))
    print(json.dumps(figures, indent=2) if args.json else table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
