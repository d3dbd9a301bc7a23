"""`KubernetesDcs`: the DCS protocol (base.py) over the Kubernetes API, composed of the
parts of this package (see its docstring for where each record lives). This class does the
protocol's reads and writes and keeps this handle's lock state; the lock object, expiry,
routing, records, watches and transport are its collaborators."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import structlog

from agent.clock import Clock, SystemClock
from agent.config import LockKind, Settings
from agent.dcs import keys
from agent.dcs.base import DcsUnavailable
from agent.dcs.changes import ChangeTracker
from agent.dcs.heartbeat import heartbeat_interval
from agent.dcs.kubernetes.api import ClientFactory, KubeApi, Throttled, bounded
from agent.dcs.kubernetes.expiry import ObservedExpiry
from agent.dcs.kubernetes.guard import EndpointsGuard
from agent.dcs.kubernetes.holding import (
    LockHolder,
    Renewal,
    lock_body,
    says_throttled,
    view_leader_items,
)
from agent.dcs.kubernetes.locks import EndpointsLock, lock_objects
from agent.dcs.kubernetes.members import MemberRecords
from agent.dcs.kubernetes.objects import (
    KubeObject,
    cluster_selector,
    labels_of,
    name_of,
    pod_ip_of,
    resource_version,
)
from agent.dcs.kubernetes.records import ConfigRecords, record_items
from agent.dcs.kubernetes.routing import EndpointSliceRouter
from agent.dcs.kubernetes.throttle import ThrottleState
from agent.dcs.kubernetes.turns import RaceTurns
from agent.dcs.kubernetes.watches import WATCH_TIMEOUT_S, ClusterWatches
from agent.model import ClusterView, Member, RecordKind

# The HA loop bounds each DCS call by `retry_timeout_s`; ours is shorter, so that the loop
# hears `DcsUnavailable` with its reason from us rather than a bare timeout of its own.
_REQUEST_SHARE_OF_RETRY_TIMEOUT = 0.9
_LOOP_WAIT_SHARE_OF_TTL = 0.2  # the default timings' ratio, when the caller gives none
# The longest pause of deferred requests after 429s (throttle.py), in ttls: long enough that a
# throttled fleet's heartbeats leave the Lease renewals room, short enough that a member
# record comes back within a few ttls once the server has room again.
_MAX_PAUSE_TTLS = 5.0
# The shortest: a heartbeat comes about every ttl/2, so a pause of a ttl skips one at least.
_MIN_PAUSE_TTLS = 2.0
_RENEWAL_ANSWER_S = 0.25  # a renewal's last send before its fencing deadline (throttle.py)

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
        loop_wait_s: float | None = None,
        fence_margin_s: float = 1.0,
    ) -> None:
        """`loop_wait_s`: how often the HA loop calls (it times the heartbeat and how long
        the watch caches may stay quiet); default a fifth of `ttl_s`. `fence_margin_s`: the
        HA loop's (its fencing deadline is a renewal's send time + ttl - margin), by which a
        renewal refused with a 429 is sent again (throttle.py)."""
        if ttl_s <= 0 or timeout_s <= 0:
            raise ValueError("ttl_s and timeout_s must be positive")
        loop_s = loop_wait_s if loop_wait_s is not None else ttl_s * _LOOP_WAIT_SHARE_OF_TTL
        self._clock: Clock = clock or SystemClock()
        self.throttle = self._throttle = ThrottleState(  # public: its totals are metrics
            clock=self._clock.monotonic,
            max_pause_s=_MAX_PAUSE_TTLS * ttl_s,
            min_pause_s=_MIN_PAUSE_TTLS * ttl_s,
        )
        self._api = KubeApi(
            client_factory,
            timeout_s=timeout_s,
            throttle=self._throttle,
            clock=self._clock.monotonic,
        )
        self._cluster = cluster
        self._name = member_name
        self._pod = pod_name or member_name
        self._pod_ip = pod_ip
        self._lock_kind = lock
        self._ttl_s, self._fence_margin_s = ttl_s, fence_margin_s
        self._timeout_s, self._loop_s = timeout_s, loop_s
        # The last read from the server (when, what): an acquire within a cycle writes over it.
        self._read_locks: tuple[float, list[KubeObject | None]] | None = None
        self._log = structlog.get_logger("pgwarden.dcs").bind(
            backend="kubernetes", cluster=cluster, member=member_name, lock=lock.value
        )
        self._pods_path = f"/api/v1/namespaces/{namespace}/pods"
        self._selector = cluster_selector(labels or {}, cluster)
        self._expiry = ObservedExpiry(ttl_s)
        self._parsed = keys.ViewCache(self._log)  # the last view, while its records are alike
        self._changes = ChangeTracker(self._clock, timers=self._expiry)

        def own_lock_write(lock_name: str) -> Callable[[int], None]:
            """What a lock holder tells of each of its writes: not a change, and its cache
            is not read until its watch shows that write."""

            def own(rv: int) -> None:
                self._changes.own(rv)
                self._watches.lock_cache(lock_name).own_write(rv)
                self._read_locks = None  # our write overtook the last read

            return own

        self._holders = tuple(
            LockHolder(
                self._api,
                lock_obj,
                member=member_name,
                expiry=self._expiry,
                own=own_lock_write(lock_obj.name),
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
        self._last_renew_sent = float("-inf")  # send time of the last acquire/renew that took
        self._heartbeat_s = heartbeat_interval(ttl_s, loop_s, timeout_s)
        # Read from the server at the next get_cluster: a request failed since the last read
        # from it (the caches may look fine while the server does not answer).
        self._suspect = False
        # Member records (key, expiry token) a read from the server showed expired: the
        # cached view may drop them without asking again.
        self._stale: set[tuple[str, str]] = set()
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
            # Pods and lock objects change on a schedule (heartbeats, renewals): a stream
            # silent for a ttl is resumed. The lock cache is trusted while the leader's
            # renewals keep coming (one per cycle); the pods cache while this member's own
            # heartbeat (or any pod event) came within its period and a cycle.
            steady_quiet_s=ttl_s,
            lock_quiet_s=loop_s + timeout_s,
            pods_quiet_s=self._heartbeat_s + loop_s + timeout_s,
        )

        def own_pod_write(rv: int) -> None:
            self._changes.own(rv)
            self._watches.pods_cache.own_write(rv)

        self._members = MemberRecords(
            self._api,
            pod_path=f"{self._pods_path}/{self._pod}",
            cluster=cluster,
            member=member_name,
            expiry=self._expiry,
            heartbeat_s=self._heartbeat_s,
            clock=self._clock,
            own=own_pod_write,
            renewed=lambda: self._last_renew_sent,  # each one vouches for our record
        )
        # What our lock writes tell the others (holding.py `lock_body`): refused lately, and
        # our record behind (its last write failed: the renewal vouches for no record).
        self._lock_says = (self._throttle.refused_lately, lambda: self._members.behind)
        self._turns = RaceTurns(member_name, turn_s=ttl_s / 2)  # leaderless reads, throttled
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
            loop_wait_s=settings.timing.loop_wait_s,
            fence_margin_s=settings.timing.fence_margin_s,
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
            trusted, leaderless = False, False
            recent = self._throttle.recent()  # quiet caches are expected (throttle.py)
            now = self._clock.monotonic()
            if (cached := self._watches.cached(lenient=recent)) is not None:
                # The watches' view (cache.py): no request, unless one failed since the last read.
                items, trusted = self._view_items(*cached, now)
                leaderless = not any(key == keys.LEADER for key, _, _ in items)
                trusted = trusted and not self._suspect
                self._turns.seen(leaderless, now)
            if not trusted:
                # While the server throttles, a read waits out the pause (throttle.py), or if
                # the view shows no live leader (a race for the lock starts from this read)
                # the last 429's Retry-After and this member's turn (turns.py); never sent
                # again inside the call.
                waits = not (leaderless and self._throttle.retry_after_over())
                if self._throttle.throttling() and waits:
                    left_s = self._throttle.pause_left_s()
                    raise Throttled(f"kubernetes: get_cluster: throttled, {left_s:.1f} s to wait")
                if cached is not None and leaderless and self._throttle.recent():
                    live = {k[len(keys.MEMBERS) :] for k, _, _ in items if keys.is_member_key(k)}
                    kinds = [h.lock for h in self._holders]
                    self._turns.wait(cached[0], kinds, cached[1], now, live=live)
                pods, locks, config = await self._read_all()
                self._suspect = False
                now = self._clock.monotonic()
                items, _ = self._view_items(pods, locks, config, now, from_server=True)
                self._turns.seen(not any(key == keys.LEADER for key, _, _ in items), now)
        view = self._parsed.view(items)
        self._members.in_sync_set = view.sync is not None and self._name in view.sync.members
        return view

    def _view_items(
        self,
        pods: list[Any],
        locks: list[KubeObject | None],
        config: KubeObject | None,
        now: float,
        *,
        from_server: bool = False,
    ) -> tuple[Items, bool]:
        """The view's records from these objects, and whether a view from what the watches
        kept may be trusted: not with no live leader (a race for the lock starts from this
        read and is judged by the ConfigMap's records, sync, failsafe, switchover, which a
        stream that died without a word could show stale), nor when a member record expires
        on them that the server has not shown expired (a stream that stopped would expire
        every member whose heartbeats it no longer delivers)."""
        leader = view_leader_items(self._holders, locks, self._expiry, now, self._log)
        if says_throttled(locks) and not (leader and leader[0][1] == self._name.encode()):
            # Its replicas defer too (throttle.py), and, its lease lapsed, read in turn (turns.py)
            # for as long as a 429 of their own would count (a stuck leaderless cluster must
            # not defer its heartbeats and keep its streams for ever).
            ages = [self._expiry.age_s(h.key, now) for h in self._holders]
            if leader or any(a is not None and a < self._throttle.max_pause_s for a in ages):
                self._throttle.told(self._ttl_s)
        members, stale = self._members.items(pods, now)
        if from_server:
            self._stale = stale
        # While the server throttles, members defer their heartbeats (throttle.py) and their
        # records expire: each expiry re-read from the server by every peer would take the
        # tokens the renewals need.
        trusted = bool(leader) and (stale <= self._stale or self._throttle.recent())
        return members + leader + record_items(config), trusted

    async def _read_all(self) -> tuple[list[Any], list[KubeObject | None], KubeObject | None]:
        """The pods, lock objects and ConfigMap from the server; a 429 fails it at once
        (throttle.py)."""
        # The list first: a change after it is delivered by a watch started at its
        # resourceVersion, even if the reads below already show it (a spurious wake).
        selector = {"labelSelector": self._selector}
        pods = await self._api.call("GET", self._pods_path, query=selector, resend=False)
        if pods.status != 200:
            raise DcsUnavailable(f"listing pods: HTTP {pods.status}")
        locks = [await self._api.get(h.lock.path(), resend=False) for h in self._holders]
        self._read_locks = (self._clock.monotonic(), locks)
        config = await self._api.get(self._records.path(), resend=False)
        pod_items: list[Any] = pods.obj.get("items") or []
        self._watches.first_read(resource_version(pods.obj), pod_items, locks, config)
        return pod_items, locks, config

    async def acquire_leader(self) -> bool:
        async with self._write("acquire_leader"):
            sent = self._clock.monotonic()
            if self._guard is not None and not await self._guard.allows():
                return False
            body = lock_body(self._clock.wall(), await self._own_ip(), *self._lock_says)
            read_at, read = self._read_locks or (float("-inf"), None)
            read, self._read_locks = read if sent - read_at <= self._loop_s else None, None
            for i, holder in enumerate(self._holders):
                seen = (read[i],) if read is not None else ()
                if not await holder.take(body, *seen, sent=sent, now=self._clock.monotonic()):
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
            body = lock_body(self._clock.wall(), await self._own_ip(), *self._lock_says)
            deadline = self._last_renew_sent + self._ttl_s - self._fence_margin_s
            for holder in self._holders:
                renewal = await holder.renew(
                    body, now=self._clock.monotonic(), send_by=deadline - _RENEWAL_ANSWER_S
                )
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
            body = lock_body(self._clock.wall(), None)
            for holder in self._holders:
                await holder.release(body)
            self._holding = False
        if self._slice:
            self._router.mark_dirty()
            await self._route(started=started)

    async def publish_member(self, member: Member) -> None:
        async with self._write("publish_member"):
            pod = await self._members.publish(member)
            if pod is not None and self._pod_ip is None:
                self._pod_ip = pod_ip_of(pod)

    async def write_record(
        self, kind: RecordKind, value: str | None, *, expected_version: str | None
    ) -> bool:
        expected = keys.expected_version(expected_version)

        def own(rv: int) -> None:
            self._changes.own(rv)
            self._watches.config_cache.own_write(rv)

        async with self._write("write_record"):
            return await self._records.compare_and_set(kind, value, expected, own=own)

    async def wait_for_change(self, timeout_s: float) -> bool:
        if self._closed:
            await asyncio.sleep(timeout_s)
            return False
        self._watches.ensure()
        return await self._changes.wait(timeout_s)

    def observed_pod_labels(self) -> dict[str, dict[str, str]] | None:
        """The labels of the cluster's member pods by name, as the pods watch last saw them;
        None while its cache cannot be trusted (cache.py) or a request failed since the last
        read. For the pod role labeler (agent/kube/labels.py): no request, no decision."""
        if self._suspect or not self._watches.pods_cache.usable(self._clock.monotonic()):
            return None
        return {name_of(pod): labels_of(pod) for pod in self._watches.pods_cache.objects()}

    async def close(self) -> None:
        """Stop the watches and close the client. The leader record is left as it is (a clean
        shutdown releases it first); others see it lapse after the ttl."""
        self._closed = True
        await self._watches.close()
        await self._api.close()

    # ------------------------------------------------------------------ the lock

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
        """One public call: bounded by the deadline; every failure becomes DcsUnavailable
        (and, unless the server answered 429, makes the next get_cluster read from it; also
        when the deadline ran out while a 429's Retry-After was waited out: at 100 clusters
        those re-reads were most of the load a throttling server got, bench/scale.py)."""
        if self._closed:
            raise DcsUnavailable(f"kubernetes: {what}: this DCS handle is closed")
        throttled_before = self._api.throttled
        try:
            async with bounded(what, self._timeout_s):
                yield
        except Throttled:
            raise  # the server answered: the caches stay as trusted as they were
        except DcsUnavailable as exc:
            if self._api.throttled > throttled_before:
                raise Throttled(f"kubernetes: {what}: throttled (429), {exc}") from exc
            self._suspect = True
            raise

    @contextlib.asynccontextmanager
    async def _write(self, what: str) -> AsyncIterator[None]:
        """A public call that may write: its resourceVersions are ours, not changes."""
        with self._changes.writing():
            async with self._request(what):
                yield
