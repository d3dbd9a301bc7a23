"""Pure parts of the Kubernetes DCS backend: no server, no I/O (that construction does none
is tested in test_dcs_construction.py)."""

from __future__ import annotations

import pytest

from agent.config import LockKind
from agent.dcs.kubernetes import (
    LEADER_ANNOTATION,
    TRANSITIONS_ANNOTATION,
    micro_time,
    record_annotation,
    record_version_annotation,
    to_bytes,
)
from agent.dcs.kubernetes.locks import EndpointsLock, LeaseLock, lock_objects
from agent.model import RecordKind


def test_micro_time_is_rfc3339_utc_with_microseconds() -> None:
    assert micro_time(0.5) == "1970-01-01T00:00:00.500000Z"
    assert micro_time(1_700_000_000.25) == "2023-11-14T22:13:20.250000Z"


def test_bytes_that_were_not_utf8_come_back_unchanged_from_annotation_text() -> None:
    raw = b"\xff\xfe{"
    assert to_bytes(raw.decode("utf-8", errors="surrogateescape")) == raw
    assert to_bytes("plain") == b"plain"


def test_record_annotations_are_named_after_the_record_kind() -> None:
    assert record_annotation(RecordKind.CONFIG) == "pgwarden.io/config"
    assert record_version_annotation(RecordKind.CONFIG) == "pgwarden.io/config.version"


NOW = micro_time(1_700_000_000.25)


def endpoints(pod: str) -> EndpointsLock:
    return EndpointsLock(namespace="ns", cluster="pg", ttl_s=10.0, pod=pod, pg_port=5433)


def test_the_configured_lock_kind_chooses_the_lock_objects() -> None:
    (endpoints_lock,), (lease_lock,), both = (
        lock_objects(kind, namespace="ns", cluster="pg", ttl_s=10.0, pod="a", pg_port=5433)
        for kind in (LockKind.ENDPOINTS, LockKind.LEASE, LockKind.ENDPOINTS_AND_LEASE)
    )
    # The migration step takes the Endpoints (the old agents' lock) first, then the Lease.
    assert [lock.path() for lock in both] == [endpoints_lock.path(), lease_lock.path()]
    assert endpoints_lock.path() == "/api/v1/namespaces/ns/endpoints/pg"
    assert endpoints_lock.routes
    assert lease_lock.path() == "/apis/coordination.k8s.io/v1/namespaces/ns/leases/pg-leader"
    assert lease_lock.path(named=False) == "/apis/coordination.k8s.io/v1/namespaces/ns/leases"
    assert not lease_lock.routes


def test_the_endpoints_lock_write_routes_to_the_leader_and_counts_transitions() -> None:
    lock = endpoints("a")
    first = lock.body(None, holder="a", ip="10.0.0.7", now=NOW)
    assert first["metadata"]["name"] == "pg"
    assert first["metadata"]["annotations"][LEADER_ANNOTATION] == "a"
    assert first["metadata"]["annotations"][TRANSITIONS_ANNOTATION] == "0"
    assert first["subsets"] == [
        {
            "addresses": [
                {"ip": "10.0.0.7", "targetRef": {"kind": "Pod", "name": "a", "namespace": "ns"}}
            ],
            "ports": [{"name": "postgresql", "port": 5433, "protocol": "TCP"}],
        }
    ]
    assert lock.holder(first) == "a"
    taken = endpoints("b").body(first, holder="b", ip="10.0.0.8", now=NOW)
    assert taken["metadata"]["annotations"][TRANSITIONS_ANNOTATION] == "1"
    renewed = endpoints("b").body(taken, holder="b", ip="10.0.0.8", now=NOW)
    assert renewed["metadata"]["annotations"][TRANSITIONS_ANNOTATION] == "1"
    released = lock.body(renewed, holder=None, ip=None, now=NOW)
    assert released["subsets"] == []
    assert LEADER_ANNOTATION not in released["metadata"]["annotations"]
    assert lock.holder(released) == ""


@pytest.mark.parametrize("ttl_s", [10.0, 2.5])
def test_the_lease_lock_write_carries_holder_duration_and_transitions(ttl_s: float) -> None:
    lock = LeaseLock(namespace="ns", cluster="pg", ttl_s=ttl_s)
    lease = lock.body(None, holder="a", ip=None, now=NOW)
    assert lease["metadata"]["name"] == "pg-leader"
    spec = lease["spec"]
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == (10 if ttl_s == 10.0 else 3)
    assert spec["leaseTransitions"] == 0
    assert spec["acquireTime"] == spec["renewTime"]
    assert spec["acquireTime"] == NOW
    assert lock.holder(lease) == "a"
    other = lock.body(lease, holder="b", ip=None, now=NOW)["spec"]
    assert other["leaseTransitions"] == 1
    released = lock.body(lease, holder=None, ip=None, now=NOW)
    assert "holderIdentity" not in released["spec"]
    assert lock.holder(released) == ""
