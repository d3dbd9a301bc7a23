"""Switchover and SIGTERM hand-over through the real HaLoop + Executor on fakes: the
candidate streams caught up first, holds every WAL record of the old primary when it
promotes, and a failed hand-over leaves no switchover request behind."""

from __future__ import annotations

from agent.postgres.process import StopMode
from tests.unit.fakes.loop_cluster import LoopCluster


async def test_a_switchover_hands_over_every_wal_record_to_the_candidate() -> None:
    c = LoopCluster()
    await c.bootstrap()
    a, b = c["a"], c["b"]
    written = a.pg.write(5)
    await c.request_switchover("a", "b")
    await c.run_until(lambda: c.healthy("b"))
    assert a.pg.calls.index("checkpoint") < a.pg.calls.index("stop")
    assert StopMode.FAST in a.pg.stops
    # b promoted holding all of a's WAL, the shutdown checkpoint included.
    assert b.pg.data is not None and b.pg.data.holds(1, written)
    assert b.pg.data.history[-1][1] > written
    assert "rewind" in a.pg.calls  # the old primary rejoins through pg_rewind
    await c.run_until(lambda: c.switchover() is None)
    history = b.loop.status().cluster_view
    assert history is not None and history.history[-1].reason == "switchover"


async def test_sigterm_hands_over_only_once_a_replica_streams_caught_up() -> None:
    c = LoopCluster()
    await c.bootstrap()
    a, b, cc = c["a"], c["b"], c["c"]
    b.pg.receiving = cc.pg.receiving = False  # both fall behind
    written = a.pg.write(3)
    a.loop.request_shutdown()
    for _ in range(3):
        await c.round()
        assert a.pg.is_primary  # serving while nobody is caught up
        assert "stop" not in a.pg.calls
        assert c.leader() == "a"
    b.pg.receiving = True
    await c.run_until(lambda: a.loop.executor.exited)
    assert a.loop.memory.handed_over
    assert not a.pg.running
    await c.run_until(lambda: c.leader() == "b" and c.postgres.primaries() == ["b"])
    assert b.pg.data is not None and b.pg.data.holds(1, written)
    cc.pg.receiving = True
    await c.run_until(lambda: c.streaming_from("b") == ["c"])


async def _start_a_hand_over_that_fails(c: LoopCluster, *, shutting_down: bool) -> None:
    """a starts a hand-over to b; once a checkpointed, b and c stop receiving, so b never
    gets the shutdown checkpoint."""
    a = c["a"]
    gate = a.pg.gate("checkpoint")
    if shutting_down:
        a.loop.request_shutdown()
    else:
        await c.request_switchover("a", "b")
    await c.run_until(lambda: a.loop.executor.pending is not None)
    c["b"].pg.receiving = c["c"].pg.receiving = False
    gate.set()


async def test_a_failed_operator_switchover_restarts_the_primary_and_deletes_the_request() -> None:
    c = LoopCluster()
    await c.bootstrap()
    a = c["a"]
    await _start_a_hand_over_that_fails(c, shutting_down=False)
    await c.run_until(lambda: a.loop.executor.pending is None)
    assert c.switchover() is None
    assert c.leader() == "a"
    await c.run_until(lambda: a.pg.is_primary)
    assert a.pg.calls.count("start") == 2
    c["b"].pg.receiving = c["c"].pg.receiving = True
    for _ in range(3):
        await c.round()
    assert c.healthy("a")
    assert c.switchover() is None  # a failed switchover is not retried


async def test_a_failed_sigterm_hand_over_releases_the_lease_naming_nobody() -> None:
    c = LoopCluster()
    await c.bootstrap()
    a = c["a"]
    await _start_a_hand_over_that_fails(c, shutting_down=True)
    await c.run_until(lambda: a.loop.executor.pending is None)
    assert c.switchover() is None
    assert not a.pg.running  # shutting down: it stays stopped
    await c.run_until(lambda: c.leader() != "a")
    assert c.switchover() is None  # the lease went naming nobody
    await c.run_until(lambda: a.loop.executor.exited)
    assert not a.loop.memory.handed_over
    await c.run_until(lambda: c.leader() is not None and c.postgres.primaries() != [])


async def test_a_request_written_for_another_leader_is_cleared() -> None:
    c = LoopCluster()
    await c.bootstrap()
    await c.request_switchover("c", "b")  # stale: c does not lead
    await c.run_until(lambda: c.switchover() is None)
    assert c.healthy("a")


async def test_a_leader_that_handed_over_once_hands_over_again_on_sigterm() -> None:
    # `handed_over` is about this shutdown's hand-over: one done earlier (a switchover, a
    # rolling restart) must not make a later SIGTERM release the lease naming nobody.
    c = LoopCluster()
    await c.bootstrap()
    a = c["a"]
    await c.request_switchover("a", "b")
    await c.run_until(lambda: c.healthy("b") and c.switchover() is None)
    await c.run_until(lambda: c.streaming_from("b") == ["a", "c"])
    await c.request_switchover("b", "a")
    await c.run_until(lambda: c.healthy("a") and c.switchover() is None)
    await c.run_until(lambda: c.streaming_from("a") == ["b", "c"])
    handovers = a.pg.calls.count("checkpoint")
    a.loop.request_shutdown()
    await c.run_until(lambda: a.loop.executor.exited)
    assert a.pg.calls.count("checkpoint") == handovers + 1  # it handed over again
    await c.run_until(lambda: c.leader() in ("b", "c") and c.postgres.primaries() == [c.leader()])


async def test_an_earlier_failed_action_does_not_stop_a_hand_over_on_sigterm() -> None:
    # Only a failed hand-over means "do not try again, release": not any failure before it
    # (here b's first slot creation as the new primary).
    c = LoopCluster()
    await c.bootstrap()
    b = c["b"]
    b.pg.fail("set_slots")
    await c.request_switchover("a", "b")
    await c.run_until(lambda: c.healthy("b") and c.switchover() is None)
    assert b.loop.memory.failed_at is not None
    b.loop.request_shutdown()
    await c.run_until(lambda: b.loop.executor.exited)
    assert "checkpoint" in b.pg.calls  # it handed over
    assert b.loop.memory.handed_over
