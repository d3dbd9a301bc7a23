"""DCS PostgreSQL settings and rolling restarts through real HaLoops on fakes (memory DCS,
fake PostgreSQL, fake clock): a change reaches every member by reload, a restart-only one
leaves every member pending restart, and a rolling restart takes the replicas one at a
time, then the leader by a switchover; the hot-standby minimums change in the order that
keeps every standby able to start."""

from __future__ import annotations

import asyncio
import json

from agent.callback_settings import CallbackEvent, CallbackSettings
from agent.callbacks import CallbackResult
from agent.model import LocalRequestKind, MemberName, PgConfig, RecordKind, RestartSchedule
from agent.postgres.process import StopMode
from tests.unit.fakes.loop_cluster import LoopCluster


async def set_parameters(c: LoopCluster, **parameters: str) -> None:
    """What PATCH /config writes (the API's checks are tested on their own)."""
    dcs = c["a"].dcs
    view = await dcs.get_cluster()
    record = json.loads(view.config.to_json()) if view.config.version else {}
    record["postgresql"] = PgConfig(parameters=tuple(sorted(parameters.items()))).to_dict()
    assert await dcs.write_record(
        RecordKind.CONFIG, json.dumps(record), expected_version=view.config.version or None
    )


async def schedule_restart(c: LoopCluster, *, pending: bool, in_place: bool = False) -> None:
    schedule = RestartSchedule(
        members=tuple(MemberName(n) for n in sorted(c.nodes)),
        scheduled_at=c.clock.wall(),
        pending=pending,
        in_place=in_place,
    )
    assert await c["a"].dcs.write_record(
        RecordKind.RESTART, schedule.to_json(), expected_version=None
    )


def pending(c: LoopCluster) -> dict[str, tuple[str, ...]]:
    return {n: node.pg.pending_restart() for n, node in c.nodes.items() if node.pg.running}


async def test_a_reload_parameter_reaches_every_member_and_nothing_is_pending() -> None:
    c = LoopCluster()
    await c.bootstrap()
    await set_parameters(c, work_mem="64MB")
    await c.round()
    assert all(node.pg.running_params.get("work_mem") == "64MB" for node in c.nodes.values())
    assert pending(c) == {"a": (), "b": (), "c": ()}


async def test_a_pending_rolling_restart_restarts_replicas_one_at_a_time_then_switches_over() -> (
    None
):
    c = LoopCluster()
    leader = await c.bootstrap()
    await set_parameters(c, shared_buffers="256MB")
    await c.round()
    assert pending(c) == {n: ("shared_buffers",) for n in c.nodes}
    await c.round()  # the published status follows the next probe
    assert all(node.loop.status().pending_restart for node in c.nodes.values())
    starts = {n: node.pg.calls.count("start") for n, node in c.nodes.items()}
    await schedule_restart(c, pending=True)
    down_at_once, started = 0, c.clock.monotonic()
    while c.store.get_raw("restart") is not None or not c.healthy(c.leader() or ""):
        await c.round()
        down_at_once = max(down_at_once, sum(not n.pg.running for n in c.nodes.values()))
        assert c.clock.monotonic() - started < 100, "the rolling restart did not finish"
    assert down_at_once <= 1
    assert pending(c) == {"a": (), "b": (), "c": ()}
    assert c.leader() != leader  # the old leader went last, by a switchover
    assert all(node.pg.calls.count("start") == starts[n] + 1 for n, node in c.nodes.items())
    assert all(node.pg.running_params["shared_buffers"] == "256MB" for node in c.nodes.values())


async def test_a_rolling_restart_in_place_keeps_the_leader() -> None:
    c = LoopCluster()
    leader = await c.bootstrap()
    await set_parameters(c, shared_buffers="256MB")
    await c.round()
    await schedule_restart(c, pending=False, in_place=True)
    await c.run_until(lambda: c.store.get_raw("restart") is None and c.healthy(leader))
    assert pending(c) == {"a": (), "b": (), "c": ()}


