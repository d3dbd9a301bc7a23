"""The leader's turn in a rolling restart (agent/decide/restarts.py), pure: a leader that
finds itself `current` restarts in place only if it was not restarted since (review R2)."""

from __future__ import annotations

from dataclasses import replace

from agent.actions import Decision, HandOver, RestartPrimary, SetRestartSchedule
from agent.decide import Memory, decide
from agent.model import MemberName, RestartSchedule
from tests.unit.test_decide import (
    LEASED,
    ME_PRIMARY,
    STREAMED_PRIMARY,
    A,
    B,
    C,
    kinds,
    obs,
    view,
)

NAMES = (MemberName("a"), MemberName("b"), MemberName("c"))


def schedule(**kw: object) -> RestartSchedule:
    return replace(
        RestartSchedule(members=NAMES, scheduled_at=1.0, done=NAMES[1:], version="r1"),
        **kw,  # type: ignore[arg-type]
    )


def leader_decides(
    record: RestartSchedule, timeline: int, memory: Memory = LEASED
) -> tuple[Decision, Memory]:
    cluster = replace(view("a", ME_PRIMARY, B, C), restart=record)
    local = replace(STREAMED_PRIMARY, timeline=timeline)
    return decide(obs(cluster, local), memory, A)


def test_the_leader_marks_its_timeline_when_it_hands_over_for_its_turn() -> None:
    decision, _ = leader_decides(schedule(), timeline=3)
    assert HandOver in kinds(decision)
    marks = [a for a in decision.actions if isinstance(a, SetRestartSchedule)]
    assert marks and marks[0].schedule is not None
    assert (marks[0].schedule.current, marks[0].schedule.current_timeline) == ("a", 3)


def test_a_leader_whose_hand_over_failed_restarts_in_place() -> None:
    decision, _ = leader_decides(schedule(current=MemberName("a"), current_timeline=3), 3)
    assert RestartPrimary in kinds(decision)


def test_a_former_leader_promoted_again_after_its_hand_over_is_not_restarted_again() -> None:
    # a handed over to b (and was restarted as b's standby), b died before a streamed from it
    # and cleared `current`, a won the race: it runs on a later timeline, freshly restarted.
    decision, _ = leader_decides(schedule(current=MemberName("a"), current_timeline=3), 4)
    assert RestartPrimary not in kinds(decision)
    assert SetRestartSchedule(schedule=None, expected_version="r1") in decision.actions
