"""Metrics: the exposition parses and reflects the published AgentStatus and the counters."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from agent.metrics import Metrics
from agent.model import (
    AgentStatus,
    ClusterView,
    Member,
    MemberName,
    PgState,
    ReplicationRow,
    Role,
    StandbySyncState,
    WalSenderState,
)


def scrape(metrics: Metrics) -> dict[str, list[Sample]]:
    body, content_type = metrics.render()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    return {
        family.name: family.samples
        for family in text_string_to_metric_families(body.decode("utf-8"))
    }


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    for family in samples.values():
        for sample in family:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError((name, labels))


def a_member(name: str, state: PgState) -> Member:
    return Member(
        name=MemberName(name), role=Role.REPLICA, state=state, api_url="", host="h", port=1
    )


def primary() -> AgentStatus:
    row = ReplicationRow(
        application_name="b",
        state=WalSenderState.STREAMING,
        sync_state=StandbySyncState.ASYNC,
        sent_lsn=1,
        write_lsn=1,
        flush_lsn=1,
        replay_lsn=1,
    )
    view = ClusterView(
        members=(
            a_member("a", PgState.RUNNING),
            a_member("b", PgState.STREAMING),
            a_member("c", PgState.STREAMING),
            a_member("d", PgState.STOPPED),
        )
    )
    return AgentStatus(
        name=MemberName("a"),
        cluster="demo",
        role=Role.PRIMARY,
        state=PgState.RUNNING,
        api_url="http://127.0.0.1:8008",
        timeline=4,
        wal_lsn=123_456,
        lease_held=True,
        lease_age_s=0.25,
        fence_remaining_s=7.5,
        dcs_ok=True,
        cluster_view=view,
        replication=(row,),
    )


def test_update_reflects_a_primary_status() -> None:
    metrics = Metrics()
    metrics.update(primary())
    s = scrape(metrics)
    assert value(s, "pgwarden_role", role="primary") == 1
    assert value(s, "pgwarden_role", role="replica") == 0
    assert value(s, "pgwarden_lease_held") == 1
    assert value(s, "pgwarden_lease_age_seconds") == 0.25
    assert value(s, "pgwarden_fence_remaining_seconds") == 7.5
    assert value(s, "pgwarden_timeline") == 4
    assert value(s, "pgwarden_wal_lsn_bytes") == 123_456
    assert value(s, "pgwarden_dcs_up") == 1
    assert value(s, "pgwarden_members", state="streaming") == 2
    assert value(s, "pgwarden_members", state="stopped") == 1
    assert value(s, "pgwarden_members", state="crashed") == 0
    assert value(s, "pgwarden_streaming_replicas") == 1
    assert value(s, "pgwarden_member_info", cluster="demo", member="a") == 1


def test_unknown_values_are_nan_and_a_role_change_moves_the_one() -> None:
    metrics = Metrics()
    metrics.update(primary())
    demoted = AgentStatus(
        name=MemberName("a"),
        cluster="demo",
        role=Role.REPLICA,
        state=PgState.STOPPED,
        api_url="",
        dcs_ok=False,
    )
    metrics.update(demoted)
    s = scrape(metrics)
    assert value(s, "pgwarden_role", role="primary") == 0
    assert value(s, "pgwarden_role", role="replica") == 1
    assert value(s, "pgwarden_lease_held") == 0
    assert value(s, "pgwarden_dcs_up") == 0
    for name in (
        "pgwarden_fence_remaining_seconds",
        "pgwarden_lease_age_seconds",
        "pgwarden_timeline",
        "pgwarden_wal_lsn_bytes",
        "pgwarden_replication_lag_bytes",
    ):
        assert math.isnan(value(s, name)), name


def test_counters_count() -> None:
    metrics = Metrics()
    metrics.count_failover()
    metrics.count_switchover()
    metrics.count_switchover()
    metrics.count_demotion()
    metrics.count_lease_loss()
    metrics.count_fencing()
    metrics.count_dcs_error("renew_leader")
    s = scrape(metrics)
    assert value(s, "pgwarden_failovers_total") == 1
    assert value(s, "pgwarden_switchovers_total") == 2
    assert value(s, "pgwarden_demotions_total") == 1
    assert value(s, "pgwarden_lease_losses_total") == 1
    assert value(s, "pgwarden_fencing_events_total") == 1
    assert value(s, "pgwarden_dcs_errors_total", operation="renew_leader") == 1


def test_histograms_record_cycles_and_dcs_requests_by_operation() -> None:
    metrics = Metrics()
    metrics.observe_cycle(0.004)
    metrics.observe_dcs("get_cluster", 0.0008, True)
    metrics.observe_dcs("get_cluster", 0.2, False)
    metrics.observe_dcs("renew_leader", 0.0009, True)
    s = scrape(metrics)
    assert value(s, "pgwarden_ha_cycle_duration_seconds_count") == 1
    assert value(s, "pgwarden_ha_cycle_duration_seconds_bucket", le="0.005") == 1
    assert value(s, "pgwarden_ha_cycle_duration_seconds_bucket", le="0.0025") == 0
    assert value(s, "pgwarden_dcs_request_duration_seconds_count", operation="get_cluster") == 2
    # Sub-millisecond requests land in their own bucket: the buckets fit a healthy DCS.
    assert (
        value(
            s, "pgwarden_dcs_request_duration_seconds_bucket", operation="get_cluster", le="0.001"
        )
        == 1
    )
    assert value(s, "pgwarden_dcs_errors_total", operation="get_cluster") == 1
    assert value(s, "pgwarden_dcs_request_duration_seconds_count", operation="renew_leader") == 1


def test_each_metrics_object_owns_its_registry() -> None:
    first, second = Metrics(), Metrics()
    first.count_failover()
    assert value(scrape(first), "pgwarden_failovers_total") == 1
    assert value(scrape(second), "pgwarden_failovers_total") == 0


def test_a_renamed_member_replaces_its_info_series() -> None:
    metrics = Metrics()
    metrics.update(primary())
    status = primary()
    metrics.update(
        AgentStatus(
            name=MemberName("z"), cluster="demo", role=status.role, state=status.state, api_url=""
        )
    )
    infos = scrape(metrics)["pgwarden_member_info"]
    assert [x.labels["member"] for x in infos] == ["z"]
