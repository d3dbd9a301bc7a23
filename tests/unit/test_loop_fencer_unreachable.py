"""A leader whose fencer stops answering (issue 16: a member under a 0.01-CPU quota, the fencer
starved in the same cgroup, its ARM calls timing out): the real HaLoop + Executor on the
memory DCS, the fake PostgreSQL and a fake clock.

The fake fencer here neither answers nor fires (`enforcing = False`: starved past its own
deadline), so the agent alone must keep the rule that a primary stops accepting writes before
its lease can pass to another member. Every cycle checks that at most one PostgreSQL accepts
writes, and these tests also that the leader key never names another member (nor nobody)
while the old primary still accepts writes.
"""

from __future__ import annotations

from tests.unit.fakes.loop_cluster import LoopCluster, Node


def starve_fencer(node: Node) -> None:
    node.fence.unavailable = True
    node.fence.enforcing = False


async def step(c: LoopCluster, old: str, step_s: float = 1.0) -> None:
    """One round, checking after every member's cycle that `old` accepts writes only while
    the leader key still names it."""
    c.advance(step_s)
    for name, node in sorted(c.nodes.items()):
        if node.alive and not node.loop.executor.exited:
            await c.cycle(name)
            if c[old].pg.is_primary:
                assert c.leader() == old, (
                    f"{old} still accepts writes while the leader key names {c.leader()!r} "
                    f"(after {name}'s cycle at {c.clock.monotonic():.1f})"
                )


async def test_a_leader_whose_fencer_stops_answering_stops_writes_before_giving_up_the_lease() -> (
    None
):
    c = LoopCluster()
    old = await c.bootstrap()
    starve_fencer(c[old])
    for _ in range(40):
        await step(c, old)
    new = c.leader()
    assert new not in (None, old)
    assert c.healthy(new or "")
    assert not c[old].pg.is_primary


async def test_a_leader_keeps_leading_through_a_fencer_silence_shorter_than_its_deadline() -> None:
    # A renewal the DCS accepted but whose deadline the fencer did not take leaves the lease
    # standing to the deadline already armed: a silence of the fencer shorter than that is
    # retried, not a failover (no false failover from a starved fencer's hiccup).
    c = LoopCluster()
    old = await c.bootstrap()
    a = c[old]
    sent = a.loop.memory.lease_sent_at
    assert sent is not None
    deadline = a.settings.timing.fence_deadline(sent)
    starve_fencer(a)
    while c.clock.monotonic() + 1.5 < deadline:
        await step(c, old, 0.5)
    a.fence.unavailable = False
    a.fence.enforcing = True
    for _ in range(10):
        await step(c, old)
    assert c.leader() == old
    assert c.healthy(old)
    assert "stop" not in a.pg.calls


async def test_a_restarted_agent_whose_fencer_is_unreachable_stops_its_primary_first() -> None:
    # The agent restarts over a running primary (its key still names it) and cannot reach
    # the fencer: it must not lead, and must not hand the lease on while its PostgreSQL
    # still accepts writes.
    c = LoopCluster()
    old = await c.bootstrap()
    starve_fencer(c[old])
    await c.restart_agent(old)
    for _ in range(40):
        await step(c, old)
    new = c.leader()
    assert new not in (None, old)
    assert not c[old].pg.is_primary
