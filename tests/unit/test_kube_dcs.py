"""Pure parts of the Kubernetes DCS backend: no server, no I/O (construction does none)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.clock import FakeClock
from agent.config import LockKind
from agent.dcs.kubernetes import (
    LEADER_ANNOTATION,
    TRANSITIONS_ANNOTATION,
    KubernetesDcs,
    micro_time,
    record_annotation,
    record_version_annotation,
    to_bytes,
)
from agent.model import RecordKind


async def no_io() -> Any:
    raise AssertionError("the backend built its API client without a call")


def handle(lock: LockKind, name: str = "a") -> KubernetesDcs:
    return KubernetesDcs(
        client_factory=no_io,
        namespace="ns",
        cluster="pg",
        member_name=name,
        ttl_s=10.0,
        timeout_s=1.0,
        lock=lock,
        pod_ip="10.0.0.7",
        pg_port=5433,
        clock=FakeClock(),
    )


def test_construction_does_no_io() -> None:
    handle(LockKind.ENDPOINTS)
    handle(LockKind.LEASE)


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


def test_the_endpoints_lock_write_routes_to_the_leader_and_counts_transitions() -> None:
    dcs = handle(LockKind.ENDPOINTS)
    first = dcs._lock_body(None, holder="a", ip="10.0.0.7")
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
    taken = handle(LockKind.ENDPOINTS, "b")._lock_body(first, holder="b", ip="10.0.0.8")
    assert taken["metadata"]["annotations"][TRANSITIONS_ANNOTATION] == "1"
    renewed = handle(LockKind.ENDPOINTS, "b")._lock_body(taken, holder="b", ip="10.0.0.8")
    assert renewed["metadata"]["annotations"][TRANSITIONS_ANNOTATION] == "1"
    released = dcs._lock_body(renewed, holder=None, ip=None)
    assert released["subsets"] == []
    assert LEADER_ANNOTATION not in released["metadata"]["annotations"]


@pytest.mark.parametrize("ttl_s", [10.0, 2.5])
def test_the_lease_lock_write_carries_holder_duration_and_transitions(ttl_s: float) -> None:
    dcs = KubernetesDcs(
        client_factory=no_io,
        namespace="ns",
        cluster="pg",
        member_name="a",
        ttl_s=ttl_s,
        timeout_s=1.0,
        lock=LockKind.LEASE,
        clock=FakeClock(),
    )
    lease = dcs._lock_body(None, holder="a", ip=None)
    assert lease["metadata"]["name"] == "pg-leader"
    spec = lease["spec"]
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == (10 if ttl_s == 10.0 else 3)
    assert spec["leaseTransitions"] == 0
    assert spec["acquireTime"] == spec["renewTime"]
    other = dcs._lock_body(lease, holder="b", ip=None)["spec"]
    assert other["leaseTransitions"] == 1
    released = dcs._lock_body(lease, holder=None, ip=None)["spec"]
    assert "holderIdentity" not in released
