"""The Kubernetes backend's watch caches (agent/dcs/kubernetes/cache.py): once its watches
run, `get_cluster` costs one request (the lock object) instead of three, still shows a
peer's writes once their watch events arrive and its own writes at once, and still fails
when the API server does not answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import LockKind
from agent.dcs.base import DcsUnavailable
from agent.model import RecordKind
from tests.contract.dcs_contract import member
from tests.integration.k8s.test_kubernetes_dcs import KubeContractCluster
from tests.k8s_apiserver import Fault, FaultMode, KubeApiServer
from tests.support.etcd import BlackHole
from tests.support.kube import kube_server

pytestmark = pytest.mark.integration


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[KubeContractCluster]:
    async with kube_server(tmp_path) as server, BlackHole() as hole:
        c = KubeContractCluster(server, LockKind.LEASE, hole)
        try:
            yield c
        finally:
            await c.close()


def requests(server: KubeApiServer, since: float) -> list[str]:
    return [f"{r.verb} {r.resource}" for r in server.audit.records if r.ts >= since]


async def test_reads_come_from_the_watches_and_still_show_every_write(
    cluster: KubeContractCluster,
) -> None:
    server = cluster.server
    a, b = cluster.make_kube("a"), cluster.make_kube("b")
    await a.publish_member(member("a"))
    assert await a.acquire_leader()  # with no leader, records are read from the server
    await a.get_cluster()
    assert await a.wait_for_change(0.3) is False  # starts the watches
    await asyncio.sleep(0.2)
    since = time.time()
    view = await a.get_cluster()
    assert [m.name for m in view.members] == ["a"]
    assert requests(server, since) == ["get leases"]
    # A peer's writes: shown once their watch events arrive (the wake says so).
    await b.publish_member(member("b"))
    assert await b.write_record(RecordKind.CONFIG, "{}", expected_version=None)
    assert await a.wait_for_change(3.0)
    await asyncio.sleep(0.1)
    view = await a.get_cluster()
    assert sorted(m.name for m in view.members) == ["a", "b"]
    assert view.config.version != ""
    # Its own write: shown by the very next read.
    version = view.config.version
    assert await a.write_record(RecordKind.CONFIG, '{"ttl_s": 9}', expected_version=version)
    assert (await a.get_cluster()).config.version != version


async def test_a_handle_whose_server_fails_does_not_read_from_its_cache(
    cluster: KubeContractCluster,
) -> None:
    a = cluster.make_kube("a")
    await a.get_cluster()
    assert await a.wait_for_change(0.3) is False
    await asyncio.sleep(0.2)
    cluster.server.faults.set(Fault(mode=FaultMode.ERROR, status=503))
    with pytest.raises(DcsUnavailable):
        await a.get_cluster()
    cluster.server.faults.clear()
    await a.get_cluster()


async def test_with_no_leader_the_records_are_read_from_the_server_not_the_cache(
    cluster: KubeContractCluster,
) -> None:
    # A race for the lock is judged by the ConfigMap's records (sync, failsafe, switchover):
    # a watch stream that died without a word (found only at its timeoutSeconds) must not
    # make a member race on a `sync` record the leader has since narrowed.
    from agent.dcs.kubernetes.watches import Watched  # noqa: PLC0415 - only here

    a, b = cluster.make_kube("a"), cluster.make_kube("b")
    await a.publish_member(member("a"))
    await b.publish_member(member("b"))
    assert await b.write_record(RecordKind.CONFIG, "{}", expected_version=None)
    await a.get_cluster()
    assert await a.wait_for_change(0.3) is False  # starts the watches
    await asyncio.sleep(0.2)
    version = (await a.get_cluster()).config.version
    assert version != ""
    config_cache = a._watches.caches[Watched.CONFIG]  # its stream goes silent
    config_cache.apply = lambda *args, **kwargs: None  # type: ignore[method-assign]
    assert await b.write_record(RecordKind.CONFIG, '{"ttl_s": 9}', expected_version=version)
    await asyncio.sleep(0.2)
    view = await a.get_cluster()
    assert view.leader is None
    assert view.config.version != version  # fresh: no leader, so read from the server
