"""Kubernetes backend: the API server is the DCS (no etcd). Every write is a conditional one.

Where the records live (namespace `namespace`, cluster `cluster`):
- Leader, lock kind `endpoints`: annotations of the Endpoints object `<cluster>` of the
  selector-less primary Service. The same conditional PUT (on metadata.resourceVersion) that
  names the leader puts the leader pod's IP and the PostgreSQL port into its `subsets`, so
  routing moves with leadership; a release empties them in the same write.
- Leader, lock kind `lease`: the coordination.k8s.io/v1 Lease `<cluster>-leader`
  (holderIdentity, leaseDurationSeconds, acquireTime, renewTime, leaseTransitions). The leader
  also keeps the EndpointSlice `<cluster>` (label kubernetes.io/service-name=<cluster>) on its
  own address: written after every acquire, emptied on release, retried on each renewal until
  it succeeds.
- Records (`RecordKind`): annotations `pgwarden.io/<kind>` of the ConfigMap `<cluster>-config`,
  each with a version annotation `pgwarden.io/<kind>.version` (a fresh random token per write).
  A write reads the ConfigMap, compares the record's token with the expected version, and
  PUTs the object conditional on its resourceVersion; a 409 (another record, or the same one,
  changed meanwhile) re-reads and compares again. So the compare-and-set is per record,
  exact, and atomic, while writes of different records only retry each other.
- Member records: annotation `pgwarden.io/member` on each member's own pod, written with a
  merge patch that also sets the label `pgwarden.io/cluster=<cluster>`. Members are the pods
  matching the configured cluster labels plus that label.

Versions: the leader's is the lock object's resourceVersion; a member's is a hash of its
record (so a heartbeat does not change it); a record's is its token.

Expiry is judged on this handle's own monotonic clock (DESIGN.md invariant 4), never from
renewTime: each handle remembers, for the leader record and for every member record, the
token it last saw and when it first saw it. A leader record unchanged for `ttl_s` reads as
no leader and may be taken over, with a write conditional on the stale resourceVersion, so
two takers cannot both win. Pods do not expire, so a member also writes a heartbeat annotation
(`pgwarden.io/heartbeat`) at least every `ttl_s / 3` even when its record is unchanged, and a
member whose record and heartbeat have not changed for `ttl_s` is dropped from the view, as
its key would expire in etcd: a dead agent's record must not look like a healthy replica. The
holder's own lease is judged from the send time of its last successful renewal: past `ttl_s`,
`renew_leader` answers False without writing.

Change notification (`wait_for_change`, base.py point 8): three named watch tasks (pods by
label selector, the lock object, the ConfigMap), each resumed from its last resourceVersion,
bounded by `timeoutSeconds` and restarted (a silently dead stream cannot hide changes for
longer than that); a 410 Expired re-lists and wakes the caller. The handle's own writes are
recognised by the resourceVersion they returned; member records wake only when their
signature (`keys.member_signature`: all but WAL positions) changes or they appear or vanish.
A lock write that keeps the holder (a renewal) wakes nobody: it only restarts the
observers' expiry clocks. Expiries seen on this handle's clock (leader or member) wake it
once each.

Every public call runs under one deadline (`timeout_s`, also the per-request timeout) and
raises `DcsUnavailable` (`DcsAuthError` on 401/403) for connection errors, timeouts, 5xx and
429. Constructing the handle does no I/O: the API client is built on the first call.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp
import structlog

from agent.clock import Clock, SystemClock
from agent.config import LockKind, Settings
from agent.dcs import keys
from agent.dcs.base import DcsAuthError, DcsError, DcsUnavailable
from agent.dcs.changes import Backoff, ChangeTracker, WatchResync, watch_forever
from agent.model import ClusterView, Member, RecordKind

ClientFactory = Callable[[], Awaitable[Any]]

ANNOTATION_PREFIX = "pgwarden.io/"
LEADER_ANNOTATION = "pgwarden.io/leader"
ACQUIRE_TIME_ANNOTATION = "pgwarden.io/acquire-time"
RENEW_TIME_ANNOTATION = "pgwarden.io/renew-time"
TTL_ANNOTATION = "pgwarden.io/ttl"
TRANSITIONS_ANNOTATION = "pgwarden.io/transitions"
MEMBER_ANNOTATION = "pgwarden.io/member"
MEMBER_NAME_ANNOTATION = "pgwarden.io/member-name"
HEARTBEAT_ANNOTATION = "pgwarden.io/heartbeat"
CLUSTER_LABEL = "pgwarden.io/cluster"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "pgwarden.io"
PORT_NAME = "postgresql"

# The HA loop bounds each DCS call by `retry_timeout_s`; ours is shorter, so that the loop
# hears `DcsUnavailable` with its reason from us rather than a bare timeout of its own.
_REQUEST_SHARE_OF_RETRY_TIMEOUT = 0.9
_WATCH_TIMEOUT_S = 30  # server-side end of each watch; the stream is then resumed
_WATCH_READ_GRACE_S = 10.0  # a stream silent for timeoutSeconds + this is dead
_CLOSE_TIMEOUT_S = 2.0
_WRITE_ATTEMPTS = 5  # conflicts on the ConfigMap caused by writes of other records
_HEARTBEAT_SHARE_OF_TTL = 1 / 3


def record_annotation(kind: RecordKind) -> str:
    return ANNOTATION_PREFIX + kind.value


def record_version_annotation(kind: RecordKind) -> str:
    return ANNOTATION_PREFIX + kind.value + ".version"


def to_bytes(text: str) -> bytes:
    """Annotation text back to the bytes a record was made of (lone surrogates stand for
    bytes that were not UTF-8, so such a value reads as corrupt, as it would from etcd)."""
    return text.encode("utf-8", errors="surrogateescape")


def _hash_version(text: str) -> str:
    return "h" + hashlib.sha256(to_bytes(text)).hexdigest()[:16]


def micro_time(epoch: float) -> str:
    """A Kubernetes MicroTime (RFC 3339, UTC, microseconds). Informational only: expiry is
    never judged from it (DESIGN.md invariant 4)."""
    whole = math.floor(epoch)
    micros = min(999_999, round((epoch - whole) * 1e6))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micros:06d}Z"


def _rv(obj: Mapping[str, Any]) -> int:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return 0
    try:
        return int(meta.get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _annotations(obj: Mapping[str, Any] | None) -> dict[str, str]:
    if obj is None:
        return {}
    meta = obj.get("metadata")
    raw = meta.get("annotations") if isinstance(meta, dict) else None
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, str)}


class _Watched(StrEnum):
    PODS = "pods"
    LOCK = "lock"
    CONFIG = "config"


@dataclass(slots=True, kw_only=True)
class _Seen:
    """What this handle last saw of a leader or member record, on its own clock."""

    token: str
    rv: int
    first_seen: float  # monotonic, when `token` was first seen
    expiry_told: bool = False


class ObservedExpiry:
    """Expiry of records judged on the observer's own monotonic clock (DESIGN.md invariant
    4), never from timestamps written by others: a record whose token has not changed for
    `ttl_s` since this observer first saw it is expired. Pure: every time is passed in.

    Keys are record keys (`leader`, `members/<name>`); a token is whatever changes when the
    writer renews (the leader's resourceVersion, a member's record and heartbeat); `rv`
    orders observations, so that an older one read late never restarts a newer clock.
    Implements `changes.Timers`: each expiry is reported once.
    """

    def __init__(self, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._ttl_s = ttl_s
        self._seen: dict[str, _Seen] = {}

    def note(self, key: str, token: str, rv: int, now: float) -> bool:
        """Remember what we saw of a record at `now`; True while it is not expired."""
        seen = self._seen.get(key)
        if seen is None or (seen.token != token and rv >= seen.rv):
            self._seen[key] = seen = _Seen(token=token, rv=rv, first_seen=now)
        return now - seen.first_seen < self._ttl_s

    def is_expired(self, key: str, rv: int, now: float) -> bool:
        """True if the record is still at `rv` as we last saw it, and that is `ttl_s` old."""
        seen = self._seen.get(key)
        return seen is not None and seen.rv == rv and now - seen.first_seen >= self._ttl_s

    def forget(self, key: str) -> None:
        """The record went away: nothing left to expire."""
        self._seen.pop(key, None)

    def known(self) -> list[str]:
        """The keys being timed."""
        return list(self._seen)

    def take_due(self, now: float) -> bool:
        """True if a record expired at `now` that was not reported before; reports it."""
        told = False
        for seen in self._seen.values():
            if not seen.expiry_told and now - seen.first_seen >= self._ttl_s:
                seen.expiry_told = True
                told = True
        return told

    def next_due(self) -> float | None:
        """When the next record not yet reported expires, if it is not renewed."""
        pending = [s.first_seen + self._ttl_s for s in self._seen.values() if not s.expiry_told]
        return min(pending) if pending else None


class _Response:
    """Status and decoded JSON body of one API answer."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body

    @property
    def obj(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}


