"""The lock objects that hold the leader record, in the shape of client-go's resourcelock:
one small protocol, one class per object kind, chosen once from the configured `LockKind`.

Both are pure: they name the object, read its holder, and build the object as it must be
after a write (conditional on the current object's resourceVersion when there is one). The
backend does the requests; expiry is never judged from the times written here (DESIGN.md
invariant 4): they are informational.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol, assert_never

from agent.config import LockKind
from agent.dcs.kubernetes.objects import (
    ACQUIRE_TIME_ANNOTATION,
    LEADER_ANNOTATION,
    RENEW_TIME_ANNOTATION,
    TRANSITIONS_ANNOTATION,
    TTL_ANNOTATION,
    KubeObject,
    annotations_of,
    labelled_meta,
    pod_ref,
    postgres_port,
)


class LockObject(Protocol):
    """The object holding the leader record."""

    @property
    def name(self) -> str:
        """The object's name."""
        ...

    @property
    def routes(self) -> bool:
        """True if the lock write itself routes the cluster's Service to the leader (no
        EndpointSlice to keep)."""
        ...

    def path(self, *, named: bool = True) -> str:
        """The object's API path (`named=False`: its collection, to create or watch)."""
        ...

    def holder(self, obj: Mapping[str, Any]) -> str:
        """The member named as leader by `obj`, "" for none."""
        ...

    def body(
        self, current: Mapping[str, Any] | None, *, holder: str | None, ip: str | None, now: str
    ) -> KubeObject:
        """The object after a write that names `holder` (None: releases) at wall time
        `now` (a MicroTime); `ip` is the holder's pod IP, where the object routes."""
        ...


class EndpointsLock:
    """Annotations of the Endpoints `<cluster>` of the selector-less primary Service; the
    same write puts the leader's pod IP and the PostgreSQL port into its subsets."""

    routes = True

    def __init__(
        self, *, namespace: str, cluster: str, ttl_s: float, pod: str, pg_port: int
    ) -> None:
        self._ns = namespace
        self._cluster = cluster
        self._ttl_s = ttl_s
        self._pod = pod
        self._pg_port = pg_port

    @property
    def name(self) -> str:
        return self._cluster

    def path(self, *, named: bool = True) -> str:
        path = f"/api/v1/namespaces/{self._ns}/endpoints"
        return f"{path}/{self.name}" if named else path

    def holder(self, obj: Mapping[str, Any]) -> str:
        return annotations_of(obj).get(LEADER_ANNOTATION, "")

    def body(
        self, current: Mapping[str, Any] | None, *, holder: str | None, ip: str | None, now: str
    ) -> KubeObject:
        meta = labelled_meta(current, name=self.name, namespace=self._ns, cluster=self._cluster)
        previous = self.holder(current) if current is not None else ""
        notes = dict(meta.get("annotations") or {})
        subsets: list[KubeObject] = []
        if holder is None:
            for key in (LEADER_ANNOTATION, RENEW_TIME_ANNOTATION, ACQUIRE_TIME_ANNOTATION):
                notes.pop(key, None)
        else:
            if holder != previous:
                notes[ACQUIRE_TIME_ANNOTATION] = now
                transitions = int(notes.get(TRANSITIONS_ANNOTATION) or 0) + (1 if previous else 0)
                notes[TRANSITIONS_ANNOTATION] = str(transitions)
            notes[LEADER_ANNOTATION] = holder
            notes[RENEW_TIME_ANNOTATION] = now
            notes[TTL_ANNOTATION] = str(self._ttl_s)
            if ip is not None:
                address = {"ip": ip, "targetRef": pod_ref(self._pod, self._ns)}
                subsets = [{"addresses": [address], "ports": [postgres_port(self._pg_port)]}]
        meta["annotations"] = notes
        return {"apiVersion": "v1", "kind": "Endpoints", "metadata": meta, "subsets": subsets}


class LeaseLock:
    """The coordination.k8s.io/v1 Lease `<cluster>-leader` (holderIdentity,
    leaseDurationSeconds, acquireTime, renewTime, leaseTransitions). Routing is the
    EndpointSlice's job (`routing.py`)."""

    routes = False

    def __init__(self, *, namespace: str, cluster: str, ttl_s: float) -> None:
        self._ns = namespace
        self._cluster = cluster
        self._duration_s = max(1, math.ceil(ttl_s))

    @property
    def name(self) -> str:
        return f"{self._cluster}-leader"

    def path(self, *, named: bool = True) -> str:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self._ns}/leases"
        return f"{path}/{self.name}" if named else path

    def holder(self, obj: Mapping[str, Any]) -> str:
        spec = obj.get("spec")
        holder = spec.get("holderIdentity") if isinstance(spec, dict) else None
        return holder if isinstance(holder, str) else ""

    def body(
        self, current: Mapping[str, Any] | None, *, holder: str | None, ip: str | None, now: str
    ) -> KubeObject:
        meta = labelled_meta(current, name=self.name, namespace=self._ns, cluster=self._cluster)
        previous = self.holder(current) if current is not None else ""
        spec = dict((current or {}).get("spec") or {})
        if holder is None:
            spec.pop("holderIdentity", None)
        else:
            if holder != previous:
                spec["acquireTime"] = now
                transitions = int(spec.get("leaseTransitions") or 0) + (1 if previous else 0)
                spec["leaseTransitions"] = transitions
            spec["holderIdentity"] = holder
            spec["leaseDurationSeconds"] = self._duration_s
            spec["renewTime"] = now
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": spec,
        }


def lock_objects(
    kind: LockKind, *, namespace: str, cluster: str, ttl_s: float, pod: str, pg_port: int
) -> tuple[LockObject, ...]:
    """The lock objects a leader of the configured kind holds, in the order it takes them.
    `endpoints-and-lease` takes the Endpoints first: the lock the agents it replaces hold."""
    endpoints = EndpointsLock(
        namespace=namespace, cluster=cluster, ttl_s=ttl_s, pod=pod, pg_port=pg_port
    )
    lease = LeaseLock(namespace=namespace, cluster=cluster, ttl_s=ttl_s)
    match kind:
        case LockKind.ENDPOINTS:
            return (endpoints,)
        case LockKind.LEASE:
            return (lease,)
        case LockKind.ENDPOINTS_AND_LEASE:
            return (endpoints, lease)
        case _:
            assert_never(kind)
