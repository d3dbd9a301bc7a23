"""Names and pure helpers over the Kubernetes objects the backend reads and writes (JSON
as the API server sends it): annotations, labels, versions, member records on pods."""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from agent.dcs import keys
from agent.model import RecordKind

ANNOTATION_PREFIX = "pgwarden.io/"
LEADER_ANNOTATION = "pgwarden.io/leader"
ACQUIRE_TIME_ANNOTATION = "pgwarden.io/acquire-time"
RENEW_TIME_ANNOTATION = "pgwarden.io/renew-time"
TTL_ANNOTATION = "pgwarden.io/ttl"
TRANSITIONS_ANNOTATION = "pgwarden.io/transitions"
MEMBER_ANNOTATION = "pgwarden.io/member"
MEMBER_NAME_ANNOTATION = "pgwarden.io/member-name"
HEARTBEAT_ANNOTATION = "pgwarden.io/heartbeat"
# Written with each member record by an agent that lets the lock vouch for its holder's
# record (expiry.py), set to the heartbeat written with it: an older agent's write sets the
# heartbeat alone, so its pod no longer shows the two equal.
VOUCHES_ANNOTATION = "pgwarden.io/lock-vouches"
# Written with each member record: "<heartbeat> <agent instance> <its monotonic seconds>" at
# the write, so that an observer dates a write it saw late from the time between two writes
# of one agent on that agent's own clock (expiry.py `written`); ignored unless its heartbeat
# is the one written with the record (an older agent's write changes the heartbeat alone).
WRITTEN_ANNOTATION = "pgwarden.io/written"
# On a lock object: its holder got a 429 lately (throttle.py `told`).
THROTTLED_ANNOTATION = "pgwarden.io/throttled"
# On a lock object: its holder's last write of its member record failed (members.py
# `behind`), so this renewal does not vouch for the record its pod still shows (expiry.py).
RECORD_BEHIND_ANNOTATION = "pgwarden.io/record-behind"
CLUSTER_LABEL = "pgwarden.io/cluster"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "pgwarden.io"
PORT_NAME = "postgresql"

# A Kubernetes object as JSON; only this package looks inside.
KubeObject = dict[str, Any]


def record_annotation(kind: RecordKind) -> str:
    return ANNOTATION_PREFIX + kind.value


def record_version_annotation(kind: RecordKind) -> str:
    return ANNOTATION_PREFIX + kind.value + ".version"


def to_bytes(text: str) -> bytes:
    """Annotation text back to the bytes a record was made of (lone surrogates stand for
    bytes that were not UTF-8, so such a value reads as corrupt, as it would from etcd)."""
    return text.encode("utf-8", errors="surrogateescape")


@functools.lru_cache(maxsize=64)
def hash_version(text: str) -> str:
    """The version of a record that carries none of its own: a hash of its text (remembered:
    each read of a view hashes every member record again)."""
    return "h" + hashlib.sha256(to_bytes(text)).hexdigest()[:16]


def micro_time(epoch: float) -> str:
    """A Kubernetes MicroTime (RFC 3339, UTC, microseconds). Informational only: expiry is
    never judged from it (DESIGN.md invariant 4)."""
    whole = math.floor(epoch)
    micros = min(999_999, round((epoch - whole) * 1e6))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micros:06d}Z"


def resource_version(obj: Mapping[str, Any]) -> int:
    """metadata.resourceVersion as a number (0 when absent or not a number)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return 0
    try:
        return int(meta.get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def name_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    return str(meta.get("name", "")) if isinstance(meta, dict) else ""


def annotations_of(obj: Mapping[str, Any] | None) -> dict[str, str]:
    """The string annotations of an object (none for None)."""
    if obj is None:
        return {}
    meta = obj.get("metadata")
    raw = meta.get("annotations") if isinstance(meta, dict) else None
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, str)}


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def labelled_meta(
    current: Mapping[str, Any] | None, *, name: str, namespace: str, cluster: str
) -> KubeObject:
    """The metadata to write back: `current`'s (so the write is conditional on its
    resourceVersion) or a new object's, with our cluster label."""
    meta: KubeObject = {"name": name, "namespace": namespace}
    if current is not None:
        meta = dict(current.get("metadata") or {})
    labels = dict(meta.get("labels") or {})
    labels[CLUSTER_LABEL] = cluster
    meta["labels"] = labels
    return meta


