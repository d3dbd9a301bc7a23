"""Routing for the `lease` lock kind: the leader keeps the EndpointSlice `<cluster>`
(label kubernetes.io/service-name=<cluster>) on its own address, so that the selector-less
`<cluster>` Service routes to it. Written after every acquire, emptied on release, and
retried with each renewal until it succeeds. Best effort: a failure is logged and never
fails the lock operation that already succeeded. (The `endpoints` lock routes in its own
write and needs none of this.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from agent.dcs.base import DcsUnavailable
from agent.dcs.kubernetes.api import KubeApi, bounded, expect
from agent.dcs.kubernetes.objects import (
    CLUSTER_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    KubeObject,
    pod_ref,
    postgres_port,
)


def slice_body(
    current: Mapping[str, Any] | None,
    *,
    namespace: str,
    cluster: str,
    pod: str,
    ip: str | None,
    pg_port: int,
) -> KubeObject:
    """The EndpointSlice pointing at `ip` (None: at nobody), over `current` if it exists."""
    meta: KubeObject = (
        dict(current.get("metadata") or {})
        if current is not None
        else {"name": cluster, "namespace": namespace}
    )
    labels = dict(meta.get("labels") or {})
    labels[SERVICE_NAME_LABEL] = cluster
    labels[MANAGED_BY_LABEL] = MANAGED_BY
    labels[CLUSTER_LABEL] = cluster
    meta["labels"] = labels
    endpoints = (
        [{"addresses": [ip], "conditions": {"ready": True}, "targetRef": pod_ref(pod, namespace)}]
        if ip is not None
        else []
    )
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [postgres_port(pg_port)],
    }


class EndpointSliceRouter:
    """Keeps the cluster's EndpointSlice on the leader. `mark_dirty()` after a lock change;
    `sync()` writes when dirty."""

    def __init__(
        self,
        api: KubeApi,
        *,
        namespace: str,
        cluster: str,
        pod: str,
        pg_port: int,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._api = api
        self._ns = namespace
        self._cluster = cluster
        self._pod = pod
        self._pg_port = pg_port
        self._log = log
        self._dirty = False

    @property
    def is_dirty(self) -> bool:
        return self._dirty

    def mark_dirty(self) -> None:
        self._dirty = True

    def _path(self, *, named: bool = True) -> str:
        path = f"/apis/discovery.k8s.io/v1/namespaces/{self._ns}/endpointslices"
        return f"{path}/{self._cluster}" if named else path

    async def sync(self, address: Callable[[], Awaitable[str | None]], budget_s: float) -> None:
        """Point the slice at `await address()` (None: nobody) within `budget_s`, what is
        left of the calling operation's deadline. Never raises DcsUnavailable: it is logged,
        and the slice stays dirty for the next try."""
        try:
            if budget_s <= 0:
                raise DcsUnavailable("no time left in this call's deadline")
            async with bounded("endpointslice", budget_s):
                ip = await address()
                current = await self._api.get(self._path())
                body = slice_body(
                    current,
                    namespace=self._ns,
                    cluster=self._cluster,
                    pod=self._pod,
                    ip=ip,
                    pg_port=self._pg_port,
                )
                if current is None:
                    response = await self._api.call("POST", self._path(named=False), body=body)
                else:
                    response = await self._api.call("PUT", self._path(), body=body)
                expect(response, 200, 201)
                self._dirty = False
        except DcsUnavailable as exc:
            self._log.warning("dcs_endpointslice_failed", error=str(exc))
