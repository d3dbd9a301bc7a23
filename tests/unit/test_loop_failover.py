"""The real HaLoop + Executor on the memory DCS, the fake PostgreSQL and a fake clock:
bootstrap, lost races, the fence deadline, DCS flaps, a hung PostgreSQL, failsafe rounds.

Every cycle checks that at most one PostgreSQL accepts writes (tests/unit/fakes)."""

from __future__ import annotations

from agent.postgres.process import StopMode
from tests.unit.fake_postgres import WRITE_BYTES
from tests.unit.fakes.loop_cluster import LoopCluster


async def test_an_empty_cluster_bootstraps_one_primary_that_the_others_clone() -> None:
    c = LoopCluster()
    assert await c.bootstrap() == "a"
    a = c["a"]
    systems = {pg.data.system_id for pg in c.postgres.instances.values() if pg.data}
    assert c.store.get_raw("initialize") == a.pg.data.system_id.encode()  # type: ignore[union-attr]
    assert len(systems) == 1
    assert [n for n, node in c.nodes.items() if "initdb" in node.pg.calls] == ["a"]
    # The fencer is armed from the send time of the last renewal.
    sent = a.loop.memory.lease_sent_at
    assert sent is not None
    assert a.fence.deadline == a.settings.timing.fence_deadline(sent)
    assert a.pg.slots == {"b", "c"}
    await c.round()
    status = c["b"].loop.status()
    assert (status.role, status.leader, status.lag_bytes) == ("replica", "a", 0)


async def test_a_member_that_loses_the_initialize_race_does_not_bootstrap() -> None:
    c = LoopCluster()
    c["a"].dcs.faults.lose_races = 1  # ClaimInitialize: another member was faster
    await c.round()
    assert "initdb" not in c["a"].pg.calls
    assert c.leader() == "b"
    assert await c.bootstrap() == "b"
    assert "clone" in c["a"].pg.calls


async def test_a_replica_that_loses_the_leader_race_does_not_promote() -> None:
    c = LoopCluster()
    await c.bootstrap()
    c["a"].alive = False
    c["a"].pg.crash()
    c["b"].dcs.faults.lose_races = 1  # its AcquireLeader loses
    await c.run_until(lambda: c["b"].dcs.faults.lose_races == 0)
    assert c.leader() is None
    assert "promote" not in c["b"].pg.calls
    assert not c["b"].pg.is_primary
    await c.run_until(lambda: c.leader() == "b" and c.streaming_from("b") == ["c"])
    assert c.postgres.primaries() == ["b"]


async def test_a_primary_cut_off_from_the_dcs_demotes_at_its_fence_deadline() -> None:
    c = LoopCluster()
    await c.bootstrap()
    a = c["a"]
    timing = a.settings.timing
    sent = a.loop.memory.lease_sent_at
    assert sent is not None
    a.fence.enforcing = False  # the loop itself must demote in time
    c.store.partition("a")
    await c.run_until(lambda: not a.pg.is_primary, step_s=0.25)
    demoted = c.clock.monotonic()
    assert demoted <= timing.fence_deadline(sent) + 0.25
    assert demoted < sent + timing.ttl_s  # before the lease can expire for the others
    assert a.pg.stops[-1] is StopMode.FAST
    assert a.fence.state == "disarmed"
    assert a.loop.metrics is not None
    await c.run_until(lambda: c.leader() == "b" and c.postgres.primaries() == ["b"])
    c.store.heal("a")
    await c.run_until(lambda: c.healthy("b"))
    assert "rewind" in a.pg.calls


async def test_the_fencer_stops_a_primary_whose_agent_froze() -> None:
    c = LoopCluster()
    await c.bootstrap()
    a = c["a"]
    deadline = a.fence.deadline
    assert deadline is not None
    a.alive = False  # its loop never cycles again
    await c.run_until(lambda: not a.pg.is_primary, step_s=0.25)
    assert a.fence.fenced_at is not None
    assert a.fence.fenced_at <= deadline + 0.25
    assert a.loop.metrics.render()[0].count(b"pgwarden_fencing_events_total 1.0") == 1
    await c.run_until(lambda: c.leader() == "b" and c.streaming_from("b") == ["c"])


async def test_a_dcs_flap_shorter_than_the_deadline_changes_nothing() -> None:
    c = LoopCluster()
    await c.bootstrap()
    a = c["a"]
    c.store.faults.unavailable = True
    for _ in range(4):
        await c.round(step_s=1.0)
        assert a.pg.is_primary
        assert a.loop.status().lease_held
        assert not a.loop.status().dcs_ok
    c.store.faults.unavailable = False
    for _ in range(5):
        await c.round()
    assert c.healthy("a")
    assert a.pg.stops == []
    assert all(p in ((), ("a",)) for _, p in c.primaries_seen)
    assert "promote" not in c["b"].pg.calls + c["c"].pg.calls