async def test_raising_a_hot_standby_minimum_reaches_the_replicas_before_the_leader() -> None:
    c = LoopCluster()
    leader = await c.bootstrap()
    await set_parameters(c, max_connections="200")
    await c.round()
    await c.round()
    replicas = sorted(n for n in c.nodes if n != leader)
    # Replicas render the new value at once; the leader holds it back while they run less.
    assert all(pending(c)[n] == ("max_connections",) for n in replicas)
    assert pending(c)[leader] == ()
    await schedule_restart(c, pending=True)
    await c.run_until(lambda: c.store.get_raw("restart") is None and c.healthy(c.leader() or ""))
    for _ in range(3):
        await c.round()
    # Every replica restarted at 200 first; the leader then rendered 200 too (pending), and
    # nobody ever refused to start.
    assert all(not any("failed" in call for call in n.pg.calls) for n in c.nodes.values())
    values = {n: dict(node.pg.hot_standby())["max_connections"] for n, node in c.nodes.items()}
    leader_now = c.leader()
    assert leader_now is not None
    assert all(v >= values[leader_now] for v in values.values())


async def test_lowering_a_hot_standby_minimum_restarts_the_leader_in_place_first() -> None:
    c = LoopCluster()
    leader = await c.bootstrap()
    for node in c.nodes.values():  # everyone runs 200 already
        node.pg.running_params["max_connections"] = "200"
        node.pg.dynamic = PgConfig(parameters=(("max_connections", "200"),))
    await set_parameters(c, max_connections="200")
    for _ in range(2):
        await c.round()
    await set_parameters(c, max_connections="50")
    for _ in range(2):
        await c.round()
    # Only the leader may go down first; the replicas hold at what it runs.
    assert pending(c)[leader] == ("max_connections",)
    assert all(pending(c)[n] == () for n in c.nodes if n != leader)
    await schedule_restart(c, pending=True)
    await c.run_until(lambda: c.store.get_raw("restart") is None)
    assert c.leader() == leader  # in place: a switchover would strand it below its replicas
    await c.run_until(lambda: c.healthy(leader))
    assert dict(c[leader].pg.hot_standby())["max_connections"] == 50
    # The replicas now render 50 as well, pending their own restart.
    for _ in range(2):
        await c.round()
    assert all(pending(c)[n] == ("max_connections",) for n in c.nodes if n != leader)


async def test_a_scheduled_restart_waits_for_its_time() -> None:
    c = LoopCluster()
    leader = await c.bootstrap()
    starts = {n: node.pg.calls.count("start") for n, node in c.nodes.items()}
    at = c.clock.wall() + 30
    schedule = RestartSchedule(members=(MemberName("b"),), scheduled_at=at)
    assert await c["a"].dcs.write_record(
        RecordKind.RESTART, schedule.to_json(), expected_version=None
    )
    for _ in range(20):
        await c.round()
    assert c.store.get_raw("restart") is not None
    assert {n: node.pg.calls.count("start") for n, node in c.nodes.items()} == starts
    await c.run_until(lambda: c.store.get_raw("restart") is None, limit_s=60)
    assert c.clock.wall() >= at
    assert c["b"].pg.calls.count("start") == starts["b"] + 1
    assert c.leader() == leader and c["a"].pg.calls.count("start") == starts["a"]


async def test_a_leader_with_no_caught_up_replica_restarts_in_place_after_the_timeout() -> None:
    c = LoopCluster()
    leader = await c.bootstrap()
    for name in c.nodes:
        if name != leader:
            c[name].pg.receiving = False
    c[leader].pg.write(50)
    starts = c[leader].pg.calls.count("start")
    schedule = RestartSchedule(members=(MemberName(leader),), scheduled_at=c.clock.wall())
    assert await c["a"].dcs.write_record(
        RecordKind.RESTART, schedule.to_json(), expected_version=None
    )
    for _ in range(3):
        await c.round()
    assert c[leader].pg.calls.count("start") == starts  # waiting for a hand-over candidate
    waited = await c.run_until(lambda: c.store.get_raw("restart") is None, limit_s=60)
    assert waited >= c[leader].settings.timing.switchover_timeout_s - 3
    await c.run_until(lambda: c[leader].pg.is_primary)
    assert c.leader() == leader and c[leader].pg.calls.count("start") == starts + 1


async def test_a_leader_whose_hand_over_fails_restarts_in_place() -> None:
    c = LoopCluster()
    leader = await c.bootstrap()
    starts = c[leader].pg.calls.count("start")
    c[leader].pg.fail("checkpoint")  # the hand-over stops before PostgreSQL does
    schedule = RestartSchedule(members=(MemberName(leader),), scheduled_at=c.clock.wall())
    assert await c["a"].dcs.write_record(
        RecordKind.RESTART, schedule.to_json(), expected_version=None
    )
    await c.run_until(lambda: c.store.get_raw("restart") is None, limit_s=60)
    await c.run_until(lambda: c.healthy(leader), limit_s=60)
    assert "stop" in c[leader].pg.calls
    assert c[leader].pg.calls.count("start") == starts + 1


