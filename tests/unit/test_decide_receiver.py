"""The WAL-receiver watchdog (agent/decide/receiver.py; chaos finding 17): a standby that has
not streamed from its running upstream, nor moved its WAL position, for
`ha.wal_receiver_stall_s` restarts its WAL receiver; each further restart in the same stretch
waits twice as long. Never for a standby that streams, one that catches up without a receiver
(its position moves), one whose leader's PostgreSQL is down, or one with no leader at all.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from agent.actions import RestartWalReceiver
from agent.decide import Memory, decide
from agent.events import EventReason, event_for
from agent.model import ClusterView, LocalState, MemberName, PgState, Role
from agent.settings import HaSettings, Settings
from agent.value_rules import InvalidSettings
from tests.unit.fakes.loop_cluster import LoopCluster
from tests.unit.test_decide import NOW, REPLICA, A, make_settings, member, obs, view

BOUND = A.ha.wal_receiver_stall_s
STUCK = replace(REPLICA, streaming=False, receive_lsn=None, postmaster_pid=77)
FOLLOWING_B = Memory(following=MemberName("b"))


def _view(state: PgState = PgState.RUNNING, leader: str | None = "b") -> ClusterView:
    return view(leader, member("b", Role.PRIMARY, state), member("c"))


def _run(
    locals_at: list[tuple[float, LocalState]],
    cluster: ClusterView | None = None,
    settings: Settings = A,
) -> list[tuple[float, RestartWalReceiver, str]]:
    """decide() at each (seconds after NOW, local state), Memory carried; the restarts."""
    memory = FOLLOWING_B
    fired = []
    for at, local in locals_at:
        decision, memory = decide(
            replace(obs(cluster or _view(), local), now=NOW + at), memory, settings
        )
        for action in decision.actions:
            if isinstance(action, RestartWalReceiver):
                fired.append((at, action, decision.reason))
    return fired


def _every_second(local: LocalState, until_s: float) -> list[tuple[float, LocalState]]:
    return [(float(t), local) for t in range(int(until_s) + 1)]


def test_a_standby_not_streaming_from_its_running_leader_restarts_its_receiver_at_the_bound() -> (
    None
):
    fired = _run(_every_second(STUCK, 8 * BOUND))
    times = [at for at, _, _ in fired]
    # At the bound, then 2x and 4x the bound after each restart (the stretch goes on).
    assert times == [BOUND, 3 * BOUND, 7 * BOUND]
    _, action, reason = fired[0]
    assert action == RestartWalReceiver(upstream=MemberName("b"), stalled_s=BOUND)
    assert f"not streaming from b for {BOUND:.0f} s" in reason


def test_the_wait_between_restarts_stops_doubling_at_eight_times_the_bound() -> None:
    fired = _run(_every_second(STUCK, 40 * BOUND))
    gaps = [b - a for (a, _, _), (b, _, _) in itertools.pairwise(fired)]
    assert gaps[:4] == [2 * BOUND, 4 * BOUND, 8 * BOUND, 8 * BOUND]


def test_the_reason_says_not_streaming_while_the_stretch_lasts() -> None:
    decision, _ = decide(obs(_view(), STUCK), FOLLOWING_B, A)
    assert decision.reason == "standby of b, not streaming for 0 s"
    decision, _ = decide(obs(_view(), REPLICA), FOLLOWING_B, A)
    assert decision.reason == "streaming from b"


def test_a_streaming_standby_never_restarts_its_receiver() -> None:
    assert _run(_every_second(REPLICA, 10 * BOUND)) == []


def test_a_standby_catching_up_without_a_receiver_never_restarts_it() -> None:
    # Replaying a backlog from pg_wal or the archive: no receiver, but the position moves.
    moving = [
        (float(t), replace(STUCK, replay_lsn=1000 + t, wal_lsn=1000 + t))
        for t in range(int(10 * BOUND))
    ]
    assert _run(moving) == []


def test_a_standby_replaying_a_backlog_below_its_wal_end_never_restarts_its_receiver() -> None:
    # After a restart: the WAL end found in pg_wal stays where the scan found it while the
    # startup process replays towards it (no receiver until it runs out).
    replaying = [
        (float(t), replace(STUCK, replay_lsn=1000 + t, wal_lsn=5000))
        for t in range(int(10 * BOUND))
    ]
    assert _run(replaying) == []


@pytest.mark.parametrize(
    ("cluster", "why"),
    [
        (_view(PgState.STOPPED), "the leader's PostgreSQL is down: the failover path owns it"),
        (_view(PgState.STARTING), "the leader's PostgreSQL is starting"),
        (_view(leader=None), "no leader at all"),
    ],
)
def test_a_standby_whose_upstream_does_not_run_never_restarts_its_receiver(
    cluster: ClusterView, why: str
) -> None:
    assert _run(_every_second(STUCK, 10 * BOUND), cluster) == [], why


def test_a_stretch_that_ended_does_not_count_towards_the_next() -> None:
    # Stuck for most of the bound, streaming for one cycle, then stuck again: the bound
    # counts from the second stretch's start.
    half = BOUND - 2
    run = [
        *_every_second(STUCK, half),
        (half + 1, REPLICA),
        *[(half + 2 + t, STUCK) for t in range(int(BOUND) + 1)],
    ]
    assert [at for at, _, _ in _run(run)] == [half + 2 + BOUND]


def test_a_cycle_outside_the_follower_branch_ends_the_stretch() -> None:
    # Stuck under b for most of the bound, one cycle with no leader record (a failover
    # began), then b again: the bound counts from b's return.
    memory = FOLLOWING_B
    for t in range(int(BOUND) - 1):
        _, memory = decide(replace(obs(_view(), STUCK), now=NOW + t), memory, A)
    _, memory = decide(replace(obs(_view(leader=None), STUCK), now=NOW + BOUND - 1), memory, A)
    assert memory.receiver_stall is None
    decision, _ = decide(replace(obs(_view(), STUCK), now=NOW + BOUND + 1), memory, A)
    assert not [a for a in decision.actions if isinstance(a, RestartWalReceiver)]


def test_a_restarted_postmaster_starts_a_new_stretch() -> None:
    other = replace(STUCK, postmaster_pid=78)
    run = [*_every_second(STUCK, BOUND - 1), *[(BOUND + t, other) for t in range(5)]]
    assert _run(run) == []


def test_a_cascading_standby_watches_its_stream_from_the_replica_it_follows() -> None:
    cascading = make_settings("a", replicatefrom="c")
    from_c = Memory(following=MemberName("c"))
    memory, fired = from_c, []
    for t in range(int(BOUND) + 1):
        decision, memory = decide(replace(obs(_view(), STUCK), now=NOW + t), memory, cascading)
        fired += [a for a in decision.actions if isinstance(a, RestartWalReceiver)]
    assert fired == [RestartWalReceiver(upstream=MemberName("c"), stalled_s=BOUND)]


def test_a_paused_cluster_restarts_no_receiver() -> None:
    paused = replace(_view(), config=replace(_view().config, paused=True))
    assert _run(_every_second(STUCK, 10 * BOUND), paused) == []


def test_the_watchdog_is_off_at_zero() -> None:
    off = replace(A, ha=replace(A.ha, wal_receiver_stall_s=0.0))
    assert _run(_every_second(STUCK, 10 * BOUND), settings=off) == []


@pytest.mark.parametrize("value", [-1.0, 0.5])
def test_a_bound_that_is_neither_off_nor_at_least_a_second_is_refused(value: float) -> None:
    with pytest.raises(InvalidSettings, match="wal_receiver_stall_s"):
        HaSettings(wal_receiver_stall_s=value)


def test_a_restart_is_an_event_an_operator_sees() -> None:
    event = event_for(RestartWalReceiver(upstream=MemberName("b"), stalled_s=31.2))
    assert event is not None and event.reason is EventReason.WAL_RECEIVER_RESTARTED
    assert event.warning and "not streaming from b for 31 s" in event.note


# --------------------------------------------------------------------------- the loop


async def test_a_stuck_receiver_streams_again_after_the_bound_with_no_failover() -> None:
    c = LoopCluster()
    leader = await c.bootstrap()
    victim = next(n for n in ("a", "b", "c") if n != leader)
    pg = c[victim].pg
    pg.stick_receiver()
    c[leader].pg.write(5)
    await c.round()
    assert not pg.streaming and pg.receiver_restarts == 0
    took = await c.run_until(lambda: pg.streaming, limit_s=3 * BOUND)
    assert BOUND <= took <= BOUND + 2 * A.timing.loop_wait_s
    assert pg.receiver_restarts == 1 and pg.lsn == c[leader].pg.lsn
    assert c.leader() == leader and c.postgres.primaries() == [leader]
    exposition = c[victim].loop.metrics.render()[0].decode()
    assert "pgwarden_wal_receiver_restarts_total 1.0" in exposition
    # Healthy from then on: no further restart, on no member.
    for _ in range(int(3 * BOUND)):
        await c.round()
    assert [p.receiver_restarts for p in c.postgres.instances.values()].count(0) == 2
    assert pg.receiver_restarts == 1


async def test_a_receiver_whose_path_still_hangs_is_restarted_with_a_doubling_wait() -> None:
    c = LoopCluster()
    leader = await c.bootstrap()
    victim = next(n for n in ("a", "b", "c") if n != leader)
    pg = c[victim].pg
    pg.stick_receiver()
    pg.stuck_path = True  # every new receiver hangs too, until the fault leaves the path
    took = await c.run_until(lambda: pg.receiver_restarts == 2, limit_s=4 * BOUND)
    assert 3 * BOUND <= took <= 3 * BOUND + 2 * A.timing.loop_wait_s
    pg.stuck_path = False
    took = await c.run_until(lambda: pg.streaming, limit_s=6 * BOUND)
    assert 4 * BOUND - 2 * A.timing.loop_wait_s <= took <= 4 * BOUND + 2 * A.timing.loop_wait_s
    assert pg.receiver_restarts == 3 and c.leader() == leader
