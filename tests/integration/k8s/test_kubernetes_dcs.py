"""The Kubernetes backend against the in-tree test API server: the DCS contract for both lock
kinds, plus conflicts, watch trouble, faults, TLS with a token and the in-cluster config."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import LockKind
from agent.dcs.base import Dcs, DcsAuthError, DcsUnavailable
from agent.dcs.kubernetes import (
    CLUSTER_LABEL,
    LEADER_ANNOTATION,
    MEMBER_ANNOTATION,
    MEMBER_NAME_ANNOTATION,
    KubernetesDcs,
    record_annotation,
)
from agent.kube.client import SA_DIR_ENV, client_factory, make_api_client
from agent.model import RecordKind
from tests.contract.dcs_contract import (
    ContractCluster,
    DcsContract,
    leader_name,
    let_expire,
    member,
)
from tests.k8s_apiserver import Fault, FaultMode, KubeApiServer
from tests.k8s_apiserver.errors import ApiError
from tests.support.etcd import BlackHole
from tests.support.kube import agent_client, kube_server, write_kubeconfig

pytestmark = pytest.mark.integration

TTL_S = 2.5
TIMEOUT_S = 2.0
NAMESPACE = "default"
APP_LABELS = {"app": "pg"}


def url_factory(
    url: str, *, token: str | None = None, ca_file: Path | None = None
) -> Callable[[], Awaitable[Any]]:
    async def build() -> Any:
        return agent_client(url, token=token, ca_file=ca_file)

    return build


class KubeContractCluster:
    """Binds the contract suite to a fresh cluster name on the in-process test API server.
    Each `make(name)` also creates the member's pod (as a StatefulSet would), IP 127.0.0.x."""

    ttl_s = TTL_S
    expiry_slack_s = 0.5
    wake_s = 3.0
    quiet_s = 0.4
    deadline_s = 0.5
    member_records_expire = True  # stale heartbeats drop out of the view after ttl_s

    def __init__(self, server: KubeApiServer, lock: LockKind, black_hole: BlackHole) -> None:
        self.server = server
        self.lock = lock
        self.black_hole = black_hole
        self.cluster = f"c-{uuid.uuid4().hex[:10]}"
        self.handles: list[KubernetesDcs] = []
        self.pods = server.store_resource("pods")
        self.configmaps = server.store_resource("configmaps")
        leases = server.store_resource("leases", "coordination.k8s.io")
        endpoints = server.store_resource("endpoints")
        lease_lock = (leases, f"{self.cluster}-leader")
        endpoints_lock = (endpoints, self.cluster)
        # The lock objects of `lock`, in the order a leader takes them.
        self.lock_objects = {
            LockKind.LEASE: [lease_lock],
            LockKind.ENDPOINTS: [endpoints_lock],
            LockKind.ENDPOINTS_AND_LEASE: [endpoints_lock, lease_lock],
        }[lock]
        self.lock_res, self.lock_name = self.lock_objects[0]
        self.leases = leases

    def ensure_pod(self, name: str) -> None:
        store = self.server.store
        try:
            store.get(self.pods, NAMESPACE, name)
        except Exception:
            index = len(self.handles) % 250 + 1
            store.create(
                self.pods,
                NAMESPACE,
                {
                    "metadata": {"name": name, "labels": dict(APP_LABELS)},
                    "spec": {"containers": [{"name": "pg", "image": "postgres"}]},
                    "status": {"phase": "Running", "podIP": f"127.0.0.{index}"},
                },
            )

    def make_kube(
        self,
        name: str,
        *,
        url: str | None = None,
        timeout_s: float = TIMEOUT_S,
        lock: LockKind | None = None,
    ) -> KubernetesDcs:
        self.ensure_pod(name)
        handle = KubernetesDcs(
            client_factory=url_factory(url or self.server.url),
            namespace=NAMESPACE,
            cluster=self.cluster,
            member_name=name,
            ttl_s=self.ttl_s,
            timeout_s=timeout_s,
            lock=lock or self.lock,
            labels=APP_LABELS,
            pg_port=5432,
        )
        self.handles.append(handle)
        return handle

    def make(self, name: str) -> Dcs:
        return self.make_kube(name)

    async def expire(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def _modify(self, res: Any, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        store = self.server.store
        try:
            obj = copy.deepcopy(store.get(res, NAMESPACE, name))
        except Exception:
            obj = {"metadata": {"name": name}}
            if res is self.leases:
                obj["spec"] = {}
            change(obj)
            store.create(res, NAMESPACE, obj)
            return
        change(obj)
        store.update(res, NAMESPACE, name, obj)

    async def write_raw(self, key: str, value: bytes | None) -> None:
        # Annotations are strings: bytes that are not UTF-8 travel as lone surrogates,
        # which the backend turns back into the same bytes (and reads as corrupt).
        text = None if value is None else value.decode("utf-8", errors="surrogateescape")

        def annotate(annotation: str) -> Callable[[dict[str, Any]], None]:
            def change(obj: dict[str, Any]) -> None:
                notes = obj["metadata"].setdefault("annotations", {})
                if text is None:
                    notes.pop(annotation, None)
                else:
                    notes[annotation] = text

            return change

        if key == "leader":

            def hold(obj: dict[str, Any]) -> None:
                obj.setdefault("spec", {})["holderIdentity"] = text

            for res, name in self.lock_objects:
                change = hold if res is self.leases else annotate(LEADER_ANNOTATION)
                self._modify(res, name, change)
        elif key.startswith("members/"):
            name = key.removeprefix("members/")
            self.ensure_pod(name)

            def record(obj: dict[str, Any]) -> None:
                obj["metadata"].setdefault("labels", {})[CLUSTER_LABEL] = self.cluster
                notes = obj["metadata"].setdefault("annotations", {})
                notes.pop(MEMBER_NAME_ANNOTATION, None)
                if text is None:
                    notes.pop(MEMBER_ANNOTATION, None)
                else:
                    notes[MEMBER_ANNOTATION] = text

            self._modify(self.pods, name, record)
        else:
            annotation = record_annotation(RecordKind(key))
            self._modify(self.configmaps, f"{self.cluster}-config", annotate(annotation))

    async def make_unreachable(self, name: str) -> Dcs:
        return self.make_kube(name, url=self.black_hole.url, timeout_s=self.deadline_s)

    async def close(self) -> None:
        for handle in self.handles:
            await handle.close()


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[KubeApiServer]:
    async with kube_server(tmp_path) as server:
        yield server


@contextlib.asynccontextmanager
async def contract_cluster(tmp_path: Path, kind: LockKind) -> AsyncIterator[KubeContractCluster]:
    """A test API server of its own and a contract cluster of `kind` on it, closed after."""
    async with kube_server(tmp_path) as server, BlackHole() as black_hole:
        cluster = KubeContractCluster(server, kind, black_hole)
        try:
            yield cluster
        finally:
            await cluster.close()


@pytest.fixture(params=list(LockKind), ids=[kind.value for kind in LockKind])
async def kube_dcs(
    request: pytest.FixtureRequest, kube: KubeApiServer
) -> AsyncIterator[KubeContractCluster]:
    async with BlackHole() as black_hole:
        cluster = KubeContractCluster(kube, request.param, black_hole)
        try:
            yield cluster
        finally:
            await cluster.close()


class TestKubernetesDcsContract(DcsContract):
    @pytest.fixture
    def cluster(self, kube_dcs: KubeContractCluster) -> ContractCluster:
        return kube_dcs

    async def test_renew_after_expiry_fails_and_never_recreates_the_record(
        self, cluster: ContractCluster
    ) -> None:
        """The contract's test, with one read by `b` before the expiry: expiry is judged on
        each observer's own clock from when it first saw the record (contract point 5), so
        a handle that never saw the record before cannot know how old it is and gives it a
        full ttl (never earlier: renewTime is wall-clock time, informational only)."""
        a, b = cluster.make("a"), cluster.make("b")
        assert await a.acquire_leader()
        assert await leader_name(b) == "a"
        await let_expire(cluster)
        assert not await a.renew_leader()
        assert not await a.renew_leader()
        assert await leader_name(b) is None
        assert await a.acquire_leader()
        assert await a.renew_leader()
        assert await leader_name(b) == "a"

    async def test_a_new_observer_gives_a_lapsed_record_a_full_ttl_of_its_own(
        self, cluster: ContractCluster
    ) -> None:
        a = cluster.make("a")
        assert await a.acquire_leader()
        await let_expire(cluster)
        late = cluster.make("late")
        assert await leader_name(late) == "a"
        assert not await late.acquire_leader()
        await cluster.expire(cluster.ttl_s)
        assert await leader_name(late) is None
        assert await late.acquire_leader()


# --------------------------------------------------------------------------- routing objects


async def test_endpoints_subsets_follow_the_leader_and_are_emptied_on_release(
    kube: KubeApiServer,
) -> None:
    async with BlackHole() as hole:
        c = KubeContractCluster(kube, LockKind.ENDPOINTS, hole)
        try:
            a, b = c.make_kube("a"), c.make_kube("b")
            ip_a = kube.store.get(c.pods, NAMESPACE, "a")["status"]["podIP"]
            assert await a.acquire_leader()
            endpoints = kube.store.get(c.lock_res, NAMESPACE, c.cluster)
            assert endpoints["subsets"][0]["addresses"][0]["ip"] == ip_a
            assert endpoints["subsets"][0]["ports"][0]["port"] == 5432
            await a.release_leader()
            endpoints = kube.store.get(c.lock_res, NAMESPACE, c.cluster)
            assert not endpoints.get("subsets")
            assert await b.acquire_leader()
            ip_b = kube.store.get(c.pods, NAMESPACE, "b")["status"]["podIP"]
            endpoints = kube.store.get(c.lock_res, NAMESPACE, c.cluster)
            assert [a["ip"] for s in endpoints["subsets"] for a in s["addresses"]] == [ip_b]
        finally:
            await c.close()


async def test_lease_mode_keeps_the_endpointslice_on_the_leader_and_clears_it_on_release(
    kube: KubeApiServer,
) -> None:
    async with BlackHole() as hole:
        c = KubeContractCluster(kube, LockKind.LEASE, hole)
        try:
            a = c.make_kube("a")
            slices = kube.store_resource("endpointslices", "discovery.k8s.io")
            ip_a = kube.store.get(c.pods, NAMESPACE, "a")["status"]["podIP"]
            assert await a.acquire_leader()
            lease = kube.store.get(c.lock_res, NAMESPACE, c.lock_name)
            assert lease["spec"]["holderIdentity"] == "a"
            assert lease["spec"]["leaseDurationSeconds"] == 3
            es = kube.store.get(slices, NAMESPACE, c.cluster)
            assert es["metadata"]["labels"]["kubernetes.io/service-name"] == c.cluster
            assert es["addressType"] == "IPv4"
            assert [e["addresses"] for e in es["endpoints"]] == [[ip_a]]
            await a.release_leader()
            es = kube.store.get(slices, NAMESPACE, c.cluster)
            assert es["endpoints"] == []
            assert (
                "holderIdentity" not in kube.store.get(c.lock_res, NAMESPACE, c.lock_name)["spec"]
            )
        finally:
            await c.close()


async def test_a_failed_endpointslice_write_is_retried_by_the_next_renewal(
    kube: KubeApiServer,
) -> None:
    async with BlackHole() as hole:
        c = KubeContractCluster(kube, LockKind.LEASE, hole)
        try:
            a = c.make_kube("a")
            slices = kube.store_resource("endpointslices", "discovery.k8s.io")
            kube.faults.set(
                Fault(mode=FaultMode.ERROR, status=503, path_prefix="/apis/discovery.k8s.io")
            )
            assert await a.acquire_leader()  # the lock is ours even if the slice failed
            with pytest.raises(ApiError):
                kube.store.get(slices, NAMESPACE, c.cluster)
            kube.faults.clear()
            assert await a.renew_leader()
            assert kube.store.get(slices, NAMESPACE, c.cluster)["endpoints"]
        finally:
            await c.close()


async def test_a_hung_endpointslice_write_keeps_acquire_inside_its_deadline(
    kube: KubeApiServer,
) -> None:
    async with BlackHole() as hole:
        c = KubeContractCluster(kube, LockKind.LEASE, hole)
        try:
            a = c.make_kube("a", timeout_s=0.5)
            slices = kube.store_resource("endpointslices", "discovery.k8s.io")
            kube.faults.set(Fault(mode=FaultMode.HANG, path_prefix="/apis/discovery.k8s.io"))
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await a.acquire_leader()  # the lock is ours; the slice write gave up
            assert loop.time() - started < 0.8
            kube.faults.clear()
            assert await a.renew_leader()
            assert kube.store.get(slices, NAMESPACE, c.cluster)["endpoints"]
        finally:
            await c.close()


# --------------------------------------------------------------------------- conflicts


@pytest.mark.parametrize("lock", [LockKind.ENDPOINTS, LockKind.LEASE])
async def test_conflicting_writes_of_two_agents_are_resolved_by_resource_version(
    kube: KubeApiServer, lock: LockKind
) -> None:
    async with BlackHole() as hole:
        c = KubeContractCluster(kube, lock, hole)
        try:
            a, b = c.make_kube("a"), c.make_kube("b")
            # Different records on the one ConfigMap: each 409 is retried, both land.
            results = await asyncio.gather(
                *(
                    h.write_record(kind, "{}", expected_version=None)
                    for h, kind in ((a, RecordKind.CONFIG), (b, RecordKind.HISTORY))
                    for _ in range(3)
                )
            )
            assert results.count(True) == 2
            view = await a.get_cluster()
            assert view.config.version != "" and view.history_version != ""
            # The same record at the same version: exactly one wins.
            version = view.history_version
            raced = await asyncio.gather(
                a.write_record(RecordKind.HISTORY, "[]", expected_version=version),
                b.write_record(RecordKind.HISTORY, "[]", expected_version=version),
            )
            assert sorted(raced) == [False, True]
            # Someone else annotates the lock object: the holder's renewal still succeeds,
            # the other member's acquire still fails.
            assert await a.acquire_leader()

            def touch(obj: dict[str, Any]) -> None:
                obj["metadata"].setdefault("annotations", {})["example.com/x"] = "1"

            c._modify(c.lock_res, c.lock_name, touch)
            assert await a.renew_leader()
            assert not await b.acquire_leader()
            assert (await b.get_cluster()).leader is not None
        finally:
            await c.close()


async def test_of_two_members_taking_over_a_lapsed_leader_only_one_wins(
    kube: KubeApiServer,
) -> None:
    async with BlackHole() as hole:
        c = KubeContractCluster(kube, LockKind.LEASE, hole)
        try:
            a, b, d = c.make_kube("a"), c.make_kube("b"), c.make_kube("d")
            assert await a.acquire_leader()
            await b.get_cluster()
            await d.get_cluster()
            await asyncio.sleep(TTL_S + 0.2)
            results = await asyncio.gather(b.acquire_leader(), d.acquire_leader())
            assert sorted(results) == [False, True]
            assert not await a.renew_leader()
        finally:
            await c.close()


@pytest.mark.parametrize("lock", [LockKind.ENDPOINTS, LockKind.LEASE])
async def test_renewals_keep_the_leader_alive_for_watchers_without_waking_them(
    kube: KubeApiServer, lock: LockKind
) -> None:
    async with BlackHole() as hole:
        c = KubeContractCluster(kube, lock, hole)
        try:
            a, b = c.make_kube("a"), c.make_kube("b")
            assert await a.acquire_leader()
            await b.get_cluster()
            assert await b.wait_for_change(0.3) is False  # b starts watching; a leads already
            # Renew every ttl/4 for more than a ttl while b only waits (no reads): the
            # renewals restart b's expiry clock through the watch, and never wake it.
            loop = asyncio.get_running_loop()
            until = loop.time() + TTL_S * 1.5
            while loop.time() < until:
                assert await b.wait_for_change(TTL_S / 4) is False
                assert await a.renew_leader()
            view = await b.get_cluster()
            assert view.leader is not None and view.leader.name == "a"
            assert not await b.acquire_leader()
        finally:
            await c.close()


async def test_the_leader_record_lives_on_renewals_alone_and_goes_a_ttl_after_the_last(
    kube_dcs: KubeContractCluster,
) -> None:
    """The leader does not heartbeat its unchanged member record while it renews: each
    renewal restarts the record's clock for observers watching (b) or reading the server
    every time (c), and once renewals stop the record goes a ttl after the last, with the
    lock. Every lock kind."""
    c, loop = kube_dcs, asyncio.get_running_loop()
    # A short request timeout leaves a heartbeat period (1.25 s) inside the ttl of 2.5 s.
    a, b, reader = (c.make_kube(name, timeout_s=0.5) for name in ("a", "b", "c"))
    await a.publish_member(member("a"))
    await b.publish_member(member("b"))
    assert await a.acquire_leader()
    await b.wait_for_change(0.01)  # b's watches run from here; c never starts its own

    def pod_version() -> str:
        return str(c.server.store.get(c.pods, NAMESPACE, "a")["metadata"]["resourceVersion"])

    written = pod_version()
    until = loop.time() + 1.5 * TTL_S
    while loop.time() < until:  # as the HA loop does: renew, read, publish
        assert await a.renew_leader()
        last = loop.time()
        assert (await a.get_cluster()).member("a") is not None
        await a.publish_member(member("a"))
        await b.publish_member(member("b"))
        assert (await b.get_cluster()).member("a") is not None
        assert (await reader.get_cluster()).member("a") is not None
        await asyncio.sleep(0.3)
    assert pod_version() == written, "the leader wrote its unchanged record"
    # a stops (dead); b and c keep its record until a ttl after the last renewal, no longer.
    await asyncio.sleep(last + TTL_S - 1.0 - loop.time())
    for observer in (b, reader):
        assert (await observer.get_cluster()).member("a") is not None
    await asyncio.sleep(last + TTL_S + c.expiry_slack_s - loop.time())
    for observer in (b, reader):
        view = await observer.get_cluster()
        assert view.member("a") is None and view.leader is None


async def test_a_leader_whose_record_writes_fail_renews_without_vouching_for_its_record(
    kube_dcs: KubeContractCluster,
) -> None:
    """While the leader's pod writes fail and its renewals go through, the record its pod
    still shows (here an old WAL position; an old role or state alike) goes from the
    observers' views a ttl after they last saw it written or vouched for, as before renewals
    vouched (review hreview3 finding 3); once a write goes through, renewals vouch again and
    the leader stops heartbeating. Every lock kind."""
    c, loop = kube_dcs, asyncio.get_running_loop()
    a, b = (c.make_kube(name, timeout_s=0.5) for name in ("a", "b"))
    await a.publish_member(member("a"))
    await b.publish_member(member("b"))
    assert await a.acquire_leader()
    vouched_at = loop.time()  # b's clock for a's record restarts no later than this
    await b.wait_for_change(0.01)
    pod_a = f"/api/v1/namespaces/{NAMESPACE}/pods/a"
    c.server.faults.set(Fault(mode=FaultMode.ERROR, status=500, path_prefix=pod_a))
    with pytest.raises(DcsUnavailable):
        await a.publish_member(member("a", wal_lsn=16))
    until = vouched_at + TTL_S + c.expiry_slack_s
    while loop.time() < until + 1.0:  # as the HA loop does: renew, read, publish
        assert await a.renew_leader()
        await b.publish_member(member("b"))
        view = await b.get_cluster()
        assert view.leader is not None, "the lock lapsed"
        if loop.time() < vouched_at + TTL_S - 1.0:
            assert view.member("a") is not None
        elif loop.time() > until:
            assert view.member("a") is None, "renewals vouched for a record behind"
        await asyncio.sleep(0.3)
    c.server.faults.clear()
    await a.publish_member(member("a", wal_lsn=16))
    written = c.server.store.get(c.pods, NAMESPACE, "a")["metadata"]["resourceVersion"]
    until = loop.time() + 1.5 * TTL_S
    while loop.time() < until:
        assert await a.renew_leader()
        await a.get_cluster()  # the leader sees its peers live: it lets renewals vouch
        await a.publish_member(member("a", wal_lsn=16))
        await b.publish_member(member("b"))
        member_a = (await b.get_cluster()).member("a")
        assert member_a is not None and member_a.wal_lsn == 16
        await asyncio.sleep(0.3)
    pod = c.server.store.get(c.pods, NAMESPACE, "a")
    assert pod["metadata"]["resourceVersion"] == written, "renewals vouch no more"


# --------------------------------------------------------------------------- watch trouble


@pytest.mark.parametrize("abrupt", [False, True])
async def test_a_cut_watch_is_resumed_and_later_changes_still_wake(
    kube: KubeApiServer, abrupt: bool
) -> None:
    async with BlackHole() as hole:
        c = KubeContractCluster(kube, LockKind.ENDPOINTS, hole)
        try:
            a, b = c.make_kube("a"), c.make_kube("b")
            await b.get_cluster()
            assert await b.wait_for_change(0.2) is False
            await kube.wait_for_watches(3)
            assert kube.cut_watches(abrupt=abrupt) >= 3
            assert await a.acquire_leader()
            assert await b.wait_for_change(3.0) is True
            assert await a.write_record(RecordKind.CONFIG, "{}", expected_version=None)
            assert await b.wait_for_change(3.0) is True
        finally:
            await c.close()


async def test_a_410_on_resume_relists_and_wakes(kube: KubeApiServer) -> None:
    async with BlackHole() as hole:
        c = KubeContractCluster(kube, LockKind.ENDPOINTS, hole)
        try:
            a, b = c.make_kube("a"), c.make_kube("b")
            await b.get_cluster()
            assert await b.wait_for_change(0.2) is False
            await kube.wait_for_watches(3)
            # Changes while the watches are down, then history gone: resuming gets 410.
            kube.faults.set(Fault(mode=FaultMode.ERROR, status=503, path_prefix="/api"))
            kube.cut_watches(abrupt=True)
            kube.faults.clear()
            await c_write_leader_raw(c, "x")
            kube.store.compact()
            assert await b.wait_for_change(5.0) is True
            view = await b.get_cluster()
            assert view.leader is not None and view.leader.name == "x"
            # And the re-listed watches deliver what comes next.
            await c.write_raw("leader", None)
            assert await a.write_record(RecordKind.CONFIG, "{}", expected_version=None)
            assert await b.wait_for_change(3.0) is True
        finally:
            await c.close()


async def c_write_leader_raw(c: KubeContractCluster, name: str) -> None:
    await c.write_raw("leader", name.encode())


async def test_a_watch_that_ends_on_its_timeout_is_restarted(kube: KubeApiServer) -> None:
    async with BlackHole() as hole:
        c = KubeContractCluster(kube, LockKind.ENDPOINTS, hole)
        try:
            a = c.make_kube("a")
            b = KubernetesDcs(
                client_factory=url_factory(kube.url),
                namespace=NAMESPACE,
                cluster=c.cluster,
                member_name="b",
                ttl_s=TTL_S,
                timeout_s=TIMEOUT_S,
                lock=LockKind.ENDPOINTS,
                watch_timeout_s=1,
            )
            c.handles.append(b)
            await b.get_cluster()
            assert await b.wait_for_change(1.5) is False  # the watches ended and restarted
            assert await a.acquire_leader()
            assert await b.wait_for_change(3.0) is True
            watches = [e for e in kube.audit.records if e.verb == "watch"]
            assert len(watches) >= 4
        finally:
            await c.close()


# --------------------------------------------------------------------------- faults


async def test_a_hung_api_server_gives_dcs_unavailable_within_the_deadline(
    kube: KubeApiServer,
) -> None:
    async with BlackHole() as hole:
        c = KubeContractCluster(kube, LockKind.ENDPOINTS, hole)
        try:
            a = c.make_kube("a", timeout_s=0.5)
            assert await a.acquire_leader()
            kube.faults.set(Fault(mode=FaultMode.HANG))
            loop = asyncio.get_running_loop()
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "get_cluster": a.get_cluster,
                "renew_leader": a.renew_leader,
                "publish_member": lambda: a.publish_member(member("a")),
                "write_record": lambda: a.write_record(
                    RecordKind.CONFIG, "{}", expected_version=None
                ),
                "release_leader": a.release_leader,
            }
            for name, call in calls.items():
                started = loop.time()
                with pytest.raises(DcsUnavailable):
                    await asyncio.wait_for(call(), 5)
                assert loop.time() - started < 0.9, name
            kube.faults.clear()
            # Longer than the ttl without a renewal: the lease lapsed, the record is ours
            # to take back.
            assert not await a.renew_leader()
            assert await a.acquire_leader()
            assert await a.renew_leader()
        finally:
            await c.close()


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_server_errors_and_throttling_give_dcs_unavailable(
    kube: KubeApiServer, status: int
) -> None:
    async with BlackHole() as hole:
        c = KubeContractCluster(kube, LockKind.LEASE, hole)
        try:
            a = c.make_kube("a")
            kube.faults.set(Fault(mode=FaultMode.ERROR, status=status))
            for call in (a.get_cluster, a.acquire_leader, lambda: a.publish_member(member("a"))):
                with pytest.raises(DcsUnavailable, match=str(status)):
                    await call()
            kube.faults.clear()
            assert await a.acquire_leader()
        finally:
            await c.close()


# --------------------------------------------------------------------------- auth, config


async def test_tls_with_a_bearer_token_from_a_kubeconfig_works_and_a_bad_token_is_refused(
    tmp_path: Path,
) -> None:
    async with kube_server(tmp_path, tls=True, token="s3cret") as server:
        ca = tmp_path / "tls" / "kube-ca.pem"
        good = write_kubeconfig(
            tmp_path / "good.kubeconfig", url=server.url, ca_file=ca, token="s3cret"
        )
        bad = write_kubeconfig(
            tmp_path / "bad.kubeconfig", url=server.url, ca_file=ca, token="nope"
        )
        pods = server.store_resource("pods")
        server.store.create(pods, NAMESPACE, {"metadata": {"name": "a"}, "spec": {}})
        handles = [
            KubernetesDcs(
                client_factory=client_factory(str(path)),
                namespace=NAMESPACE,
                cluster="tls",
                member_name="a",
                ttl_s=TTL_S,
                timeout_s=TIMEOUT_S,
            )
            for path in (good, bad)
        ]
        try:
            assert await handles[0].acquire_leader()
            await handles[0].publish_member(member("a"))
            view = await handles[0].get_cluster()
            assert view.leader is not None and view.member("a") is not None
            with pytest.raises(DcsAuthError):
                await handles[1].get_cluster()
        finally:
            for handle in handles:
                await handle.close()


async def test_the_in_cluster_service_account_configuration_is_used_without_a_kubeconfig(
    tmp_path: Path,
) -> None:
    async with kube_server(tmp_path, tls=True, token="sa-token") as server:
        sa_dir = tmp_path / "serviceaccount"
        sa_dir.mkdir()
        (sa_dir / "token").write_text("sa-token")
        (sa_dir / "ca.crt").write_bytes((tmp_path / "tls" / "kube-ca.pem").read_bytes())
        environ = {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(server.port),
            SA_DIR_ENV: str(sa_dir),
        }
        api = await make_api_client(None, environ=environ)
        try:
            assert api.host == f"https://127.0.0.1:{server.port}"
        finally:
            await api.close()
        handle = KubernetesDcs(
            client_factory=client_factory(None, environ=environ),
            namespace=NAMESPACE,
            cluster="incluster",
            member_name="a",
            ttl_s=TTL_S,
            timeout_s=TIMEOUT_S,
        )
        try:
            assert await handle.write_record(RecordKind.CONFIG, "{}", expected_version=None)
            assert (await handle.get_cluster()).config.version != ""
            users = {r.user for r in server.audit.records if r.is_resource}
            assert users == {"admin"}
        finally:
            await handle.close()
        # Without the service account files, calls fail as unavailable, in time.
        missing = KubernetesDcs(
            client_factory=client_factory(None, environ={SA_DIR_ENV: str(tmp_path / "none")}),
            namespace=NAMESPACE,
            cluster="incluster",
            member_name="a",
            ttl_s=TTL_S,
            timeout_s=TIMEOUT_S,
        )
        with pytest.raises(DcsUnavailable, match="configuration"):
            await missing.get_cluster()
        await missing.close()