class KubernetesDcs:
    """One member's handle on one cluster in the Kubernetes API. See the module docstring."""

    def __init__(
        self,
        *,
        client_factory: ClientFactory,
        namespace: str,
        cluster: str,
        member_name: str,
        ttl_s: float,
        timeout_s: float,
        lock: LockKind = LockKind.ENDPOINTS,
        pod_name: str | None = None,
        pod_ip: str | None = None,
        pg_port: int = 5432,
        labels: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        watch_timeout_s: int = _WATCH_TIMEOUT_S,
    ) -> None:
        if ttl_s <= 0 or timeout_s <= 0:
            raise ValueError("ttl_s and timeout_s must be positive")
        self._factory = client_factory
        self._api: Any = None
        self._api_lock = asyncio.Lock()
        self._ns = namespace
        self._cluster = cluster
        self._name = member_name
        self._pod = pod_name or member_name
        self._pod_ip = pod_ip
        self._pg_port = pg_port
        self._lock_kind = lock
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._clock: Clock = clock or SystemClock()
        self._watch_timeout_s = watch_timeout_s
        selector = dict(labels or {})
        selector[CLUSTER_LABEL] = cluster
        self._selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        # Lock state of this handle.
        self._holding = False
        self._lock_obj: dict[str, Any] | None = None  # as returned by our last lock write
        self._last_renew_sent = 0.0  # monotonic send time of the last successful acquire/renew
        self._slice_dirty = False
        self._published: tuple[str, float] | None = None  # (payload, monotonic write time)
        # What this handle saw, for expiry on its own clock (invariant 4).
        self._expiry = ObservedExpiry(ttl_s)
        self._seen_pod: dict[str, str] = {}  # member key -> pod name
        # Change tracking for wait_for_change (base.py, point 8); versions are
        # resourceVersions, member signatures are kept per pod name.
        self._changes = ChangeTracker(self._clock, timers=self._expiry)
        self._start_rv = 0  # list resourceVersion of the first get_cluster: the watch start
        self._seed_signatures: dict[str, str] = {}
        self._seed_holder = ""
        self._watched_holder = ""  # the lock holder as the lock watch last saw it
        self._watch_tasks: dict[_Watched, asyncio.Task[None]] = {}
        self._closed = False
        self._log = structlog.get_logger("pgwarden.dcs").bind(
            backend="kubernetes", cluster=cluster, member=member_name, lock=lock.value
        )

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

    # ------------------------------------------------------------------ paths

    def _core(self, plural: str, name: str = "") -> str:
        path = f"/api/v1/namespaces/{self._ns}/{plural}"
        return f"{path}/{name}" if name else path

    def _lock_path(self, name: bool = True) -> str:
        if self._lock_kind is LockKind.LEASE:
            path = f"/apis/coordination.k8s.io/v1/namespaces/{self._ns}/leases"
            return f"{path}/{self._lock_name}" if name else path
        return self._core("endpoints", self._lock_name if name else "")

    @property
    def _lock_name(self) -> str:
        return f"{self._cluster}-leader" if self._lock_kind is LockKind.LEASE else self._cluster

    @property
    def _config_name(self) -> str:
        return f"{self._cluster}-config"

    def _slice_path(self, name: bool = True) -> str:
        path = f"/apis/discovery.k8s.io/v1/namespaces/{self._ns}/endpointslices"
        return f"{path}/{self._cluster}" if name else path

    # ------------------------------------------------------------------ the protocol

    async def get_cluster(self) -> ClusterView:
        async with self._request("get_cluster"):
            # The list first: a change after it is delivered by a watch started at its
            # resourceVersion, even if the reads below already show it (a spurious wake).
            pods = await self._call(
                "GET", self._core("pods"), query={"labelSelector": self._selector}
            )
            if pods.status != 200:
                raise DcsUnavailable(f"listing pods: HTTP {pods.status}")
            lock = await self._get(self._lock_path())
            config = await self._get(self._core("configmaps", self._config_name))
        items: list[tuple[str, bytes, str]] = []
        pod_items = pods.obj.get("items") or []
        if self._start_rv == 0:
            self._start_rv = _rv(pods.obj)
            self._seed_signatures = self._signatures(pod_items)
            self._seed_holder = self._holder(lock) if lock is not None else ""
        now = self._clock.monotonic()
        mine: str | None = None
        present: set[str] = set()
        for pod in pod_items:
            entry = self._member_entry(pod)
            if entry is None:
                continue
            name, value, token = entry
            present.add(keys.member_key(name))
            self._seen_pod[keys.member_key(name)] = str(pod.get("metadata", {}).get("name", ""))
            if pod.get("metadata", {}).get("name") == self._pod:
                mine = value
            if self._expiry.note(keys.member_key(name), token, _rv(pod), now):
                items.append((keys.member_key(name), to_bytes(value), _hash_version(value)))
        for gone in [k for k in self._expiry.known() if keys.is_member_key(k)]:
            if gone not in present:
                self._expiry.forget(gone)  # its pod or record went away
        if lock is not None:
            holder = self._holder(lock)
            if holder:
                rv = _rv(lock)
                if self._expiry.note(keys.LEADER, str(rv), rv, now):
                    items.append((keys.LEADER, to_bytes(holder), str(rv)))
            else:
                self._expiry.forget(keys.LEADER)
        notes = _annotations(config)
        for kind in RecordKind:
            text = notes.get(record_annotation(kind))
            if text is not None:
                version = notes.get(record_version_annotation(kind)) or _hash_version(text)
                items.append((keys.record_key(kind), to_bytes(text), version))
        if mine is None or (self._published is not None and self._published[0] != mine):
            self._published = None  # removed or rewritten behind our back: publish again
        return keys.to_view(items, self._log)

    async def acquire_leader(self) -> bool:
        async with self._write("acquire_leader"):
            sent = self._clock.monotonic()
            current = await self._get(self._lock_path())
            if current is None:
                body = self._lock_body(None, holder=self._name, ip=await self._own_ip())
                created = await self._call("POST", self._lock_path(name=False), body=body)
                if created.status == 409:
                    return False
                self._expect(created, 201, 200)
                self._acquired(created.obj, sent)
            else:
                holder, rv = self._holder(current), _rv(current)
                if holder:
                    self._expiry.note(keys.LEADER, str(rv), rv, sent)
                if (
                    holder
                    and holder != self._name
                    and not self._expiry.is_expired(keys.LEADER, rv, self._clock.monotonic())
                ):
                    return False
                body = self._lock_body(current, holder=self._name, ip=await self._own_ip())
                put = await self._call("PUT", self._lock_path(), body=body)
                if put.status in (404, 409):
                    return False  # someone else wrote it first
                self._expect(put, 200)
                self._acquired(put.obj, sent)
                if holder != self._name:
                    self._log.info("dcs_leader_acquired", previous=holder or None)
        if self._lock_kind is LockKind.LEASE:
            self._slice_dirty = True
            await self._sync_slice_best_effort(started=sent)
        return True

    async def renew_leader(self) -> bool:
        async with self._write("renew_leader"):
            sent = self._clock.monotonic()
            if not self._holding or self._lock_obj is None:
                return False
            if sent - self._last_renew_sent >= self._ttl_s:
                # Our lease has lapsed in the others' eyes: never write the record back.
                self._lost("lease lapsed before renewal")
                return False
            current = self._lock_obj
            for _ in range(2):
                body = self._lock_body(current, holder=self._name, ip=await self._own_ip())
                put = await self._call("PUT", self._lock_path(), body=body)
                if put.status == 200:
                    self._acquired(put.obj, sent)
                    break
                if put.status not in (404, 409):
                    self._expect(put, 200)
                # Changed behind our back: still ours (an annotation by someone else)?
                fresh = await self._get(self._lock_path())
                if fresh is None or self._holder(fresh) != self._name:
                    self._lost("leader record taken or deleted")
                    return False
                current = fresh
            else:
                return False
        if self._slice_dirty:
            await self._sync_slice_best_effort(started=sent)
        return True

    async def release_leader(self) -> None:
        started = self._clock.monotonic()
        async with self._write("release_leader"):
            for _ in range(_WRITE_ATTEMPTS):
                current = await self._get(self._lock_path())
                if current is None or self._holder(current) != self._name:
                    self._holding = False
                    return
                body = self._lock_body(current, holder=None, ip=None)
                put = await self._call("PUT", self._lock_path(), body=body)
                if put.status == 409:
                    continue
                if put.status == 404:
                    return
                self._expect(put, 200)
                self._changes.own(_rv(put.obj))
                self._holding = False
                self._lock_obj = None
                self._expiry.forget(keys.LEADER)
                self._log.info("dcs_leader_released")
                break
        if self._lock_kind is LockKind.LEASE:
            self._slice_dirty = True
            await self._sync_slice_best_effort(started=started)

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
            patch = {
                "metadata": {
                    "labels": {CLUSTER_LABEL: self._cluster},
                    "annotations": {
                        MEMBER_ANNOTATION: payload,
                        MEMBER_NAME_ANNOTATION: self._name,
                        HEARTBEAT_ANNOTATION: micro_time(self._clock.wall()),
                    },
                }
            }
            response = await self._call(
                "PATCH",
                self._core("pods", self._pod),
                body=patch,
                content_type="application/merge-patch+json",
            )
            if response.status == 404:
                raise DcsUnavailable(f"kubernetes: publish_member: pod {self._pod} not found")
            self._expect(response, 200)
            self._changes.own(_rv(response.obj))
            self._published = (payload, now)
            if self._pod_ip is None:
                self._pod_ip = self._pod_ip_of(response.obj)

    async def write_record(
        self, kind: RecordKind, value: str | None, *, expected_version: str | None
    ) -> bool:
        expected = keys.expected_version(expected_version)
        value_key, version_key = record_annotation(kind), record_version_annotation(kind)
        path = self._core("configmaps", self._config_name)
        async with self._write("write_record"):
            for _ in range(_WRITE_ATTEMPTS):
                current = await self._get(path)
                notes = _annotations(current)
                present = notes.get(value_key)
                if expected is None:
                    if present is not None:
                        return False
                elif present is None or expected != (
                    notes.get(version_key) or _hash_version(present)
                ):
                    return False
                if value is None and present is None:
                    return True  # deleting an absent record: nothing to do
                new_notes = dict(notes)
                new_notes.pop(value_key, None)
                new_notes.pop(version_key, None)
                if value is not None:
                    new_notes[value_key] = value
                    new_notes[version_key] = secrets.token_hex(8)
                body: dict[str, Any]
                if current is None:
                    body = {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {
                            "name": self._config_name,
                            "namespace": self._ns,
                            "labels": {CLUSTER_LABEL: self._cluster},
                            "annotations": new_notes,
                        },
                    }
                    response = await self._call("POST", self._core("configmaps"), body=body)
                else:
                    meta = dict(current.get("metadata") or {})
                    meta["annotations"] = new_notes
                    body = dict(current, metadata=meta)
                    response = await self._call("PUT", path, body=body)
                if response.status in (404, 409):
                    continue  # the object changed under us: compare again
                self._expect(response, 200, 201)
                self._changes.own(_rv(response.obj))
                return True
        return False

    async def wait_for_change(self, timeout_s: float) -> bool:
        if self._closed:
            await asyncio.sleep(timeout_s)
            return False
        self._ensure_watches()
        return await self._changes.wait(timeout_s)

    async def close(self) -> None:
        """Stop the watches and close the client. The leader record is left as it is (a clean
        shutdown releases it first); others see it lapse after the ttl."""
        self._closed = True
        tasks = list(self._watch_tasks.values())
        self._watch_tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await task
        api, self._api = self._api, None
        if api is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await api.close()

    # ------------------------------------------------------------------ lock records

    def _holder(self, obj: Mapping[str, Any]) -> str:
        if self._lock_kind is LockKind.LEASE:
            spec = obj.get("spec")
            holder = spec.get("holderIdentity") if isinstance(spec, dict) else None
            return holder if isinstance(holder, str) else ""
        return _annotations(obj).get(LEADER_ANNOTATION, "")

    def _lock_body(
        self, current: Mapping[str, Any] | None, *, holder: str | None, ip: str | None
    ) -> dict[str, Any]:
        """The lock object as it must be after the write (conditional on `current`'s
        resourceVersion when there is one)."""
        meta: dict[str, Any] = {"name": self._lock_name, "namespace": self._ns}
        if current is not None:
            meta = dict(current.get("metadata") or {})
        labels = dict(meta.get("labels") or {})
        labels[CLUSTER_LABEL] = self._cluster
        meta["labels"] = labels
        now = micro_time(self._clock.wall())
        previous = self._holder(current) if current is not None else ""
        if self._lock_kind is LockKind.LEASE:
            spec = dict((current or {}).get("spec") or {})
            if holder is None:
                spec.pop("holderIdentity", None)
            else:
                if holder != previous:
                    spec["acquireTime"] = now
                    spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (
                        1 if previous else 0
                    )
                spec["holderIdentity"] = holder
                spec["leaseDurationSeconds"] = max(1, math.ceil(self._ttl_s))
                spec["renewTime"] = now
            return {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": meta,
                "spec": spec,
            }
        notes = dict(meta.get("annotations") or {})
        if holder is None:
            for key in (LEADER_ANNOTATION, RENEW_TIME_ANNOTATION, ACQUIRE_TIME_ANNOTATION):
                notes.pop(key, None)
            subsets: list[dict[str, Any]] = []
        else:
            if holder != previous:
                notes[ACQUIRE_TIME_ANNOTATION] = now
                transitions = int(notes.get(TRANSITIONS_ANNOTATION) or 0) + (1 if previous else 0)
                notes[TRANSITIONS_ANNOTATION] = str(transitions)
            notes[LEADER_ANNOTATION] = holder
            notes[RENEW_TIME_ANNOTATION] = now
            notes[TTL_ANNOTATION] = str(self._ttl_s)
            subsets = self._subsets(ip)
        meta["annotations"] = notes
        return {"apiVersion": "v1", "kind": "Endpoints", "metadata": meta, "subsets": subsets}

    def _subsets(self, ip: str | None) -> list[dict[str, Any]]:
        if ip is None:
            return []
        address = {
            "ip": ip,
            "targetRef": {"kind": "Pod", "name": self._pod, "namespace": self._ns},
        }
        port = {"name": PORT_NAME, "port": self._pg_port, "protocol": "TCP"}
        return [{"addresses": [address], "ports": [port]}]

    def _acquired(self, obj: dict[str, Any], sent: float) -> None:
        rv = _rv(obj)
        self._changes.own(rv)
        self._holding = True
        self._lock_obj = obj
        self._last_renew_sent = sent
        self._expiry.note(keys.LEADER, str(rv), rv, self._clock.monotonic())

    def _lost(self, why: str) -> None:
        if self._holding:
            self._log.warning("dcs_leader_lost", reason=why)
        self._holding = False
        self._lock_obj = None

    async def _own_ip(self) -> str | None:
        if self._pod_ip is None:
            pod = await self._get(self._core("pods", self._pod))
            self._pod_ip = self._pod_ip_of(pod) if pod is not None else None
            if self._pod_ip is None:
                self._log.warning("dcs_pod_ip_unknown", pod=self._pod)
        return self._pod_ip

    @staticmethod
    def _pod_ip_of(pod: Mapping[str, Any]) -> str | None:
        status = pod.get("status")
        ip = status.get("podIP") if isinstance(status, dict) else None
        return ip if isinstance(ip, str) and ip else None

    async def _sync_slice_best_effort(self, *, started: float) -> None:
        """Point the EndpointSlice at the leader (us) or at nobody, within what is left of
        the calling operation's deadline (which began at `started`), so that the whole call
        stays bounded by `timeout_s`. A failure is logged and retried with the next renewal;
        it never fails the lock operation that already succeeded."""
        budget_s = self._timeout_s - (self._clock.monotonic() - started)
        try:
            if budget_s <= 0:
                raise DcsUnavailable("no time left in this call's deadline")
            async with self._request("endpointslice", timeout_s=budget_s):
                ip = await self._own_ip() if self._holding else None
                endpoints = (
                    [
                        {
                            "addresses": [ip],
                            "conditions": {"ready": True},
                            "targetRef": {"kind": "Pod", "name": self._pod, "namespace": self._ns},
                        }
                    ]
                    if ip is not None
                    else []
                )
                current = await self._get(self._slice_path())
                meta: dict[str, Any] = (
                    dict(current.get("metadata") or {})
                    if current is not None
                    else {"name": self._cluster, "namespace": self._ns}
                )
                labels = dict(meta.get("labels") or {})
                labels[SERVICE_NAME_LABEL] = self._cluster
                labels[MANAGED_BY_LABEL] = MANAGED_BY
                labels[CLUSTER_LABEL] = self._cluster
                meta["labels"] = labels
                body = {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": meta,
                    "addressType": "IPv4",
                    "endpoints": endpoints,
                    "ports": [{"name": PORT_NAME, "port": self._pg_port, "protocol": "TCP"}],
                }
                if current is None:
                    response = await self._call("POST", self._slice_path(name=False), body=body)
                else:
                    response = await self._call("PUT", self._slice_path(), body=body)
                self._expect(response, 200, 201)
                self._slice_dirty = False
        except DcsUnavailable as exc:
            self._log.warning("dcs_endpointslice_failed", error=str(exc))

    # ------------------------------------------------------------------ members, expiry

    def _member_entry(self, pod: Mapping[str, Any]) -> tuple[str, str, str] | None:
        """(member name, record, expiry token) of a pod that carries a member record."""
        notes = _annotations(pod)
        value = notes.get(MEMBER_ANNOTATION)
        if value is None:
            return None
        meta = pod.get("metadata") or {}
        name = notes.get(MEMBER_NAME_ANNOTATION) or str(meta.get("name", ""))
        return name, value, value + "\0" + notes.get(HEARTBEAT_ANNOTATION, "")

    def _signatures(self, pods: list[Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for pod in pods:
            entry = self._member_entry(pod)
            if entry is not None:
                out[str(pod["metadata"]["name"])] = keys.member_signature(to_bytes(entry[1]))
        return out

    # ------------------------------------------------------------------ watches

    def _ensure_watches(self) -> None:
        for what in _Watched:
            task = self._watch_tasks.get(what)
            if task is None or task.done():
                follow, position = self._follower(what)
                self._watch_tasks[what] = asyncio.create_task(
                    watch_forever(
                        follow,
                        tracker=self._changes,
                        log=self._log.bind(watch=what.value),
                        position=position,
                    ),
                    name=f"dcs-k8s-watch-{what}-{self._name}",
                )

    def _watch_target(self, what: _Watched) -> tuple[str, dict[str, str]]:
        match what:
            case _Watched.PODS:
                return self._core("pods"), {"labelSelector": self._selector}
            case _Watched.LOCK:
                return self._lock_path(name=False), {
                    "fieldSelector": f"metadata.name={self._lock_name}"
                }
            case _Watched.CONFIG:
                return self._core("configmaps"), {
                    "fieldSelector": f"metadata.name={self._config_name}"
                }

    def _follower(
        self, what: _Watched
    ) -> tuple[Callable[[Backoff], Awaitable[None]], Callable[[], int]]:
        """One watch's `follow` coroutine for `watch_forever` and its position: each stream
        resumes from the last resourceVersion seen; a 410 re-lists and wakes the caller."""
        rv = 0
        first = True

        async def follow(backoff: Backoff) -> None:
            nonlocal rv, first
            if rv == 0:
                rv = await self._watch_start(what, from_first_read=first)
                first = False
            try:
                rv = await self._watch_once(what, rv)
            except _Expired:
                expired_at, rv = rv, 0
                raise WatchResync("dcs_watch_expired", resource_version=expired_at) from None
            backoff.reset()

        return follow, lambda: rv

    async def _watch_start(self, what: _Watched, *, from_first_read: bool) -> int:
        """Where a watch starts: the first read's resourceVersion, or (never read, or after a
        410) a fresh list's, which also re-seeds the member signatures."""
        if from_first_read and self._start_rv > 0:
            if what is _Watched.PODS and self._seed_signatures:
                self._changes.seed_members(self._seed_signatures, replace=False)
                self._seed_signatures = {}
            if what is _Watched.LOCK:
                self._watched_holder = self._seed_holder
            return self._start_rv
        path, query = self._watch_target(what)
        async with self._request(f"list {what.value}"):
            listed = await self._call("GET", path, query=query)
        self._expect(listed, 200)
        items = listed.obj.get("items") or []
        if what is _Watched.PODS:
            self._changes.seed_members(self._signatures(items), replace=True)
        if what is _Watched.LOCK:
            self._watched_holder = self._holder(items[0]) if items else ""
        rv = _rv(listed.obj)
        if self._start_rv == 0:
            self._start_rv = rv
        return rv

    async def _watch_once(self, what: _Watched, rv: int) -> int:
        """One watch stream from `rv`; returns the resourceVersion to resume from."""
        path, query = self._watch_target(what)
        query = dict(
            query,
            watch="true",
            resourceVersion=str(rv),
            allowWatchBookmarks="true",
            timeoutSeconds=str(self._watch_timeout_s),
        )
        read_timeout = aiohttp.ClientTimeout(
            sock_connect=self._timeout_s, sock_read=self._watch_timeout_s + _WATCH_READ_GRACE_S
        )
        api = await self._client()
        response: Any = await api.call_api(
            path,
            "GET",
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=read_timeout,
        )
        try:
            if response.status == 410:
                raise _Expired
            if response.status != 200:
                raise DcsUnavailable(f"watch {what.value}: HTTP {response.status}")
            while True:
                line = await response.content.readline()
                if not line:
                    return rv  # the server ended the stream (timeoutSeconds): resume
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Expired
                    raise DcsUnavailable(f"watch {what.value}: {obj.get('message')}")
                rv = max(rv, _rv(obj))
                if kind != "BOOKMARK":
                    self._on_event(what, str(kind), obj)
        finally:
            response.release()

    def _on_event(self, what: _Watched, kind: str, obj: dict[str, Any]) -> None:
        rv = _rv(obj)
        now = self._clock.monotonic()
        if what is _Watched.PODS:
            pod = str((obj.get("metadata") or {}).get("name", ""))
            entry = None if kind == "DELETED" else self._member_entry(obj)
            if entry is None:
                # The record (or the pod) went away: a change if we had seen it.
                for key in self._expiry.known():
                    if keys.is_member_key(key) and self._seen_pod.get(key) == pod:
                        self._expiry.forget(key)
                if not self._changes.member_changed(pod, None):
                    return
            else:
                name, value, token = entry
                self._expiry.note(keys.member_key(name), token, rv, now)
                self._seen_pod[keys.member_key(name)] = pod
                signature = keys.member_signature(to_bytes(value))
                if not self._changes.member_changed(pod, signature):
                    return  # a heartbeat: new WAL positions only
        elif what is _Watched.LOCK:
            holder = "" if kind == "DELETED" else self._holder(obj)
            if holder:
                self._expiry.note(keys.LEADER, str(rv), rv, now)
            else:
                self._expiry.forget(keys.LEADER)
            if holder == self._watched_holder:
                return  # a renewal by the same holder: it only moves the expiry (noted)
            self._watched_holder = holder
        self._changes.observed(rv)

    # ------------------------------------------------------------------ requests

    @contextlib.asynccontextmanager
    async def _request(self, what: str, *, timeout_s: float | None = None) -> AsyncIterator[None]:
        """One public call: bounded by the deadline; every failure becomes DcsUnavailable."""
        if self._closed:
            raise DcsUnavailable(f"kubernetes: {what}: this DCS handle is closed")
        limit_s = self._timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit_s):
                yield
        except DcsUnavailable:
            raise
        except TimeoutError:
            raise DcsUnavailable(f"kubernetes: {what}: no answer within {limit_s:g} s") from None
        except (DcsError, OSError, aiohttp.ClientError, ValueError) as exc:
            raise DcsUnavailable(f"kubernetes: {what}: {exc!r}") from exc

    @contextlib.asynccontextmanager
    async def _write(self, what: str) -> AsyncIterator[None]:
        """A public call that may write: its resourceVersions are ours, not changes."""
        with self._changes.writing():
            async with self._request(what):
                yield

    async def _client(self) -> Any:
        async with self._api_lock:
            if self._api is None:
                try:
                    self._api = await self._factory()
                except Exception as exc:  # a bad kubeconfig or service account
                    raise DcsUnavailable(f"kubernetes: client configuration: {exc}") from exc
            return self._api

    async def _get(self, path: str) -> dict[str, Any] | None:
        response = await self._call("GET", path)
        if response.status == 404:
            return None
        self._expect(response, 200)
        return response.obj

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> _Response:
        """One API request, bounded by the request deadline. Returns the status and body for
        anything the caller may handle (2xx, 404, 409, 410, 422); raises DcsUnavailable for
        the rest (DcsAuthError for 401/403)."""
        api = await self._client()
        headers = {"Accept": "application/json", "Content-Type": content_type}
        response: Any = await api.call_api(
            path,
            method,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=self._timeout_s,
        )
        try:
            status = int(response.status)
            data = await response.read()
        finally:
            response.release()
        try:
            decoded: Any = json.loads(data) if data else None
        except ValueError:
            decoded = None
        if status in (401, 403):
            raise DcsAuthError(f"kubernetes: {method} {path}: HTTP {status}: {_message(decoded)}")
        if status >= 500 or status == 429 or status in (400, 415):
            raise DcsUnavailable(f"kubernetes: {method} {path}: HTTP {status}: {_message(decoded)}")
        return _Response(status, decoded)

    @staticmethod
    def _expect(response: _Response, *statuses: int) -> None:
        if response.status not in statuses:
            raise DcsUnavailable(
                f"kubernetes: unexpected HTTP {response.status}: {_message(response.body)}"
            )


class _Expired(Exception):
    """A watch asked for a resourceVersion the server no longer has (410 Gone)."""


def _message(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("message") or body.get("reason") or "")[:200]
    return ""
