"""Least privilege, end to end: the requests three real agents make to the Kubernetes API
(recorded in the test API server's audit log) against the Role of the matching example in
k8s/examples: every request allowed, every granted verb used.

Each lock kind gets its own LocalCluster named `pgwarden` (as in the manifests, whose Roles
name the objects of that cluster), driven through bootstrap, a REST switchover and a SIGTERM
hand-over, so that every code path that talks to the API server has run: creating the lock
object and the records ConfigMap, taking, renewing and releasing the lock, member records and
role labels on the pods, the watches. Skipped without kubectl (which renders the Role).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from agent.localcluster import LocalCluster
from tests.support import manifests
from tests.support.cluster import converge, local_cluster, new_primary, wait_until
from tests.support.k8s_audit import AGENT_USER, audit_records
from tests.support.pgversions import PgInstall
from tests.support.rbac import calls_from_audit, check_calls

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(manifests.kubectl() is None, reason="kubectl is not installed"),
]

CLUSTER = "pgwarden"  # the cluster name the example Roles are written for
EXAMPLE_FOR_LOCK = {
    "endpoints": "kubernetes-dcs-endpoints",
    "lease": "kubernetes-dcs",
    "endpoints-and-lease": "migrate-to-lease",
}


@pytest.fixture(params=sorted(EXAMPLE_FOR_LOCK))
def lock_cluster(request: pytest.FixtureRequest, pg_install: PgInstall) -> Iterator[LocalCluster]:
    with local_cluster(
        dcs_kind="kubernetes", cluster=CLUSTER, kube_lock=request.param, pg=pg_install
    ) as running:
        yield running


def _roles(cluster: LocalCluster) -> list[str | None]:
    out: list[str | None] = []
    for member in cluster.members:
        pod: Any = cluster.kube_get(
            f"/api/v1/namespaces/{cluster.kube_namespace}/pods/{member.name}"
        )
        out.append((pod["metadata"].get("labels") or {}).get("role"))
    return out


async def _converge(cluster: LocalCluster, timeout: float = 60.0) -> int:
    """Converged (tests/support/cluster.py), and the pods' role labels agree."""
    primary = await converge(cluster, timeout)

    async def labelled() -> bool:
        expected = ["replica"] * len(cluster.members)
        expected[primary] = "primary"
        return _roles(cluster) == expected

    await wait_until(labelled, timeout=timeout, what="role labels")
    return primary


async def _resume_watches_from_compacted_history(
    cluster: LocalCluster, role_objects: Any, attempts: int = 6
) -> None:
    """Compact the server's history and end every watch, until each watched kind was listed
    again: a watch resumed from a resourceVersion the server no longer keeps gets 410 Gone and
    re-lists, the one path that lists the lock objects and the ConfigMap (a watch starts from
    the agent's first read). A watch that holds the newest resourceVersion resumes without a
    410: so an object no agent watches is written first, and every watch is behind it."""
    for attempt in range(attempts):
        calls = calls_from_audit(audit_records(cluster.audit_log), user=AGENT_USER)
        if not [g for g in check_calls(role_objects, calls)[1] if g.verb == "list"]:
            return
        bump = {"metadata": {"name": f"bump-{attempt}"}, "data": {}}
        cluster._kube_request(
            "POST", f"/api/v1/namespaces/{cluster.kube_namespace}/configmaps", bump
        )
        async with aiohttp.ClientSession() as session:
            for path, body in (("/_compact", None), ("/_fault", {"mode": "cut_watches"})):
                async with session.post(cluster.apiserver_url + path, json=body) as answer:
                    answer.raise_for_status()
        await asyncio.sleep(1.5)


async def test_the_example_role_allows_every_request_the_agents_make_and_nothing_more(
    lock_cluster: LocalCluster,
) -> None:
    cluster = lock_cluster
    first = await _converge(cluster)
    # A REST switchover: the leader releases, the candidate takes the lock.
    candidate = (first + 1) % len(cluster.members)
    # Right after bootstrap the candidate's published position may still be a WAL segment
    # behind the leader's (member records are a cycle old): the API refuses with 409 until
    # the records catch up, as it would for an operator, who would retry.
    answers: list[tuple[int, object]] = []

    async def accepted() -> bool:
        async with aiohttp.ClientSession() as session:
            answers.append(
                await cluster.post(
                    session, first, "/switchover", {"candidate": cluster.members[candidate].name}
                )
            )
        return answers[-1][0] == 202

    await wait_until(accepted, timeout=20, interval=0.5, what="the switchover to be accepted")
    second = await new_primary(cluster, first, timeout=20)
    await _converge(cluster)
    # SIGTERM on the primary (a pod deletion): hand-over, release, the agent exits.
    cluster.signal_agent(second, signal.SIGTERM)
    await new_primary(cluster, second, timeout=20)
    process = cluster.members[second].process
    assert process is not None
    await asyncio.to_thread(process.wait, 30)
    await _converge(cluster)

    example = EXAMPLE_FOR_LOCK[cluster.kube_lock]
    role_objects = manifests.render(example)
    await _resume_watches_from_compacted_history(cluster, role_objects)
    calls = calls_from_audit(audit_records(cluster.audit_log), user=AGENT_USER)
    assert calls, "the audit log recorded no request of the agents"
    missing, unused = check_calls(role_objects, calls)
    assert not missing, f"{example}: the Role lacks {[str(r) for r in missing]}"
    assert not unused, f"{example}: the Role grants unused {[str(g) for g in unused]}"
