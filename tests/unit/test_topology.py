"""Topology tags: `replicatefrom` (cascading), `clonefrom`, `noloadbalance`, `nostream`;
the pure choices (agent/decide/topology.py), the probes, the configuration rules, the
`ctl topology` drawing, and cascading in the real HaLoop on the fakes (tests/unit/fakes)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.api.health import Probe, probe_ok
from agent.config import ConfigError, Tags, load_settings
from agent.ctl_topology import render_topology
from agent.decide.topology import cascading, clone_source, upstream_for
from agent.model import (
    AgentStatus,
    ClusterView,
    LeaderRecord,
    MemberName,
    MemberTags,
    PgState,
    Role,
)
from tests.unit.fakes.loop_cluster import LoopCluster
from tests.unit.test_decide import member

LEADER = member("a", Role.PRIMARY, PgState.RUNNING, timeline=2)


def view(*members: object) -> ClusterView:
    return ClusterView(
        leader=LeaderRecord(name=MemberName("a"), version="1"),
        members=(LEADER, *members),  # type: ignore[arg-type]
    )


def tagged(name: str, state: PgState = PgState.STREAMING, timeline: int = 2, **tags: object):  # type: ignore[no-untyped-def]
    return replace(member(name, Role.REPLICA, state, timeline=timeline), tags=MemberTags(**tags))  # type: ignore[arg-type]


def test_a_member_cascades_from_its_replicatefrom_only_while_that_one_streams() -> None:
    b = tagged("b")
    assert upstream_for("c", "b", view(b)) == "b"
    assert upstream_for("c", None, view(b)) == "a"
    assert upstream_for("c", "b", view(tagged("b", PgState.RUNNING))) == "a"  # not streaming
    assert upstream_for("c", "b", view(tagged("b", PgState.STOPPED))) == "a"
    assert upstream_for("c", "b", view()) == "a"  # gone
    assert upstream_for("c", "b", view(tagged("b", timeline=1))) == "a"  # behind a failover
    assert upstream_for("c", "b", view(tagged("b", replicatefrom="c"))) == "a"  # a loop
    assert upstream_for("c", "a", view(b)) == "a"  # the leader itself
    assert upstream_for("c", "b", replace(view(b), leader=None)) is None


def test_the_leader_keeps_no_slot_for_a_cascading_member() -> None:
    v = view(tagged("b"), tagged("c", replicatefrom="b"), tagged("d", replicatefrom="x"))
    assert cascading(v) == {"c"}


def test_a_clone_prefers_a_streaming_clonefrom_replica_then_the_leader() -> None:
    assert clone_source(view(tagged("b"), tagged("c", clonefrom=True)), "d") == "c"
    assert clone_source(view(tagged("c", PgState.RUNNING, clonefrom=True)), "d") == "a"
    assert clone_source(view(tagged("c", clonefrom=True)), "c") == "a"  # not from itself
    stopped = replace(LEADER, state=PgState.STOPPED)
    assert clone_source(replace(view(), members=(stopped,)), "d") is None


def _status(role: Role, state: PgState, *, noloadbalance: bool) -> AgentStatus:
    return AgentStatus(
        name=MemberName("b"),
        cluster="c",
        role=role,
        state=state,
        api_url="http://b:8008",
        lease_held=role is Role.PRIMARY,
        noloadbalance=noloadbalance,
        observed_at=100.0,
    )


@pytest.mark.parametrize(
    ("probe", "tagged_ok", "untagged_ok"),
    [(Probe.REPLICA, False, True), (Probe.READ_ONLY, False, True), (Probe.HEALTH, True, True),
     (Probe.READINESS, True, True)],
)  # fmt: skip
def test_noloadbalance_keeps_read_probes_away_from_a_replica(
    probe: Probe, tagged_ok: bool, untagged_ok: bool
) -> None:
    for noloadbalance, expected in ((True, tagged_ok), (False, untagged_ok)):
        status = _status(Role.REPLICA, PgState.STREAMING, noloadbalance=noloadbalance)
        assert probe_ok(probe, status, now=100.0, ttl_s=10.0) is expected, (probe, noloadbalance)
    primary = _status(Role.PRIMARY, PgState.RUNNING, noloadbalance=True)
    assert probe_ok(Probe.READ_ONLY, primary, now=100.0, ttl_s=10.0)


BASE_ENV = {
    "PGWARDEN_NAME": "pg-0",
    "PGWARDEN_CLUSTER": "c",
    "PGWARDEN_RUN_DIR": "/run/x",
    "PGWARDEN_DCS__KIND": "etcd",
    "PGWARDEN_DCS__ETCD__ENDPOINTS": "http://127.0.0.1:2379",
    "PGWARDEN_POSTGRESQL__DATA_DIR": "/data",
    "PGWARDEN_API__INSECURE_NO_AUTH": "true",
}


def test_nostream_and_a_replicatefrom_naming_this_member_are_configuration_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            None,
            BASE_ENV | {"PGWARDEN_TAGS__NOSTREAM": "true", "PGWARDEN_TAGS__REPLICATEFROM": "pg-0"},
        )
    rules = {p.field: p.rule for p in caught.value.problems}
    assert "WAL archiving" in rules["tags.nostream"]
    assert "PGWARDEN_TAGS__NOSTREAM" in rules["tags.nostream"]
    assert "another member" in rules["tags.replicatefrom"]
    settings = load_settings(None, BASE_ENV | {"PGWARDEN_TAGS__REPLICATEFROM": "pg-1"})
    assert settings.tags.replicatefrom == "pg-1"


def test_ctl_topology_draws_each_replica_under_its_upstream() -> None:
    cluster = {
        "cluster": "demo",
        "members": [
            {"name": "pg-0", "role": "primary", "state": "running", "timeline": 2,
             "leader": True, "lag_bytes": 0, "upstream": None, "tags": {}},
            {"name": "pg-1", "role": "replica", "state": "streaming", "timeline": 2,
             "leader": False, "lag_bytes": 0, "upstream": "pg-0", "tags": {"clonefrom": True}},
            {"name": "pg-2", "role": "replica", "state": "streaming", "timeline": 2,
             "leader": False, "lag_bytes": 16, "upstream": "pg-1",
             "tags": {"replicatefrom": "pg-1"}},
            {"name": "pg-3", "role": "replica", "state": "stopped", "leader": False,
             "upstream": None, "tags": {"replicatefrom": "pg-9"}},
        ],
    }  # fmt: skip
    assert render_topology(cluster).splitlines() == [
        "Cluster: demo",
        "+ pg-0 [leader] (primary, running, TL 2)",
        "  + pg-1 (replica, streaming, TL 2, lag 0 B, clonefrom)",
        "    + pg-2 (replica, streaming, TL 2, lag 16 B)",
        "+ pg-3 (replica, stopped, replicatefrom pg-9, not streaming from it)",
    ]


# ------------------------------------------------------------------ the loop on the fakes


def _streams_from(c: LoopCluster, name: str) -> tuple[str | None, str | None]:
    """(upstream host, slot name) of `name`'s streaming standby; (None, None) if it does not
    stream."""
    pg = c[name].pg
    if not pg.streaming or pg.conninfo is None:
        return None, None
    return pg.conninfo.primary_host, pg.conninfo.slot_name


async def test_a_cascading_replica_streams_from_its_upstream_and_falls_back_when_it_dies() -> None:
    c = LoopCluster(tags={"c": Tags(replicatefrom="b")})
    a, b = c["a"], c["b"]
    await c.run_until(lambda: _streams_from(c, "c")[0] == "b" and c.leader() == "a")
    await c.round()
    assert _streams_from(c, "c") == ("b", None)  # no slot on a replica
    assert _streams_from(c, "b")[0] == "a"
    await c.run_until(lambda: a.pg.slots == {"b"})  # the leader keeps none for c
    record = next(m for m in (await a.dcs.get_cluster()).members if m.name == "c")
    assert record.upstream == "b" and record.tags.replicatefrom == "b"
    b.alive = False
    b.pg.crash()
    fell_back = await c.run_until(lambda: _streams_from(c, "c")[0] == "a")
    # When b's record expires (a dead agent's record outlives it by at most ttl_s).
    timing = a.settings.timing
    assert fell_back <= timing.ttl_s + 2 * timing.loop_wait_s
    assert _streams_from(c, "c") == ("a", "c")  # with its slot again
    await c.run_until(lambda: "c" in a.pg.slots)
    b.alive = True
    await c.run_until(lambda: _streams_from(c, "c")[0] == "b" and _streams_from(c, "b")[0] == "a")


async def test_a_member_without_data_clones_from_a_clonefrom_replica() -> None:
    c = LoopCluster(tags={"b": Tags(clonefrom=True)})
    await c.bootstrap()
    cc = c["c"]
    cc.pg.crash()
    cc.pg.data = None  # its data directory is lost
    cc.pg.calls.clear()
    await c.run_until(lambda: "clone" in cc.pg.calls)
    assert cc.pg.conninfo is not None and cc.pg.conninfo.primary_host == "b"
    await c.run_until(lambda: c.healthy("a"))  # then it follows the leader
