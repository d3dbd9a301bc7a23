"""Crashes and failures in the long actions (Bootstrap, Clone, Rewind): the loop keeps its
lease while one runs, records the failure, backs off and converges."""

from __future__ import annotations

from agent.postgres.bootstrap import SourceUnreachable
from tests.unit.fakes.loop_cluster import LoopCluster


async def test_a_clone_whose_source_crashes_midway_is_retried_after_the_backoff() -> None:
    c = LoopCluster()
    gate = c["b"].pg.gate("clone")
    await c.run_until(lambda: c["b"].loop.executor.pending is not None)
    assert c["b"].loop.status().state == "cloning"
    c["a"].pg.crash()  # the source dies while b copies it
    gate.set()
    await c.run_until(lambda: c.healthy("a"))
    assert c["b"].pg.calls.count("clone") == 2
    assert c.leader() == "a"


async def test_the_leader_keeps_its_lease_through_a_hung_bootstrap() -> None:
    c = LoopCluster()
    gate = c["a"].pg.gate("create_roles")
    await c.run_until(lambda: c["a"].loop.executor.pending is not None)
    for _ in range(15):  # longer than a ttl
        await c.round()
        assert c.leader() == "a"
        assert c["a"].loop.status().state == "bootstrapping"
    gate.set()
    await c.run_until(lambda: c.healthy("a"))


async def test_a_failed_rewind_is_repaired_by_clearing_and_cloning_again() -> None:
    c = LoopCluster()
    await c.bootstrap()
    a = c["a"]
    a.alive = False
    a.pg.crash()
    await c.run_until(lambda: c.leader() == "b" and c.streaming_from("b") == ["c"])
    a.pg.fail("rewind")
    a.alive = True
    await c.run_until(lambda: c.healthy("b"))
    assert a.pg.calls.count("rewind") == 1
    assert "clear_data_dir" in a.pg.calls
    await c.round()
    assert a.loop.memory.rewind_failures == 0


async def test_a_rewind_source_out_of_reach_is_retried_not_recloned() -> None:
    c = LoopCluster()
    await c.bootstrap()
    a = c["a"]
    a.alive = False
    a.pg.crash()
    await c.run_until(lambda: c.leader() == "b" and c.streaming_from("b") == ["c"])
    a.pg.fail("rewind", SourceUnreachable("no route to host (injected)"))
    a.alive = True
    await c.run_until(lambda: c.healthy("b"))
    assert a.pg.calls.count("rewind") == 2
    assert "clear_data_dir" not in a.pg.calls
    # Retried within each rewind for a ttl, not for rewind_timeout_s (300 s): a leader that
    # died as the rewind began kept its member stopped and busy (docs/chaos.md finding 28).
    assert a.pg.rewind_unreachable_s == [a.settings.timing.ttl_s] * 2


async def test_a_failed_promotion_does_not_leave_two_leaders() -> None:
    c = LoopCluster()
    await c.bootstrap()
    c["a"].alive = False
    c["a"].pg.crash()
    c["b"].pg.fail("promote")
    await c.run_until(
        lambda: c.postgres.primaries() != [] and len(c.streaming_from(c.leader() or "")) == 1
    )
    leader = c.leader()
    assert leader is not None and c.postgres.primaries() == [leader]


async def test_a_failed_bootstrap_withdraws_its_claim_and_the_cluster_still_forms() -> None:
    c = LoopCluster()
    c["a"].pg.fail("initdb")  # the first bootstrap fails (a claims first: name order)
    leader = await c.bootstrap()
    assert c.healthy(leader)


async def test_a_claim_whose_claimant_died_mid_bootstrap_is_withdrawn() -> None:
    c = LoopCluster()
    gate = c["a"].pg.gate("initdb")
    await c.run_until(lambda: c["a"].loop.executor.pending is not None)
    c["a"].alive = False  # its agent dies during initdb: its lease lapses

    def formed() -> bool:
        new = c.leader()
        return new in ("b", "c") and c.postgres.primaries() == [new] and bool(c.streaming_from(new))

    await c.run_until(formed)
    gate.set()


async def test_a_fresh_claim_read_before_its_claimant_takes_the_lease_is_left_alone() -> None:
    # The claimant writes its claim, then takes the lease: two writes. b cycles in between and
    # sees a claim with no leader. Withdrawn then, a's bootstrap failed at its record step
    # ("our claim on the cluster is gone") and was discarded; members did that to each other
    # round after round in a loop of real 3-member bootstraps (hci, issue 16).
    c = LoopCluster()
    a = c["a"]
    acquire = a.dcs.acquire_leader
    b_looked: list[bool] = []

    async def acquire_after_b_looked() -> bool:
        if not b_looked:
            b_looked.append(True)
            await c.cycle("b")
        return await acquire()

    a.dcs.acquire_leader = acquire_after_b_looked  # type: ignore[method-assign]
    leader = await c.bootstrap()
    assert leader == "a" and b_looked == [True]
    assert a.pg.calls.count("initdb") == 1 and "clear_data_dir" not in a.pg.calls


async def test_a_former_primary_whose_fencer_does_not_answer_rewinds_and_does_not_reclone() -> None:
    """Chaos finding 25: a former primary whose fencer was frozen failed its rewind at the
    disarm before pg_rewind ran; counted as a failed rewind, it cleared its data directory
    and cloned the whole database again. Its server stopped, it rewinds without the disarm
    and streams, and nothing is copied again."""
    c = LoopCluster()
    await c.bootstrap()
    a = c["a"]
    a.alive = False
    a.pg.crash()
    await c.run_until(lambda: c.leader() == "b" and c.streaming_from("b") == ["c"])
    a.fence.unavailable = True
    a.alive = True
    await c.run_until(lambda: c.healthy("b"))
    assert a.pg.calls.count("rewind") == 1
    assert "clear_data_dir" not in a.pg.calls and "clone" not in a.pg.calls
    assert a.loop.memory.rewind_failures == 0
