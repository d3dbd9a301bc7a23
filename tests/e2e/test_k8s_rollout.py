"""End to end: `pgwarden ctl rollout` of an OnDelete StatefulSet on the test API server, with
three real agents and PostgreSQL instances (the agents' logs are kept under
/tmp/pgwarden-k8s-rollout-<pid>). tests/support/statefulset.py plays the StatefulSet
controller (a deleted pod: SIGTERM its agent, create the pod again at the StatefulSet's
updateRevision, start the agent) and the disruption controller (the PodDisruptionBudget's
disruptionsAllowed from the members' /readiness).

The command runs in-process with the operator's credentials (its own token, user `operator`
in the audit log), so the permissions it used are checked against the operator Role of
k8s/examples/operator-rollout.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from agent import ctl
from agent.localcluster import LocalCluster
from tests.support.cluster import converge, local_cluster, wait_until
from tests.support.k8s_audit import agent_permissions
from tests.support.statefulset import StatefulSetSim
from tests.support.workload import AppWriter, ensure_table

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

KEEP_DIR = Path("/tmp") / f"pgwarden-k8s-rollout-{os.getpid()}"  # the agents' logs
ROLE = Path(__file__).resolve().parents[2] / "k8s/examples/operator-rollout/role.yaml"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with local_cluster(dcs_kind="kubernetes", cluster="pgr", kube_lock="lease") as running:
        try:
            yield running
        finally:
            KEEP_DIR.mkdir(parents=True, exist_ok=True)
            for member in running.members:
                if member.log_path.exists():
                    shutil.copyfile(member.log_path, KEEP_DIR / f"{member.name}.log")


def _operator_kubeconfig(cluster: LocalCluster) -> Path:
    path = cluster.base / "operator-kubeconfig.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "t", "cluster": {"server": cluster.apiserver_url}}],
                "users": [{"name": "op", "user": {"token": cluster.operator_token}}],
                "contexts": [
                    {"name": "t", "context": {"cluster": "t", "user": "op", "namespace": "default"}}
                ],
                "current-context": "t",
            }
        )
    )
    return path


async def _rollout(cluster: LocalCluster, *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    argv = [
        *(f"--url={m.api_url}" for m in cluster.members),
        f"--token={cluster.token}",
        "--request-timeout=2",
        "rollout",
        "pg",
        f"--kubeconfig={_operator_kubeconfig(cluster)}",
        "--timeout=90",
        "--poll-interval=0.2",
        *extra,
    ]
    code = await ctl.run(argv, env={}, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


async def _leader_timeline(
    session: aiohttp.ClientSession, cluster: LocalCluster
) -> tuple[str, int]:
    view: Any = await cluster.cluster_json(session)
    leader = next(m for m in view["members"] if m["leader"])
    return leader["name"], leader["timeline"]


async def _healthy_budget(sim: StatefulSetSim) -> None:
    async def allowed() -> bool:
        pdb = await sim._call("GET", f"/apis/policy/v1{sim._ns}/poddisruptionbudgets/{sim.name}")
        return bool(pdb["status"]["disruptionsAllowed"] == 1)

    await wait_until(allowed, timeout=60, what="the budget allowing a disruption")


async def test_rollout_refuses_waits_for_the_budget_and_resumes(cluster: LocalCluster) -> None:
    primary = await converge(cluster)
    async with cluster.api_session() as session:
        sim = StatefulSetSim(cluster)
        await sim.install(session, "rev-1")
        task = asyncio.create_task(sim.run())
        try:
            await _healthy_budget(sim)
            code, out, _ = await _rollout(cluster)
            assert code == 0 and "done: every pod runs revision rev-1" in out

            await sim.new_revision("rev-2")
            code, out, _ = await _rollout(cluster, "--dry-run")
            replicas = sorted((m.name for m in cluster.members if m.index != primary), reverse=True)
            leader = cluster.members[primary].name
            assert code == 0, out
            lines = out.splitlines()
            # The switchover goes to the updated replica with the least lag: either.
            assert lines[2] in {f"3. switchover {leader} -> {name}" for name in replicas}
            assert lines[:2] + lines[3:] == [
                f"1. delete pod {replicas[0]} (replica, revision rev-1 -> rev-2)",
                f"2. delete pod {replicas[1]} (replica, revision rev-1 -> rev-2)",
                f"4. delete pod {leader} (old leader, revision rev-1 -> rev-2)",
                "5. done: every pod runs revision rev-2",
            ]

            # A scheduled switchover pending: not healthy, nothing is deleted.
            status, _ = await cluster.post(
                session, primary, "/switchover", {"scheduled_at": "2099-01-01T00:00:00+00:00"}
            )
            assert status == 202
            code, _, err = await _rollout(cluster)
            assert code == 1 and "not starting: cluster not healthy" in err, err
            assert "switchover is pending" in err
            async with session.delete(
                cluster.members[primary].api_url + "/switchover",
                headers={"Authorization": f"Bearer {cluster.token}"},
            ) as resp:
                assert resp.status == 200, await resp.text()

            # The budget allows nothing: the command waits, deletes nothing.
            sim.block_budget = True
            await asyncio.sleep(0.5)
            first = asyncio.create_task(_rollout(cluster))
            await asyncio.sleep(3)
            assert sim.deleted == [] and not first.done()
            # Allowed again: it updates one replica; then it is interrupted.
            sim.block_budget = False
            await wait_until(lambda: _true(len(sim.deleted) >= 1), timeout=30, what="a pod deleted")
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            await converge(cluster, timeout=60)
            # Run again: it continues; each pod is deleted once in all.
            code, out, err = await _rollout(cluster)
            assert code == 0, out + err
            assert sorted(sim.deleted) == sorted(m.name for m in cluster.members)
            assert sim.deleted == [*replicas, leader]
            assert set((await sim.revisions()).values()) == {"rev-2"}
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def _true(value: bool) -> bool:
    return value


async def test_rollout_write_gap_is_one_switchover(cluster: LocalCluster) -> None:
    primary = await converge(cluster, timeout=60)
    hosts = [("127.0.0.1", m.pg_port) for m in cluster.members]
    await ensure_table(*hosts[primary])
    async with cluster.api_session() as session:
        sim = StatefulSetSim(cluster)
        sim.attach(session)  # installed by the test before
        task = asyncio.create_task(sim.run())
        try:
            await _healthy_budget(sim)
            before = await _leader_timeline(session, cluster)
            await sim.new_revision("rev-3")
            writer = AppWriter(hosts=hosts, start_value=1_000_000)
            writer.start()
            await asyncio.sleep(1)
            start = asyncio.get_running_loop().time()
            code, out, err = await _rollout(cluster)
            end = asyncio.get_running_loop().time()
            await asyncio.sleep(0.5)
            log = await writer.stop()
            assert code == 0, out + err
            after = await _leader_timeline(session, cluster)
            gap = log.longest_gap(start, end)
            print(f"\nrollout of 3 pods: {end - start:.1f} s, longest write gap {gap:.2f} s")
            print(out)
            # One switchover: one new timeline, a new leader; no pod deleted while leading.
            assert after[0] != before[0] and after[1] == before[1] + 1
            assert set((await sim.revisions()).values()) == {"rev-3"}
            assert sim.deleted == sorted(sim.deleted, key=lambda n: n == before[0])
            assert sim.unready_at_deletion == [0, 0, 0]  # the budget: one pod down at a time
            # The old leader, restarted soon after it followed the new one, is not diverged:
            # no pg_rewind, no re-clone (candidates.local_timeline: the min recovery timeline).
            after_deletion = out.split("(old leader,", 1)[1]
            assert "rewinding" not in after_deletion and "cloning" not in after_deletion, out
            assert gap < 5.0
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    used = agent_permissions(cluster.audit_log, user="operator")
    role = next(d for d in yaml.safe_load_all(ROLE.read_text()) if d["kind"] == "Role")
    allowed = {
        (verb, f"{res}.{group}" if group else res, "")
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }
    assert used and used <= allowed, json.dumps(sorted(used - allowed))
