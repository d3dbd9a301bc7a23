"""Cluster records (`RecordKind`) in annotations `pgwarden.io/<kind>` of the ConfigMap
`<cluster>-config`, each with a version annotation `pgwarden.io/<kind>.version` (a fresh
random token per write). A write reads the ConfigMap, compares the record's token with the
expected version, and PUTs the object conditional on its resourceVersion; a 409 (another
record, or the same one, changed meanwhile) re-reads and compares again. So the
compare-and-set is per record, exact and atomic, while writes of different records only
retry each other."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from agent.dcs import keys
from agent.dcs.kubernetes.api import KubeApi, expect
from agent.dcs.kubernetes.objects import (
    CLUSTER_LABEL,
    KubeObject,
    annotations_of,
    hash_version,
    record_annotation,
    record_version_annotation,
    resource_version,
    to_bytes,
)
from agent.model import QUIET_RECORDS, RecordKind

_WRITE_ATTEMPTS = 5  # conflicts on the ConfigMap caused by writes of other records


def record_items(config: Mapping[str, Any] | None) -> list[tuple[str, bytes, str]]:
    """(key, value, version) of every record the ConfigMap holds."""
    notes = annotations_of(config)
    items: list[tuple[str, bytes, str]] = []
    for kind in RecordKind:
        text = notes.get(record_annotation(kind))
        if text is not None:
            version = notes.get(record_version_annotation(kind)) or hash_version(text)
            items.append((keys.record_key(kind), to_bytes(text), version))
    return items


_QUIET_ANNOTATIONS = frozenset(
    name
    for kind in QUIET_RECORDS
    for name in (record_annotation(kind), record_version_annotation(kind))
)


def loud_signature(config: Mapping[str, Any] | None) -> str:
    """What of the ConfigMap a change must alter to wake other members (base.py, point 8):
    its annotations, less the quiet records' (the leader's `position` heartbeat)."""
    notes = annotations_of(config)
    return json.dumps(
        {k: v for k, v in notes.items() if k not in _QUIET_ANNOTATIONS}, sort_keys=True
    )


def matches(notes: Mapping[str, str], kind: RecordKind, expected: str | None) -> bool:
    """Whether the record is as the writer expects: absent for None, else at that version."""
    present = notes.get(record_annotation(kind))
    if expected is None:
        return present is None
    version = notes.get(record_version_annotation(kind)) or (
        hash_version(present) if present is not None else None
    )
    return present is not None and expected == version


def with_record(notes: Mapping[str, str], kind: RecordKind, value: str | None) -> dict[str, str]:
    """The annotations after writing `value` (None: deleting) with a fresh version."""
    out = dict(notes)
    out.pop(record_annotation(kind), None)
    out.pop(record_version_annotation(kind), None)
    if value is not None:
        out[record_annotation(kind)] = value
        out[record_version_annotation(kind)] = secrets.token_hex(8)
    return out


class ConfigRecords:
    """The records of one cluster in its ConfigMap."""

    def __init__(self, api: KubeApi, *, namespace: str, cluster: str) -> None:
        self._api = api
        self._ns = namespace
        self._cluster = cluster

    @property
    def name(self) -> str:
        return f"{self._cluster}-config"

    def path(self, *, named: bool = True) -> str:
        path = f"/api/v1/namespaces/{self._ns}/configmaps"
        return f"{path}/{self.name}" if named else path

    async def compare_and_set(
        self,
        kind: RecordKind,
        value: str | None,
        expected: str | None,
        *,
        own: Callable[[int], None],
    ) -> bool:
        """The write of base.py point 7 (`expected` already normalised: None for absent).
        Reports the resourceVersion it wrote to `own`; False on a lost race."""
        for _ in range(_WRITE_ATTEMPTS):
            current = await self._api.get(self.path())
            notes = annotations_of(current)
            if not matches(notes, kind, expected):
                return False
            if value is None and record_annotation(kind) not in notes:
                return True  # deleting an absent record: nothing to do
            response = await self._put(current, with_record(notes, kind, value))
            if response.status in (404, 409):
                continue  # the object changed under us: compare again
            expect(response, 200, 201)
            own(resource_version(response.obj))
            return True
        return False

    async def _put(self, current: KubeObject | None, notes: dict[str, str]) -> Any:
        if current is None:
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": self.name,
                    "namespace": self._ns,
                    "labels": {CLUSTER_LABEL: self._cluster},
                    "annotations": notes,
                },
            }
            return await self._api.call("POST", self.path(named=False), body=body)
        meta = dict(current.get("metadata") or {})
        meta["annotations"] = notes
        return await self._api.call("PUT", self.path(), body=dict(current, metadata=meta))
