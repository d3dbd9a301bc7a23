"""`KubernetesDcs`: the DCS protocol (base.py) over the Kubernetes API, composed of the
parts of this package (see its docstring for where each record lives). This class does the
protocol's reads and writes and keeps this handle's lock state; the lock object, expiry,
routing, records, watches and transport are its collaborators."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import structlog

from agent.clock import Clock, SystemClock
from agent.config import LockKind, Settings
from agent.dcs import keys
from agent.dcs.base import DcsUnavailable
from agent.dcs.changes import ChangeTracker
from agent.dcs.kubernetes.api import ClientFactory, KubeApi, bounded, expect
from agent.dcs.kubernetes.expiry import ObservedExpiry
from agent.dcs.kubernetes.guard import EndpointsGuard
from agent.dcs.kubernetes.holding import Body, LockHolder, Renewal
from agent.dcs.kubernetes.locks import EndpointsLock, LockObject, lock_objects
from agent.dcs.kubernetes.objects import (
    KubeObject,
    cluster_selector,
    hash_version,
    member_entry,
    member_patch,
    micro_time,
    name_of,
    pod_ip_of,
    resource_version,
    to_bytes,
)
from agent.dcs.kubernetes.records import ConfigRecords, record_items
from agent.dcs.kubernetes.routing import EndpointSliceRouter
from agent.dcs.kubernetes.watches import WATCH_TIMEOUT_S, ClusterWatches, Watched
from agent.model import ClusterView, Member, RecordKind

# The HA loop bounds each DCS call by `retry_timeout_s`; ours is shorter, so that the loop
# hears `DcsUnavailable` with its reason from us rather than a bare timeout of its own.
_REQUEST_SHARE_OF_RETRY_TIMEOUT = 0.9
_HEARTBEAT_SHARE_OF_TTL = 1 / 3

Items = list[tuple[str, bytes, str]]


class KubernetesDcs:
    """One member's handle on one cluster in the Kubernetes API. See the package docstring."""

    def __init__(
        self,
        *,
        client_factory: ClientFactory,
        namespace: str,
        cluster: str,
        member_name: str,
        ttl_s: float,
        timeout_s: float,
        lock: LockKind = LockKind.LEASE,
        pod_name: str | None = None,
        pod_ip: str | None = None,
        pg_port: int = 5432,
        labels: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        watch_timeout_s: int = WATCH_TIMEOUT_S,
    ) -> None:
        if ttl_s <= 0 or timeout_s <= 0:
            raise ValueError("ttl_s and timeout_s must be positive")
        self._api = KubeApi(client_factory, timeout_s=timeout_s)
        self._cluster = cluster
        self._name = member_name
        self._pod = pod_name or member_name
        self._pod_ip = pod_ip
        self._lock_kind = lock
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._clock: Clock = clock or SystemClock()
        self._log = structlog.get_logger("pgwarden.dcs").bind(
            backend="kubernetes", cluster=cluster, member=member_name, lock=lock.value
        )
        self._pods_path = f"/api/v1/namespaces/{namespace}/pods"
        self._selector = cluster_selector(labels or {}, cluster)
        self._expiry = ObservedExpiry(ttl_s)
        self._changes = ChangeTracker(self._clock, timers=self._expiry)
        self._holders = tuple(
            LockHolder(
                self._api,
                lock_obj,
                member=member_name,
                expiry=self._expiry,
                changes=self._changes,
                log=self._log,
            )
            for lock_obj in lock_objects(
                lock,
                namespace=namespace,
                cluster=cluster,
                ttl_s=ttl_s,
                pod=self._pod,
                pg_port=pg_port,
            )
        )
        # The Lease alone: never taken while an `endpoints` agent leads (guard.py).
        self._guard = (
            EndpointsGuard(
                self._api,
                EndpointsLock(
                    namespace=namespace,
                    cluster=cluster,
                    ttl_s=ttl_s,
                    pod=self._pod,
                    pg_port=pg_port,
                ),
                member=member_name,
                ttl_s=ttl_s,
                clock=self._clock,
                log=self._log,
            )
            if lock is LockKind.LEASE
            else None
        )
        # An EndpointSlice to keep unless every lock object routes in its own write.
        self._slice = not all(h.lock.routes for h in self._holders)
        self._records = ConfigRecords(self._api, namespace=namespace, cluster=cluster)
        self._router = EndpointSliceRouter(
            self._api,
            namespace=namespace,
            cluster=cluster,
            pod=self._pod,
            pg_port=pg_port,
            log=self._log,
        )
        self._holding = False
        self._last_renew_sent = 0.0  # monotonic send time of the last successful acquire/renew
        self._published: tuple[str, float] | None = None  # (payload, monotonic write time)
        self._watches = ClusterWatches(
            self._api,
            pods=(self._pods_path, self._selector),
            locks=tuple((h.lock, h.key) for h in self._holders),
            config=self._records,
            tracker=self._changes,
            expiry=self._expiry,
            clock=self._clock,
            log=self._log,
            timeout_s=timeout_s,
            watch_timeout_s=watch_timeout_s,
            task_suffix=member_name,
            # Every member heartbeats at least every ttl/3: twice that without a pod event
            # means the stream may have died silently.
            pods_quiet_s=2 * ttl_s * _HEARTBEAT_SHARE_OF_TTL,
        )
        self._closed = False

    @classmethod
    def from_settings(
        cls, settings: Settings, *, client_factory: ClientFactory, clock: Clock
    ) -> KubernetesDcs:
        k8s = settings.dcs.kubernetes
        if k8s is None:
            raise ValueError("dcs.kubernetes: required when dcs.kind is kubernetes")
        return cls(
            client_factory=client_factory,
            namespace=k8s.namespace,
            cluster=settings.cluster,
            member_name=settings.name,
            ttl_s=settings.timing.ttl_s,
            timeout_s=settings.timing.retry_timeout_s * _REQUEST_SHARE_OF_RETRY_TIMEOUT,
            lock=k8s.lock,
            pod_name=k8s.pod_name,
            pod_ip=k8s.pod_ip,
            pg_port=settings.postgresql.port,
            labels=dict(k8s.labels),
            clock=clock,
        )

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    @property
    def lock_kind(self) -> LockKind:
        return self._lock_kind

    # ------------------------------------------------------------------ the protocol

    async def get_cluster(self) -> ClusterView:
        async with self._request("get_cluster"):
            cached = self._watches.cached()
            if cached is not None:
                # Pods and ConfigMap as the watches keep them (cache.py); the lock object
                # from the server: leadership is judged by it, and it proves the server
                # answers (a handle that cannot reach it must fail here).
                pod_items, config = cached
                locks = [await self._api.get(h.lock.path()) for h in self._holders]
                if not any(
                    obj is not None and h.lock.holder(obj)
                    for h, obj in zip(self._holders, locks, strict=True)
                ):
                    # No leader: this read may start a race judged by the ConfigMap's
                    # records (sync, failsafe, switchover), which a stream that died silently
                    # (found only at its timeoutSeconds) could show stale: from the server.
                    pod_items, locks, config = await self._read_all()
            else:
                pod_items, locks, config = await self._read_all()
        now = self._clock.monotonic()
        items = self._member_items(pod_items, now)
        items += self._leader_items(locks, now)
        items += record_items(config)
        return keys.to_view(items, self._log)

    async def _read_all(self) -> tuple[list[Any], list[KubeObject | None], KubeObject | None]:
        """The pods, lock objects and ConfigMap from the server."""
        # The list first: a change after it is delivered by a watch started at its
        # resourceVersion, even if the reads below already show it (a spurious wake).
        pods = await self._api.call("GET", self._pods_path, query={"labelSelector": self._selector})
        if pods.status != 200:
            raise DcsUnavailable(f"listing pods: HTTP {pods.status}")
        locks = [await self._api.get(h.lock.path()) for h in self._holders]
        config = await self._api.get(self._records.path())
        pod_items: list[Any] = pods.obj.get("items") or []
        self._watches.first_read(resource_version(pods.obj), pod_items, locks, config)
        return pod_items, locks, config

    async def acquire_leader(self) -> bool:
        async with self._write("acquire_leader"):
            sent = self._clock.monotonic()
            if self._guard is not None and not await self._guard.allows():
                return False
            body = self._lock_body(await self._own_ip())
            for i, holder in enumerate(self._holders):
                if not await holder.take(body, sent=sent, now=self._clock.monotonic()):
                    # Never keep part of a lock: give back what this attempt took.
                    for taken in self._holders[:i]:
                        await taken.release(body)
                    return False
            self._holding = True
            self._last_renew_sent = sent
        if self._slice:
            self._router.mark_dirty()
            await self._route(started=sent)
        return True

    async def renew_leader(self) -> bool:
        async with self._write("renew_leader"):
            sent = self._clock.monotonic()
            if not self._holding:
                return False
            if sent - self._last_renew_sent >= self._ttl_s:
                # Our lease has lapsed in the others' eyes: never write the record back.
                self._lost("lease lapsed before renewal")
                return False
            body = self._lock_body(await self._own_ip())
            for holder in self._holders:
                renewal = await holder.renew(body, now=self._clock.monotonic())
                if renewal is Renewal.LOST:
                    self._lost("leader record taken or deleted")
                    return False
                if renewal is Renewal.CONFLICT:
                    return False
            self._last_renew_sent = sent
        if self._router.is_dirty:
            await self._route(started=sent)
        return True

    async def release_leader(self) -> None:
        started = self._clock.monotonic()
        async with self._write("release_leader"):
            body = self._lock_body(None)
            for holder in self._holders:
                await holder.release(body)
            self._holding = False
        if self._slice:
            self._router.mark_dirty()
            await self._route(started=started)

    async def publish_member(self, member: Member) -> None:
        payload = member.to_json()
        async with self._write("publish_member"):
            now = self._clock.monotonic()
            if (
                self._published is not None
                and self._published[0] == payload
                and now - self._published[1] < self._ttl_s * _HEARTBEAT_SHARE_OF_TTL
            ):
                return  # unchanged and recently written: the heartbeat is still fresh
            heartbeat = micro_time(self._clock.wall())
            patch = member_patch(self._cluster, self._name, payload, heartbeat=heartbeat)
            response = await self._api.call(
                "PATCH",
                f"{self._pods_path}/{self._pod}",
                body=patch,
                content_type="application/merge-patch+json",
            )
            if response.status == 404:
                raise DcsUnavailable(f"kubernetes: publish_member: pod {self._pod} not found")
            expect(response, 200)
            self._changes.own(resource_version(response.obj))
            self._watches.caches[Watched.PODS].own_write(resource_version(response.obj))
            self._published = (payload, now)
            if self._pod_ip is None:
                self._pod_ip = pod_ip_of(response.obj)

    async def write_record(
        self, kind: RecordKind, value: str | None, *, expected_version: str | None
    ) -> bool:
        expected = keys.expected_version(expected_version)

        def own(rv: int) -> None:
            self._changes.own(rv)
            self._watches.caches[Watched.CONFIG].own_write(rv)

        async with self._write("write_record"):
            return await self._records.compare_and_set(kind, value, expected, own=own)

    async def wait_for_change(self, timeout_s: float) -> bool:
        if self._closed:
            await asyncio.sleep(timeout_s)
            return False
        self._watches.ensure()
        return await self._changes.wait(timeout_s)

    async def close(self) -> None:
        """Stop the watches and close the client. The leader record is left as it is (a clean
        shutdown releases it first); others see it lapse after the ttl."""
        self._closed = True
        await self._watches.close()
        await self._api.close()

    # ------------------------------------------------------------------ reading

    def _member_items(self, pods: list[Any], now: float) -> Items:
        """The member records carried by `pods` that are not expired on our clock."""
        items: Items = []
        mine: str | None = None
        present: set[str] = set()
        for pod in pods:
            entry = member_entry(pod)
            if entry is None:
                continue
            name, value, token = entry
            key = keys.member_key(name)
            present.add(key)
            if name_of(pod) == self._pod:
                mine = value
            fresh = self._expiry.note(key, token, resource_version(pod), now, source=name_of(pod))
            if fresh:
                items.append((key, to_bytes(value), hash_version(value)))
        # Pods or records that went away: nothing left to expire.
        self._expiry.forget_all_but(present, prefix=keys.MEMBERS)
        if mine is None or (self._published is not None and self._published[0] != mine):
            self._published = None  # removed or rewritten behind our back: publish again
        return items

    # ------------------------------------------------------------------ the lock

    def _lock_body(self, ip: str | None) -> Body:
        """The lock objects' writer for this operation (`ip`: ours, where they route)."""
        now = micro_time(self._clock.wall())

        def body(current: KubeObject | None, holder: str | None, lock: LockObject) -> KubeObject:
            return lock.body(current, holder=holder, ip=ip if holder else None, now=now)

        return body

    def _leader_items(self, locks: list[KubeObject | None], now: float) -> Items:
        """The leader record: the holder named by the lock objects (one, or during a
        migration two, which name the same member unless an agent of the old kind took the
        Endpoints alone; then the Endpoints' holder is the leader the old agents follow)."""
        found: Items = []
        for holder, obj in zip(self._holders, locks, strict=True):
            found += leader_items(holder.lock, holder.key, obj, self._expiry, now)
        names = {value for _, value, _ in found}
        if len(names) > 1:
            holders = sorted(n.decode() for n in names)
            self._log.warning("dcs_lock_objects_disagree", holders=holders)
        return found[:1]

    def _lost(self, why: str) -> None:
        if self._holding:
            self._log.warning("dcs_leader_lost", reason=why)
        self._holding = False
        for holder in self._holders:
            holder.obj = None

    async def _own_ip(self) -> str | None:
        if self._pod_ip is None:
            pod = await self._api.get(f"{self._pods_path}/{self._pod}")
            self._pod_ip = pod_ip_of(pod) if pod is not None else None
            if self._pod_ip is None:
                self._log.warning("dcs_pod_ip_unknown", pod=self._pod)
        return self._pod_ip

    async def _route(self, *, started: float) -> None:
        """Point the EndpointSlice at us (holding) or at nobody, within what is left of the
        calling operation's deadline (which began at `started`), so that the whole call
        stays bounded by `timeout_s`."""

        async def address() -> str | None:
            return await self._own_ip() if self._holding else None

        budget_s = self._timeout_s - (self._clock.monotonic() - started)
        await self._router.sync(address, budget_s)

    # ------------------------------------------------------------------ requests

    @contextlib.asynccontextmanager
    async def _request(self, what: str) -> AsyncIterator[None]:
        """One public call: bounded by the deadline; every failure becomes DcsUnavailable."""
        if self._closed:
            raise DcsUnavailable(f"kubernetes: {what}: this DCS handle is closed")
        async with bounded(what, self._timeout_s):
            yield

    @contextlib.asynccontextmanager
    async def _write(self, what: str) -> AsyncIterator[None]:
        """A public call that may write: its resourceVersions are ours, not changes."""
        with self._changes.writing():
            async with self._request(what):
                yield


def leader_items(
    lock: LockObject, key: str, obj: KubeObject | None, expiry: ObservedExpiry, now: float
) -> Items:
    """The leader record `obj` holds, unless it names nobody or is expired on our clock
    (which this observation restarts when the record changed)."""
    if obj is None:
        return []
    holder = lock.holder(obj)
    if not holder:
        expiry.forget(key)
        return []
    rv = resource_version(obj)
    if not expiry.note(key, str(rv), rv, now):
        return []
    return [(keys.LEADER, to_bytes(holder), str(rv))]
