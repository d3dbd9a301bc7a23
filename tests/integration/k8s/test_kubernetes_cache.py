"""The Kubernetes backend's watch caches (agent/dcs/kubernetes/cache.py): once its watches
run and a leader renews, `get_cluster` costs no request (it cost three before the caches,
then one for the lock object), still shows a peer's writes once their watch events arrive
and its own writes at once, and still fails when the API server does not answer: at once
after a request of its own failed, and for a replica once the leader's renewals stop
arriving. It reads from the server whenever no live leader holds the lock (a race is judged
by records a dead stream could show stale) and before it lets a member record expire."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import LockKind
from agent.dcs.base import DcsUnavailable
from agent.model import RecordKind
from tests.contract.dcs_contract import member
from tests.integration.k8s.test_kubernetes_dcs import (
    NAMESPACE,
    KubeContractCluster,
    contract_cluster,
)
from tests.k8s_apiserver import Fault, FaultMode, KubeApiServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[KubeContractCluster]:
    async with contract_cluster(tmp_path, LockKind.LEASE) as c:
        yield c


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
    assert await a.renew_leader()  # its own write: read once its watch event arrived
    await asyncio.sleep(0.2)
    since = time.time()
    view = await a.get_cluster()
    assert [m.name for m in view.members] == ["a"]
    assert view.leader is not None and view.leader.name == "a"
    assert requests(server, since) == []
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
    a, b = cluster.make_kube("a"), cluster.make_kube("b")
    await a.publish_member(member("a"))
    await b.publish_member(member("b"))
    assert await b.write_record(RecordKind.CONFIG, "{}", expected_version=None)
    await a.get_cluster()
    assert await a.wait_for_change(0.3) is False  # starts the watches
    await asyncio.sleep(0.2)
    version = (await a.get_cluster()).config.version
    assert version != ""
    config_cache = a._watches.config_cache  # its stream goes silent
    config_cache.apply = lambda *args, **kwargs: None  # type: ignore[method-assign]
    assert await b.write_record(RecordKind.CONFIG, '{"ttl_s": 9}', expected_version=version)
    await asyncio.sleep(0.2)
    view = await a.get_cluster()
    assert view.leader is None
    assert view.config.version != version  # fresh: no leader, so read from the server


async def test_once_the_leader_stops_renewing_the_records_are_read_from_the_server(
    cluster: KubeContractCluster,
) -> None:
    # The case above with the leader's death instead of a release: its lock object still
    # names it, and the race that starts once it expired must not be judged by a `sync`
    # record from a ConfigMap stream that died without a word.
    a, b = cluster.make_kube("a"), cluster.make_kube("b")
    await b.publish_member(member("b"))
    assert await a.acquire_leader()
    assert await a.write_record(RecordKind.CONFIG, "{}", expected_version=None)
    await b.get_cluster()
    assert await b.wait_for_change(0.3) is False  # starts the watches
    await asyncio.sleep(0.2)
    view = await b.get_cluster()
    assert view.leader is not None and view.leader.name == "a"
    version = view.config.version
    # b's ConfigMap stream dies without a word; its lock cache, told nothing either, stays
    # trusted (so that only the rule under test sends b to the server).
    assert cluster.server.stall_watches(f"/api/v1/namespaces/{NAMESPACE}/configmaps") >= 1
    b._watches.lock_cache(f"{cluster.cluster}-leader")._max_quiet_s = None
    assert await a.write_record(RecordKind.CONFIG, '{"ttl_s": 9}', expected_version=version)
    for _ in range(int(cluster.ttl_s / 0.2) + 2):  # a stops renewing; b lives on
        await b.publish_member(member("b"))
        await asyncio.sleep(0.2)  # a stops renewing: its lease lapses on b's clock
    view = await b.get_cluster()
    assert view.leader is None
    assert view.config.version != version


async def test_a_member_record_expires_on_cached_objects_only_once_the_server_shows_it(
    cluster: KubeContractCluster,
) -> None:
    """A pods stream that stopped delivering (its objects frozen in the cache) must not
    expire the members whose heartbeats it no longer shows."""
    a, b = cluster.make_kube("a"), cluster.make_kube("b")
    await a.publish_member(member("a"))
    await b.publish_member(member("b"))
    assert await a.acquire_leader()
    # Nothing else will tell b that its pods stream died: no quiet limit on the cache or
    # the stream, and b does not write its own record (whose event it would wait for).
    b._watches.pods_cache._max_quiet_s = None
    target = b._watches._targets["pods"]
    b._watches._targets["pods"] = dataclasses.replace(target, quiet_s=None, timeout_s=300)
    await b.get_cluster()
    assert await b.wait_for_change(0.3) is False  # starts the watches
    await asyncio.sleep(0.2)
    assert cluster.server.stall_watches(f"/api/v1/namespaces/{NAMESPACE}/pods") >= 1
    deadline = time.monotonic() + 2 * cluster.ttl_s
    while time.monotonic() < deadline:  # a is alive: it heartbeats and renews
        await a.publish_member(member("a"))
        assert await a.renew_leader()
        assert "a" in {m.name for m in (await b.get_cluster()).members}
        await asyncio.sleep(0.2)
    # a dies: its record expires one ttl after b first saw its last heartbeat, which over
    # the dead stream b may learn from the server only when the one before expired: within
    # two ttls (b reads every cycle).
    for _ in range(int(2 * cluster.ttl_s / 0.2) + 2):
        await asyncio.sleep(0.2)
        names = {m.name for m in (await b.get_cluster()).members}
    assert "a" not in names


async def test_a_member_dead_behind_a_silently_dead_pods_stream_goes_a_ttl_after_its_write(
    cluster: KubeContractCluster,
) -> None:
    """b's pods stream dies without a word just before p's last write, and p dies: b learns
    of that write from the server only once its cache is found quiet (a heartbeat period, a
    cycle and a request timeout after the stream's last event), yet p goes from b's view a
    ttl after that write, not a ttl after b first saw it (up to about 2 ttl before)."""
    a, b, p = (cluster.make_kube(name, timeout_s=0.5) for name in ("a", "b", "p"))
    for handle, name in ((a, "a"), (b, "b"), (p, "p")):
        await handle.publish_member(member(name))
    assert await a.acquire_leader()
    await b.get_cluster()
    assert await b.wait_for_change(0.3) is False  # starts the watches
    await p.publish_member(member("p", wal_lsn=1))  # seen at once over b's stream
    await asyncio.sleep(0.2)
    assert (await b.get_cluster()).member("p") is not None
    assert cluster.server.stall_watches(f"/api/v1/namespaces/{NAMESPACE}/pods") >= 1
    await p.publish_member(member("p", wal_lsn=2))  # p's last write: then p dies
    last = time.monotonic()
    gone_at = None
    while time.monotonic() < last + 2 * cluster.ttl_s:  # a renews; b reads, writes nothing
        assert await a.renew_leader()
        seen = (await b.get_cluster()).member("p")
        if seen is None:
            gone_at = gone_at or time.monotonic()
        else:
            assert gone_at is None, "p came back"
            assert seen.wal_lsn in (1, 2)
        await asyncio.sleep(0.1)
    assert gone_at is not None
    assert gone_at - last < cluster.ttl_s + cluster.expiry_slack_s, "p lingered"
    assert gone_at - last > cluster.ttl_s - cluster.expiry_slack_s, "p went early"


async def test_after_a_failed_request_the_next_read_goes_to_the_server(
    cluster: KubeContractCluster,
) -> None:
    """The leader: a renewal that failed means the server may be down, which the caches
    cannot tell (nothing arrives either way); its next read must fail too, as it did when
    every read went to the server, so that the loop sees the DCS unreachable at once."""
    a = cluster.make_kube("a")
    assert await a.acquire_leader()
    await a.get_cluster()
    assert await a.wait_for_change(0.3) is False
    assert await a.renew_leader()
    await asyncio.sleep(0.2)
    since = time.time()
    await a.get_cluster()
    assert requests(cluster.server, since) == []  # from the caches
    cluster.server.faults.set(Fault(mode=FaultMode.ERROR, status=503))
    with pytest.raises(DcsUnavailable):
        await a.renew_leader()
    with pytest.raises(DcsUnavailable):
        await a.get_cluster()
    cluster.server.faults.clear()
    assert (await a.get_cluster()).leader is not None


async def test_a_replica_sees_the_server_down_once_the_leaders_renewals_stop_arriving(
    cluster: KubeContractCluster,
) -> None:
    # b's requests time out after 0.5 s: its lock cache is trusted for one cycle (0.5 s by
    # default at this ttl) and one request timeout after the leader's last renewal arrived,
    # well before the lease would lapse.
    a, b = cluster.make_kube("a"), cluster.make_kube("b", timeout_s=0.5)
    b._watches.pods_cache._max_quiet_s = None  # only the lock tells here
    assert await a.acquire_leader()
    await b.get_cluster()
    assert await b.wait_for_change(0.3) is False
    assert await a.renew_leader()
    await asyncio.sleep(0.2)
    assert (await b.get_cluster()).leader is not None
    cluster.server.faults.set(Fault(mode=FaultMode.ERROR, status=503))
    started = time.monotonic()
    with contextlib.suppress(DcsUnavailable):
        await a.renew_leader()
    down = False
    while not down and time.monotonic() - started < 1.0 + 0.5:
        try:
            await b.get_cluster()
        except DcsUnavailable:
            down = True
        await asyncio.sleep(0.1)
    assert down


async def test_the_pod_labels_the_watch_saw_are_given_only_while_its_cache_is_trusted(
    cluster: KubeContractCluster,
) -> None:
    """What the pod role labeler reads to skip a re-assertion (agent/kube/labels.py)."""
    server, a = cluster.server, cluster.make_kube("a")
    await a.publish_member(member("a"))
    assert a.observed_pod_labels() is None  # no watch yet
    await a.get_cluster()
    assert await a.wait_for_change(0.3) is False  # starts the watches
    await asyncio.sleep(0.2)
    pods = server.store_resource("pods")
    obj = server.store.get(pods, NAMESPACE, "a")
    obj["metadata"]["labels"]["role"] = "replica"  # labelled by someone else
    server.store.update(pods, NAMESPACE, "a", obj)
    await asyncio.sleep(0.2)
    observed = a.observed_pod_labels()
    assert observed is not None and observed["a"]["role"] == "replica"
    server.faults.set(Fault(mode=FaultMode.ERROR, status=503))
    with pytest.raises(DcsUnavailable):
        await a.get_cluster()
    assert a.observed_pod_labels() is None  # in doubt after a failed request
    server.faults.clear()
