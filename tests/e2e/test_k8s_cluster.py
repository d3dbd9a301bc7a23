"""End to end with the Kubernetes API as the DCS: the in-tree test API server as a process,
three real PostgreSQL instances and three agent processes, each with its own pod object
(IP 127.0.0.1; members differ by PostgreSQL port), once per lock kind (`endpoints`, then
`lease`).

The scenarios share one cluster, with the short e2e timings (ttl 6 s), but not its state:
each starts with `_converge` (stopped or frozen processes revived, one primary, streaming
replicas, routing on the primary), so a failing scenario does not fail the ones after it.
Besides the HA behaviour they check what Kubernetes clients see: the pods' role labels and
the primary Service's Endpoints or EndpointSlice (exactly the leader's address), and the
Kubernetes Events each scenario leaves on the pods (Switchover, HandedOver, Failover, Rewind,
ShutdownHandOver, Demoted, Reclone, FailsafeEntered and FailsafeLeft; the last two with
failsafe mode turned on for that scenario only). One scenario checks that the monitoring kit
(k8s/monitoring) uses only metrics a live agent serves.
The API server's audit log is kept at a path the module prints (`K8S_AUDIT_LOG=...`), for
the RBAC check; `tests.support.k8s_audit.agent_permissions` reads it.
"""

from __future__ import annotations

import asyncio
import calendar
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.localcluster import LocalCluster
from tests.support import monitoring
from tests.support.cluster import (
    converge,
    local_cluster,
    member_writers,
    new_primary,
    stop_writers,
    wait_until,
)
from tests.support.k8s_audit import agent_permissions, request_rate
from tests.support.pgversions import PgInstall
from tests.support.workload import has_split_brain, writer_sequence

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TTL = 6.0
KEEP_DIR = Path("/tmp") / f"pgwarden-k8s-e2e-{os.getpid()}"  # audit logs and agent logs


@pytest.fixture(scope="module", params=["endpoints", "lease"])
def cluster(request: pytest.FixtureRequest, pg_install: PgInstall) -> Iterator[LocalCluster]:
    with local_cluster(
        dcs_kind="kubernetes", cluster="pgk", kube_lock=request.param, pg=pg_install
    ) as running:
        try:
            yield running
        finally:
            keep = KEEP_DIR / running.kube_lock
            keep.mkdir(parents=True, exist_ok=True)
            for member in running.members:
                if member.log_path.exists():
                    shutil.copyfile(member.log_path, keep / f"{member.name}.log")
            if running.audit_log.exists():
                audit = keep / "audit.jsonl"
                shutil.copyfile(running.audit_log, audit)
                print(f"\nK8S_AUDIT_LOG={audit}")
                print(f"K8S_AGENT_PERMISSIONS={sorted(agent_permissions(audit))}")


def _pod_role(cluster: LocalCluster, index: int) -> str | None:
    pod: Any = cluster.kube_get(
        f"/api/v1/namespaces/{cluster.kube_namespace}/pods/{cluster.members[index].name}"
    )
    labels: dict[str, str] = pod["metadata"].get("labels") or {}
    return labels.get("role")


def _endpoint_ports(cluster: LocalCluster) -> list[tuple[str, int]]:
    """(ip, port) of every address routed to by the primary Service: its Endpoints (lock
    kind endpoints) or its EndpointSlice (lock kind lease)."""
    if cluster.kube_lock == "lease":
        try:
            es: Any = cluster.kube_get(
                f"/apis/discovery.k8s.io/v1/namespaces/{cluster.kube_namespace}"
                f"/endpointslices/{cluster.cluster}"
            )
        except OSError:
            return []
        return [
            (address, port["port"])
            for endpoint in es.get("endpoints") or []
            for address in endpoint.get("addresses") or []
            for port in es.get("ports") or []
        ]
    try:
        ep: Any = cluster.kube_get(
            f"/api/v1/namespaces/{cluster.kube_namespace}/endpoints/{cluster.cluster}"
        )
    except OSError:
        return []
    return [
        (address["ip"], port["port"])
        for subset in ep.get("subsets") or []
        for address in subset.get("addresses") or []
        for port in subset.get("ports") or []
    ]


async def _routing_points_at(cluster: LocalCluster, primary: int, timeout: float = 10.0) -> None:
    """Wait until the labels and the Endpoints name `primary` (and only it) as the primary."""

    async def routed() -> bool:
        roles = [_pod_role(cluster, i) for i in range(len(cluster.members))]
        expected = ["replica"] * len(cluster.members)
        expected[primary] = "primary"
        return roles == expected and _endpoint_ports(cluster) == [
            ("127.0.0.1", cluster.members[primary].pg_port)
        ]

    await wait_until(routed, timeout=timeout, what=f"labels and endpoints on pg-{primary}")


