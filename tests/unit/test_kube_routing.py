"""Pure parts of the Kubernetes backend's routing and ConfigMap records."""

from __future__ import annotations

from agent.dcs.kubernetes.objects import record_annotation, record_version_annotation
from agent.dcs.kubernetes.records import matches, record_items, with_record
from agent.dcs.kubernetes.routing import slice_body
from agent.model import RecordKind


def test_the_endpointslice_points_at_the_leader_or_at_nobody() -> None:
    body = slice_body(None, namespace="ns", cluster="pg", pod="a", ip="10.0.0.7", pg_port=5433)
    assert body["metadata"]["name"] == "pg"
    assert body["metadata"]["labels"]["kubernetes.io/service-name"] == "pg"
    assert body["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "pgwarden.io"
    assert body["endpoints"] == [
        {
            "addresses": ["10.0.0.7"],
            "conditions": {"ready": True},
            "targetRef": {"kind": "Pod", "name": "a", "namespace": "ns"},
        }
    ]
    assert body["ports"] == [{"name": "postgresql", "port": 5433, "protocol": "TCP"}]
    current = dict(body, metadata=dict(body["metadata"], resourceVersion="41"))
    emptied = slice_body(current, namespace="ns", cluster="pg", pod="a", ip=None, pg_port=5433)
    assert emptied["endpoints"] == []
    assert emptied["metadata"]["resourceVersion"] == "41"  # the write is conditional


def test_a_record_matches_when_absent_as_expected_or_at_the_expected_version() -> None:
    kind = RecordKind.CONFIG
    assert matches({}, kind, None)
    assert not matches({}, kind, "v1")
    notes = with_record({"other": "x"}, kind, "{}")
    version = notes[record_version_annotation(kind)]
    assert notes["other"] == "x"
    assert not matches(notes, kind, None)
    assert matches(notes, kind, version)
    assert not matches(notes, kind, "not-" + version)
    rewritten = with_record(notes, kind, "{}")
    assert rewritten[record_version_annotation(kind)] != version  # every write a new version
    assert with_record(notes, kind, None) == {"other": "x"}


def test_a_record_without_a_version_annotation_is_versioned_by_its_text() -> None:
    kind = RecordKind.SYNC
    notes = {record_annotation(kind): "{}"}
    [(key, value, version)] = record_items({"metadata": {"annotations": notes}})
    assert (key, value) == ("sync", b"{}")
    assert matches(notes, kind, version)