async def test_a_hung_primary_is_killed_and_restarted_in_place() -> None:
    c = LoopCluster()
    await c.bootstrap()
    a = c["a"]
    timing = a.settings.timing
    a.pg.hang()
    hung_at = c.clock.monotonic()
    await c.run_until(lambda: StopMode.KILL in a.pg.stops, step_s=0.5)
    assert c.clock.monotonic() - hung_at <= timing.postgres_unresponsive_s + 1.0
    assert "close_probe" in a.pg.calls
    await c.run_until(lambda: c.healthy("a"))
    assert c.leader() == "a"


async def test_a_hung_primary_is_killed_before_the_lease_is_released() -> None:
    c = LoopCluster()
    await c.bootstrap()
    a = c["a"]
    a.pg.hang()
    a.pg.fail("start", times=1000)  # it never comes back
    while c.leader() == "a":
        await c.round(step_s=0.5)
        assert c.clock.monotonic() < 1100
    # The lease went only once no process was left that could resume writing.
    assert a.pg.pid() is None
    assert StopMode.KILL in a.pg.stops
    await c.run_until(lambda: c.leader() == "b" and c.streaming_from("b") == ["c"])


async def test_failsafe_keeps_the_primary_while_every_member_confirms_it() -> None:
    c = LoopCluster(failsafe=True)
    await c.bootstrap()
    a = c["a"]
    timing = a.settings.timing
    await c.run_until(lambda: a.loop.memory.failsafe_peers is not None)
    c.store.faults.unavailable = True  # the whole DCS is gone
    lease_sent = a.loop.memory.lease_sent_at
    assert lease_sent is not None
    until = lease_sent + 3 * timing.ttl_s
    while c.clock.monotonic() < until:
        await c.round(step_s=0.5)
        assert a.pg.is_primary
        assert a.loop.status().failsafe_active or c.clock.monotonic() < lease_sent + 8
    confirmed = a.loop.memory.failsafe_sent_at
    assert confirmed is not None and confirmed > timing.fence_deadline(lease_sent)
    assert a.fence.deadline == timing.fence_deadline(confirmed)
    assert "promote" not in c["b"].pg.calls + c["c"].pg.calls
    # One member stops answering: no more rounds confirmed, demotion at the last deadline.
    a.peers.unreachable.add("c")
    last = a.loop.memory.failsafe_sent_at
    assert last is not None
    await c.run_until(lambda: not a.pg.is_primary, step_s=0.25)
    assert c.clock.monotonic() <= timing.fence_deadline(last) + 0.25
    assert a.loop.memory.failsafe_sent_at == last


async def test_a_failsafe_round_the_fencer_cannot_arm_counts_for_nothing() -> None:
    c = LoopCluster(failsafe=True)
    await c.bootstrap()
    a = c["a"]
    timing = a.settings.timing
    await c.run_until(lambda: a.loop.memory.failsafe_peers is not None)
    lease_sent = a.loop.memory.lease_sent_at
    assert lease_sent is not None
    c.store.faults.unavailable = True
    a.fence.unavailable = True
    await c.run_until(lambda: not a.pg.is_primary, step_s=0.25)
    assert c.clock.monotonic() <= timing.fence_deadline(lease_sent) + 0.25
    assert a.loop.memory.failsafe_sent_at is None


async def test_a_replica_whose_agent_restarted_after_the_leader_died_does_not_win_far_behind() -> (
    None
):
    # The lag limit must outlive the leader's records and the candidate's agent (review R3):
    # the leader's last position is kept in the DCS `position` record.
    c = LoopCluster(("a", "b"))
    await c.bootstrap()
    a, b = c["a"], c["b"]
    b.pg.receiving = False  # b's WAL receiver gets nothing from now on
    limit = a.settings.ha.maximum_lag_on_failover_bytes
    a.pg.write(2 * limit // WRITE_BYTES)
    for _ in range(3):
        await c.round()  # a's position reaches the DCS
    assert a.pg.lsn - b.pg.lsn > limit
    # a dies with its agent; b's agent is down too until a's lease and records are gone,
    # then starts again remembering nothing.
    a.alive = b.alive = False
    a.pg.crash()
    await c.run_until(lambda: c.leader() is None and c.store.get_raw("members/a") is None)
    b = await c.restart_agent("b")
    for _ in range(int(3 * b.settings.timing.ttl_s)):
        await c.round()
    assert "promote" not in b.pg.calls
    assert c.leader() is None
    assert "maximum_lag_on_failover_bytes" in b.loop.status().last_reason


async def test_an_idle_leader_writes_its_position_once_and_a_busy_one_at_most_once_a_cycle() -> (
    None
):
    c = LoopCluster()
    await c.bootstrap()
    a = c["a"]

    def version() -> int | None:
        entry = c.store._entry("position")
        return entry.mod_revision if entry is not None else None

    written = version()
    assert written is not None
    for _ in range(30):  # a minute of idle rounds: not one write
        await c.round()
        assert version() == written
    writes: int = 0
    last: int | None = written
    limit = a.settings.ha.maximum_lag_on_failover_bytes
    rounds = 30
    for _ in range(rounds):  # a heavy write load: past the lag limit every second
        a.pg.write(2 * limit // WRITE_BYTES)
        await c.round()
        if version() != last:
            writes, last = writes + 1, version()
    assert 0 < writes <= rounds / a.settings.timing.loop_wait_s