def _events(cluster: LocalCluster, since: float) -> set[tuple[str, str]]:
    """(pod, reason) of the events.k8s.io Events the agents posted after wall time `since`."""
    listed: Any = cluster.kube_get(
        f"/apis/events.k8s.io/v1/namespaces/{cluster.kube_namespace}/events"
    )
    found: set[tuple[str, str]] = set()
    for event in listed.get("items") or []:
        at = event.get("series", {}).get("lastObservedTime") or event["eventTime"]
        if calendar.timegm(time.strptime(at[:19], "%Y-%m-%dT%H:%M:%S")) >= since - 1:
            found.add((event["regarding"]["name"], event["reason"]))
    return found


async def _events_appear(
    cluster: LocalCluster, since: float, expected: set[tuple[int, str]], timeout: float = 10.0
) -> None:
    """Wait until the pods of the members (by index) carry the expected Event reasons."""
    wanted = {(cluster.members[i].name, reason) for i, reason in expected}

    async def posted() -> bool:
        return wanted <= _events(cluster, since)

    await wait_until(posted, timeout=timeout, what=f"events {sorted(wanted)}")


async def _converge(cluster: LocalCluster, timeout: float = 40.0) -> int:
    """Converged as for etcd, and the labels and Endpoints name the primary."""
    primary = await converge(cluster, timeout)
    await _routing_points_at(cluster, primary)
    return primary


async def test_bootstrap_labels_the_pods_and_points_the_service_at_the_primary(
    cluster: LocalCluster,
) -> None:
    await _converge(cluster, timeout=60)


async def test_idle_request_rate_per_member(cluster: LocalCluster) -> None:
    if cluster.kube_lock != "endpoints":
        pytest.skip("measured once, with the default lock kind")
    await _converge(cluster)
    window_s = 30.0
    start = time.time()
    await asyncio.sleep(window_s)
    rate, counts = request_rate(cluster.audit_log, since=start, until=start + window_s)
    per_member = rate / len(cluster.members)
    print(f"\nK8S_IDLE_REQUESTS_PER_S_PER_MEMBER={per_member:.2f} {dict(counts)}")
    assert per_member < 10


async def test_every_metric_the_monitoring_kit_uses_is_exposed_by_a_live_agent(
    cluster: LocalCluster,
) -> None:
    """k8s/monitoring's rules and dashboard query only what agents serve at /metrics."""
    if cluster.kube_lock != "lease":
        pytest.skip("the metrics do not depend on the lock kind")
    primary = await _converge(cluster)
    async with (
        aiohttp.ClientSession() as session,
        session.get(cluster.members[primary].api_url + "/metrics") as response,
    ):
        assert response.status == 200
        exposition = await response.text()
    families = monitoring.exposed_families(exposition)
    assert monitoring.missing_metrics(monitoring.metrics_used(), families) == []


async def test_rest_switchover_moves_labels_and_endpoints_to_the_candidate(
    cluster: LocalCluster,
) -> None:
    old = await _converge(cluster)
    candidate = (old + 1) % 3
    since = time.time()
    async with aiohttp.ClientSession() as session:
        status, body = await cluster.post(
            session, old, "/switchover", {"candidate": cluster.members[candidate].name}
        )
        assert status == 202, body
    assert await new_primary(cluster, old, timeout=15) == candidate
    assert await _converge(cluster) == candidate
    await _events_appear(cluster, since, {(candidate, "Switchover"), (old, "HandedOver")})


async def test_hard_kill_of_the_primary_moves_leadership_labels_and_endpoints(
    cluster: LocalCluster,
) -> None:
    old = await _converge(cluster)
    writers = member_writers(cluster, 100_000)
    for w in writers.values():
        w.start()
    await asyncio.sleep(0.5)
    since = time.time()
    t_kill = time.monotonic()
    cluster.kill_member(old)
    new = await new_primary(cluster, old, timeout=TTL + 10)
    took = time.monotonic() - t_kill
    print(f"\nK8S_HARD_KILL_FAILOVER_S={took:.2f}")
    assert took < TTL + 5

    async def endpoints_moved() -> bool:
        return _endpoint_ports(cluster) == [("127.0.0.1", cluster.members[new].pg_port)]

    await wait_until(endpoints_moved, timeout=5, what="endpoints on the new primary")

    async def new_labelled() -> bool:
        return _pod_role(cluster, new) == "primary"

    await wait_until(new_labelled, timeout=5, what="the new primary's label")
    await asyncio.sleep(0.5)
    logs = await stop_writers(writers)
    sequence = writer_sequence(logs, start=t_kill - 1, end=time.monotonic())
    assert not has_split_brain(sequence), sequence
    # The dead agent cannot relabel its pod: the new primary took the label off it.
    assert _pod_role(cluster, old) is None
    # Once back, it rejoins and is labelled replica.
    cluster.start_member(old)
    assert await _converge(cluster) == new
    assert _pod_role(cluster, old) == "replica"
    # The old primary wrote past the fork (writers ran until the kill): it rewinds.
    await _events_appear(cluster, since, {(new, "Failover"), (old, "Rewind")})