async def in_time(c: LoopCluster) -> None:
    """One round, which must not block: a cycle that waited for a slow stop would hold the
    whole loop (and its renewals) with it. The bound is real time, only a guard."""
    await asyncio.wait_for(c.round(), timeout=10.0)


async def test_a_leader_restart_in_place_slower_than_the_lease_keeps_the_leader() -> None:
    # Review R1: the stop (a long shutdown checkpoint) takes longer than ttl; the loop keeps
    # renewing meanwhile, so the restart stays a restart, not a failover.
    c = LoopCluster()
    leader = await c.bootstrap()
    node = c[leader]
    stop = node.pg.gate("stop")
    before = len(node.pg.calls)
    node.loop.submit(LocalRequestKind.RESTART)
    for _ in range(int(2 * node.settings.timing.ttl_s)):
        await in_time(c)
        assert c.leader() == leader
    calls = node.pg.calls[before:]
    assert calls.index("checkpoint") < calls.index("stop")  # checkpointed while writable
    stop.set()
    await c.run_until(lambda: node.loop.executor.pending is None and c.healthy(leader))
    assert node.fence.fenced_at is None
    assert node.pg.calls[before:].count("start") == 1
    assert all("promote" not in c[n].pg.calls for n in c.nodes if n != leader)


async def test_a_leader_restart_in_place_does_not_start_once_its_lease_is_gone() -> None:
    c = LoopCluster()
    leader = await c.bootstrap()
    node = c[leader]
    stop = node.pg.gate("stop")
    node.loop.submit(LocalRequestKind.RESTART)
    await in_time(c)
    c.store.partition(leader)  # renewals fail from now on
    await c.run_until(lambda: c.leader() not in (None, leader), limit_s=60)
    stop.set()
    for _ in range(3):
        await in_time(c)
    assert not node.pg.running
    assert node.pg.calls.count("start") == 1  # its first start, at bootstrap
    c.store.heal(leader)
    new = c.leader()
    assert new is not None
    await c.run_until(lambda: c.healthy(new))


async def test_a_primary_that_came_up_after_its_fencing_deadline_is_stopped_at_once() -> None:
    # The start (a long crash recovery) outlasts the lease while renewals fail: the fencer
    # fired while no postmaster ran, so the restart itself must stop what it started.
    c = LoopCluster()
    leader = await c.bootstrap()
    node = c[leader]
    start = node.pg.gate("start")
    node.loop.submit(LocalRequestKind.RESTART)
    await in_time(c)
    assert "stop" in node.pg.calls
    c.store.partition(leader)
    await c.run_until(lambda: c.leader() not in (None, leader), limit_s=60)
    start.set()
    await c.settle()
    assert not node.pg.is_primary
    assert node.pg.stops[-1] is StopMode.IMMEDIATE
    c.check_invariants()


async def test_a_leader_that_won_again_after_its_restart_hand_over_is_not_restarted_again() -> None:
    # Review R2: a hands over to b for its turn; b's pre_promote vetoes before a streamed
    # from it (so a never cleared `current`); a wins the race and is promoted again. Its
    # PostgreSQL was restarted by the hand-over: no second restart in place.
    veto = CallbackSettings(pre_promote="/cb")
    c = LoopCluster(("a", "b"), callbacks=veto)
    leader = await c.bootstrap()
    assert leader == "a"
    a, b = c["a"], c["b"]
    b.callbacks.script(CallbackEvent.PRE_PROMOTE, CallbackResult.FAILED)
    stops = len(a.pg.stops)
    schedule = RestartSchedule(members=(MemberName("a"),), scheduled_at=c.clock.wall())
    assert await a.dcs.write_record(RecordKind.RESTART, schedule.to_json(), expected_version=None)
    await c.run_until(lambda: b.callbacks.events(CallbackEvent.PRE_PROMOTE) == ["replica"])
    await c.run_until(lambda: c.leader() == "a" and a.pg.is_primary, limit_s=60)
    for _ in range(10):
        await c.round()
    assert c.store.get_raw("restart") is None
    assert len(a.pg.stops) == stops + 1  # the hand-over's stop, and no restart in place
    assert a.pg.is_primary and c.leader() == "a"