def cluster_selector(labels: Mapping[str, str], cluster: str) -> str:
    """The label selector of a cluster's member pods: the configured labels plus ours."""
    selector = dict(labels)
    selector[CLUSTER_LABEL] = cluster
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def member_patch(
    cluster: str, member: str, record: str, *, heartbeat: str, written: tuple[str, float]
) -> KubeObject:
    """The merge patch that puts a member record (and its heartbeat) on the member's pod;
    `written`: this agent's instance and its monotonic clock at the write."""
    instance, at = written
    return {
        "metadata": {
            "labels": {CLUSTER_LABEL: cluster},
            "annotations": {
                MEMBER_ANNOTATION: record,
                MEMBER_NAME_ANNOTATION: member,
                HEARTBEAT_ANNOTATION: heartbeat,
                VOUCHES_ANNOTATION: heartbeat,
                WRITTEN_ANNOTATION: f"{heartbeat} {instance} {at:.3f}",
            },
        }
    }


def written_stamp(pod: Mapping[str, Any]) -> tuple[str, float] | None:
    """(agent instance, its monotonic seconds) when the record on `pod` was written, if the
    agent that wrote it said so with it (`WRITTEN_ANNOTATION`)."""
    notes = annotations_of(pod)
    parts = notes.get(WRITTEN_ANNOTATION, "").split(" ")
    if len(parts) != 3 or parts[0] != notes.get(HEARTBEAT_ANNOTATION):
        return None
    try:
        at = float(parts[2])
    except ValueError:
        return None
    return (parts[1], at) if math.isfinite(at) else None


def member_entry(pod: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(member name, record, expiry token) of a pod that carries a member record. The
    token changes with the record and with the heartbeat."""
    notes = annotations_of(pod)
    value = notes.get(MEMBER_ANNOTATION)
    if value is None:
        return None
    name = notes.get(MEMBER_NAME_ANNOTATION) or name_of(pod)
    return name, value, value + "\0" + notes.get(HEARTBEAT_ANNOTATION, "")


def lets_lock_vouch(pod: Mapping[str, Any]) -> bool:
    """Whether the agent that wrote the record on `pod` lets a lock renewal restart its
    holder's record clock (`VOUCHES_ANNOTATION`)."""
    notes = annotations_of(pod)
    return notes.get(VOUCHES_ANNOTATION) == notes.get(HEARTBEAT_ANNOTATION, "")


def vouched_record(obj: Mapping[str, Any], holder: str) -> str | None:
    """The key of the member record a lock object naming `holder` vouches for (expiry.py
    `note(..., vouches=)`): the holder's, unless its holder says that record is behind."""
    if not holder or RECORD_BEHIND_ANNOTATION in annotations_of(obj):
        return None
    return keys.member_key(holder)


def member_signatures(pods: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Pod name -> signature (`keys.member_signature`) of every pod carrying a record."""
    out: dict[str, str] = {}
    for pod in pods:
        entry = member_entry(pod)
        if entry is not None:
            out[name_of(pod)] = keys.member_signature(to_bytes(entry[1]))
    return out


def pod_ip_of(pod: Mapping[str, Any]) -> str | None:
    status = pod.get("status")
    ip = status.get("podIP") if isinstance(status, dict) else None
    return ip if isinstance(ip, str) and ip else None


def pod_ref(pod: str, namespace: str) -> KubeObject:
    return {"kind": "Pod", "name": pod, "namespace": namespace}


def postgres_port(port: int) -> KubeObject:
    return {"name": PORT_NAME, "port": port, "protocol": "TCP"}
