"""How synchronous replication shows: metrics, `pgwarden ctl list`, the member's sync role."""

from __future__ import annotations

from dataclasses import replace

from agent.ctl_render import render_table
from agent.decide import sync_role_of
from agent.metrics import Metrics
from agent.model import (
    ClusterView,
    DynamicConfig,
    LeaderRecord,
    Member,
    MemberName,
    PgState,
    Role,
    SyncMode,
    SyncRecord,
    SyncRole,
)
from tests.unit.test_decide import REPLICA
from tests.unit.test_metrics import primary, scrape, value


def sync_view(mode: SyncMode, published: tuple[str, ...], members: tuple[str, ...]) -> ClusterView:
    leader = Member(
        name=MemberName("a"),
        role=Role.PRIMARY,
        state=PgState.RUNNING,
        api_url="",
        host="h",
        port=1,
        sync_standbys=tuple(MemberName(n) for n in published),
    )
    return ClusterView(
        leader=LeaderRecord(name=MemberName("a"), version="1"),
        members=(leader,),
        config=DynamicConfig(synchronous_mode=mode, version="2"),
        sync=SyncRecord(
            leader=MemberName("a"), members=tuple(MemberName(m) for m in members), quorum=1
        ),
    )


def test_metrics_show_the_synchronous_set_mode_and_fallback() -> None:
    metrics = Metrics()
    status = primary()
    assert status.cluster_view is not None
    view = replace(
        status.cluster_view,
        config=DynamicConfig(synchronous_mode=SyncMode.QUORUM),
        sync=SyncRecord(
            leader=MemberName("a"), members=(MemberName("b"), MemberName("c")), quorum=1
        ),
    )
    metrics.update(replace(status, cluster_view=view, sync_fallback=True))
    s = scrape(metrics)
    assert value(s, "pgwarden_sync_set_size") == 2
    assert value(s, "pgwarden_sync_quorum") == 1
    assert value(s, "pgwarden_sync_mode", mode="quorum") == 1
    assert value(s, "pgwarden_sync_mode", mode="off") == 0
    assert value(s, "pgwarden_sync_fallback") == 1
    assert value(s, "pgwarden_sync_role", role="none") == 1


def test_a_replica_is_synchronous_only_when_the_leader_reports_it_and_the_record_lists_it() -> None:
    assert sync_role_of("b", sync_view(SyncMode.ON, ("b",), ("b",)), REPLICA) is SyncRole.SYNC
    assert sync_role_of("b", sync_view(SyncMode.QUORUM, ("b",), ("b",)), REPLICA) is SyncRole.QUORUM
    # PostgreSQL says sync, the record does not (yet): not synchronous.
    assert sync_role_of("b", sync_view(SyncMode.ON, ("b",), ("c",)), REPLICA) is SyncRole.ASYNC
    # In the record, but PostgreSQL does not (yet) wait for it.
    assert sync_role_of("b", sync_view(SyncMode.ON, (), ("b",)), REPLICA) is SyncRole.ASYNC


def test_ctl_list_names_sync_and_quorum_standbys_and_the_recorded_set() -> None:
    cluster = {
        "cluster": "demo",
        "leader": "a",
        "members": [
            {"name": "a", "host": "h", "port": 1, "leader": True, "role": "primary",
             "state": "running", "timeline": 1, "lag_bytes": 0, "sync_role": "leader"},
            {"name": "b", "host": "h", "port": 2, "leader": False, "role": "replica",
             "state": "streaming", "timeline": 1, "lag_bytes": 0, "sync_role": "quorum"},
            {"name": "c", "host": "h", "port": 3, "leader": False, "role": "replica",
             "state": "streaming", "timeline": 1, "lag_bytes": 0, "sync_role": "sync"},
            {"name": "d", "host": "h", "port": 4, "leader": False, "role": "replica",
             "state": "streaming", "timeline": 1, "lag_bytes": 0, "sync_role": "async"},
        ],
        "synchronous_mode": "quorum",
        "sync": {"leader": "a", "members": ["b", "c"], "quorum": 1},
    }  # fmt: skip
    table = render_table(cluster)
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| Member")}  # fmt: skip
    assert rows == {"a": "Leader", "b": "Quorum Standby", "c": "Sync Standby", "d": "Replica"}
    assert "Synchronous mode: quorum (recorded set: b, c; every commit on 1 of them)" in table