async def test_sigterm_on_the_primary_hands_over_and_unlabels_the_stopped_pod(
    cluster: LocalCluster,
) -> None:
    old = await _converge(cluster)
    since = time.time()
    cluster.signal_agent(old, signal.SIGTERM)
    new = await new_primary(cluster, old, timeout=15)
    process = cluster.members[old].process
    assert process is not None
    await asyncio.to_thread(process.wait, 20)
    assert _pod_role(cluster, old) is None
    assert _endpoint_ports(cluster) == [("127.0.0.1", cluster.members[new].pg_port)]
    # A hand-over (the new primary reports a switchover) is reported on the old pod too; when
    # no replica was ready to take over, the old primary only released the lease.
    promoted = {(cluster.members[new].name, reason) for reason in ("Switchover", "Failover")}

    async def reported() -> bool:
        return bool(promoted & _events(cluster, since))

    await wait_until(reported, timeout=10, what="the new primary's promotion event")
    if (cluster.members[new].name, "Switchover") in _events(cluster, since):
        await _events_appear(cluster, since, {(old, "ShutdownHandOver")})
    cluster.start_member(old)
    assert await _converge(cluster) == new


async def test_api_server_frozen_longer_than_the_ttl_fences_the_primary_in_time(
    cluster: LocalCluster,
) -> None:
    primary = await _converge(cluster)
    name = cluster.members[primary].name
    writers = member_writers(cluster, 400_000)
    for w in writers.values():
        w.start()
    await asyncio.sleep(0.5)
    assert cluster.apiserver is not None
    t_wall = time.time()
    t_stop = time.monotonic()
    os.kill(cluster.apiserver.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(TTL + 2)
    finally:
        os.kill(cluster.apiserver.pid, signal.SIGCONT)
    logs = await stop_writers(writers)
    acks = [a.at for a in logs[name].acks if a.at >= t_stop]
    last = max(acks, default=t_stop)
    assert last - t_stop < TTL, f"primary kept writing {last - t_stop:.2f}s without the DCS"
    others = [a for n, log in logs.items() if n != name for a in log.acks if a.at >= t_stop]
    assert not others, "a replica accepted writes while the DCS was down"
    await _converge(cluster, timeout=60)
    # Posted once the API server answers again (the Event waited in the agent meanwhile):
    # demoted by its agent at the deadline, or fenced by its fencer.
    stopped = {(name, "Demoted"), (name, "Fenced")}

    async def reported() -> bool:
        return bool(stopped & _events(cluster, t_wall))

    await wait_until(reported, timeout=45, what=f"a Demoted or Fenced event on {name}")


async def test_reinitialize_of_a_replica_reclones_it_and_reports_it_on_its_pod(
    cluster: LocalCluster,
) -> None:
    if cluster.kube_lock != "lease":
        pytest.skip("Events do not depend on the lock kind")
    primary = await _converge(cluster)
    replica = (primary + 1) % 3
    since = time.time()
    async with aiohttp.ClientSession() as session:
        status, body = await cluster.post(session, replica, "/reinitialize", {})
        assert status == 202, body
    await _events_appear(cluster, since, {(replica, "Reclone")}, timeout=30)
    assert await _converge(cluster) == primary


async def test_failsafe_entered_and_left_are_reported_on_the_primary_pod(
    cluster: LocalCluster,
) -> None:
    """With failsafe mode on, an API server outage longer than the ttl keeps the primary
    (every replica confirms it over the REST API): FailsafeEntered, then FailsafeLeft once
    the API server answers again, both posted on its pod after the outage."""
    if cluster.kube_lock != "lease":
        pytest.skip("Events do not depend on the lock kind")
    primary = await _converge(cluster)
    others = sorted(m.name for i, m in enumerate(cluster.members) if i != primary)
    assert cluster.apiserver is not None
    async with aiohttp.ClientSession() as session:
        status, body = await cluster.patch_config(session, {"failsafe_mode": True})
        assert status == 200, body
        try:

            async def recorded() -> bool:
                view = await cluster.cluster_json(session)
                record = None if view is None else view.get("failsafe")
                return isinstance(record, dict) and sorted(record.get("members") or []) == others

            await wait_until(recorded, timeout=15, what="the failsafe record naming the replicas")
            since = time.time()
            os.kill(cluster.apiserver.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(TTL + 2)
            finally:
                os.kill(cluster.apiserver.pid, signal.SIGCONT)
            await _events_appear(
                cluster,
                since,
                {(primary, "FailsafeEntered"), (primary, "FailsafeLeft")},
                timeout=45,
            )
            assert await _converge(cluster) == primary
        finally:
            status, body = await cluster.patch_config(session, {"failsafe_mode": False})
            assert status == 200, body
