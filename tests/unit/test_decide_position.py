"""The leader's last WAL position in the DCS `position` record (agent/decide/position.py):
when the leader writes it, and how candidates judge their lag against it (review R3)."""

from __future__ import annotations

from dataclasses import replace

from agent.actions import AcquireLeader, Promote, SetLeaderPosition
from agent.decide import Memory, Outcome, Result, decide, record_outcome
from agent.decide.position import POSITION_EVERY_CYCLES, plan_position
from agent.model import HistoryEntry, LeaderPosition, MemberName
from tests.unit.test_decide import (
    LEASED,
    ME_PRIMARY,
    NOW,
    PRIMARY,
    REPLICA,
    A,
    B,
    C,
    kinds,
    member,
    obs,
    view,
)

LIMIT = A.ha.maximum_lag_on_failover_bytes
WAIT = A.timing.loop_wait_s


def at(lsn: int, *, leader: str = "a", timeline: int = 1) -> LeaderPosition:
    return LeaderPosition(leader=MemberName(leader), timeline=timeline, wal_lsn=lsn, version="5")


# --------------------------------------------------------------------------- candidates


def test_a_member_that_remembers_nothing_stays_out_when_the_dcs_position_is_far_ahead() -> None:
    # An agent restarted after the leader died: no Memory of the leader, no leader record,
    # no member record of it; only the `position` record says how far it was.
    far = view(None, member("a"), position=at(1000 + LIMIT + 1, leader="z"))
    decision, _ = decide(obs(far, REPLICA), Memory(), A)
    assert decision.actions == ()
    assert "maximum_lag_on_failover_bytes" in decision.reason
    near = view(None, member("a"), position=at(1000 + LIMIT, leader="z"))
    decision, _ = decide(obs(near, REPLICA), Memory(), A)
    assert kinds(decision) == [AcquireLeader, Promote]


def test_the_larger_of_memory_and_the_dcs_position_counts() -> None:
    cluster = view(None, member("a"), position=at(1000, leader="z"))
    decision, _ = decide(obs(cluster, REPLICA), Memory(last_leader_wal_lsn=1000 + LIMIT + 1), A)
    assert decision.actions == ()
    cluster = view(None, member("a"), position=at(1000 + LIMIT + 1, leader="z"))
    decision, _ = decide(obs(cluster, REPLICA), Memory(last_leader_wal_lsn=1000), A)
    assert decision.actions == ()


def test_a_position_of_a_timeline_the_history_says_ended_is_not_a_limit() -> None:
    # Written by a leader that was failed over from: its WAL is not the cluster's any more.
    ended = (
        HistoryEntry(
            timeline=1, switch_lsn=900, reason="failover", at=1.0, new_leader=MemberName("z")
        ),
    )
    cluster = view(None, member("a"), position=at(1000 + 10 * LIMIT, leader="y"), history=ended)
    local = replace(REPLICA, timeline=2)
    decision, _ = decide(obs(cluster, local), Memory(), A)
    assert kinds(decision) == [AcquireLeader, Promote]


# --------------------------------------------------------------------------- the leader


def plan(
    written: LeaderPosition | None, lsn: int, memory: Memory = LEASED
) -> SetLeaderPosition | None:
    cluster = view("a", ME_PRIMARY, B, C, position=written)
    return plan_position(cluster, replace(PRIMARY, wal_lsn=lsn), memory, NOW, A)


def test_the_leader_writes_its_position_when_the_record_is_absent_stale_or_too_high() -> None:
    assert plan(None, 1000) == SetLeaderPosition(
        position=LeaderPosition(leader=MemberName("a"), timeline=1, wal_lsn=1000),
        expected_version=None,
    )
    for stale in (at(1000, leader="b"), at(1000, timeline=0), at(2000)):
        step = plan(stale, 1000)
        assert step is not None
        assert (step.position.wal_lsn, step.expected_version) == (1000, "5")


def test_an_idle_leader_writes_nothing() -> None:
    assert plan(at(1000), 1000, replace(LEASED, position_written_at=None)) is None


def test_a_small_move_is_written_only_every_few_cycles() -> None:
    recently = replace(LEASED, position_written_at=NOW - WAIT)
    assert plan(at(1000), 1100, recently) is None
    long_ago = replace(LEASED, position_written_at=NOW - POSITION_EVERY_CYCLES * WAIT)
    assert plan(at(1000), 1100, long_ago) is not None
    assert plan(at(1000), 1100, replace(LEASED, position_written_at=None)) is not None


def test_a_move_past_the_lag_limit_is_written_at_most_once_a_cycle() -> None:
    just_now = replace(LEASED, position_written_at=NOW - WAIT / 2)
    assert plan(at(1000), 1000 + LIMIT, just_now) is None
    a_cycle_ago = replace(LEASED, position_written_at=NOW - WAIT)
    assert plan(at(1000), 1000 + LIMIT, a_cycle_ago) is not None


def test_the_leader_decision_carries_the_write_last_and_memory_notes_it() -> None:
    cluster = view("a", ME_PRIMARY, B, C, position=None)
    decision, memory = decide(obs(cluster, PRIMARY), LEASED, A)
    assert isinstance(decision.actions[-1], SetLeaderPosition)
    written = Outcome(action=decision.actions[-1], result=Result.OK, sent_at=NOW)
    assert record_outcome(memory, written, A).position_written_at == NOW
    lost = replace(written, result=Result.LOST)
    assert record_outcome(memory, lost, A).position_written_at is None


def test_a_replica_never_writes_the_position() -> None:
    cluster = view("b", member("b"), position=None)
    assert plan_position(cluster, REPLICA, Memory(), NOW, A) is None
