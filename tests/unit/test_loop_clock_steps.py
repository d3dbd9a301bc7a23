"""The wall clock of one member stepped by an hour, forward or back (issue 16: an NTP step or
an operator; CLOCK_MONOTONIC, which no one can set, does not move). Loop suite: real HaLoops
on the memory DCS, the fake PostgreSQL and the fake clock, each member with its own wall
clock (tests/unit/fakes/loop_cluster.py `MemberClock`).

Leases, renewals, fencing deadlines and lease expiry are all timed on monotonic time, so a
step changes nothing: no fencing, no demotion, no failover, one primary at every cycle, and a
dead leader is replaced after the same ttl as without a step. The wall clock only stamps
records for people (history, member records) and dates scheduled switchovers; failsafe
requests carry it, and a member refuses one whose age by its own wall clock is beyond ttl/2
either way (tests/unit/test_api.py).

libfaketime (Debian `faketime`) was tried for a chaos scenario and not used: with
FAKETIME_DONT_FAKE_MONOTONIC=1 (a real step does not move CLOCK_MONOTONIC) Python 3.11's
`time.sleep` fails with EINVAL under it (its absolute CLOCK_MONOTONIC `clock_nanosleep`), and
the agent's children (the fencer, PostgreSQL) inherit LD_PRELOAD; without it, monotonic time
jumps too, which no real clock step does.
"""

from __future__ import annotations

import pytest

from tests.unit.fakes.loop_cluster import LoopCluster

STEPS_S = (3600.0, -3600.0)


def _stable(c: LoopCluster, leader: str) -> None:
    node = c[leader]
    assert c.leader() == leader
    assert c.healthy(leader)
    assert node.fence.fenced_at is None, "the fencer stopped a primary whose lease held"
    assert node.pg.stops == [], "the primary was stopped or demoted"


@pytest.mark.parametrize("step_s", STEPS_S)
@pytest.mark.parametrize("who", ["leader", "replica"])
async def test_a_wall_clock_step_on_one_member_neither_fences_nor_fails_over(
    who: str, step_s: float
) -> None:
    c = LoopCluster()
    leader = await c.bootstrap()
    target = leader if who == "leader" else next(n for n in sorted(c.nodes) if n != leader)
    ttl_s = c[leader].settings.timing.ttl_s
    seen = len(c.primaries_seen)
    lsn = c[leader].pg.write()
    c[target].clock.wall_step_s = step_s
    for _ in range(int(3 * ttl_s)):  # three ttls, in 0.5 s steps, writing all along
        await c.round(0.5)
        lsn = c[leader].pg.write()
    c[target].clock.wall_step_s = 0.0  # and stepped back
    for _ in range(int(2 * ttl_s)):
        await c.round(0.5)
        lsn = c[leader].pg.write()
    _stable(c, leader)
    # The same single primary at every cycle since the step; every replica holds every write.
    assert {primaries for _, primaries in c.primaries_seen[seen:]} == {(leader,)}
    assert {pg.lsn for pg in c.postgres.instances.values()} == {lsn}


@pytest.mark.parametrize("step_s", STEPS_S)
async def test_a_dead_leader_whose_wall_clock_was_stepped_is_replaced_after_one_ttl(
    step_s: float,
) -> None:
    c = LoopCluster()
    leader = await c.bootstrap()
    ttl_s = c[leader].settings.timing.ttl_s
    for name, node in c.nodes.items():  # the leader one way, the replicas the other
        node.clock.wall_step_s = step_s if name == leader else -step_s
    await c.round(0.5)
    lsn = c[leader].pg.write()
    c[leader].alive = False
    c[leader].pg.crash()
    took = await c.run_until(
        lambda: c.leader() not in (None, leader) and c.postgres.primaries() == [c.leader()],
        step_s=0.5,
    )
    # The lease expires one ttl after its last renewal (at most a round before the kill); the
    # race and the promotion take a few rounds more. Without a step it takes the same.
    assert ttl_s - 1.0 <= took <= ttl_s + 2.0
    new = c.leader()
    assert new is not None
    assert c[new].pg.lsn >= lsn  # nothing acknowledged was lost
