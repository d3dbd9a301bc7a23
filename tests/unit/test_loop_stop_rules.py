"""stop_rules.next_step: the executor's stop rules as a table (the Executor runs by this
function; the decide property tests replay it through tests/unit/fakes/replay.py)."""

from __future__ import annotations

from agent.actions import (
    AcquireLeader,
    Action,
    Clone,
    ConfirmFailsafe,
    EnsureSlots,
    Promote,
    PromoteReason,
    RenewLeader,
    SetInitialize,
)
from agent.decide import Outcome, Result
from agent.model import MemberName
from agent.stop_rules import Done, StartLong, next_step

RACE: tuple[Action, ...] = (AcquireLeader(), Promote(reason=PromoteReason.FAILOVER))
FAILSAFE: tuple[Action, ...] = (ConfirmFailsafe(members=()), RenewLeader())


def ran(action: Action, result: Result) -> Outcome:
    return Outcome(action=action, result=result, sent_at=0.0)


def test_the_actions_run_in_order() -> None:
    assert next_step(RACE, []) == AcquireLeader()
    assert next_step(RACE, [ran(RACE[0], Result.OK)]) == RACE[1]


def test_an_acquire_that_lost_the_race_is_not_followed_by_the_promotion() -> None:
    for result in (Result.LOST, Result.UNREACHABLE):
        assert next_step(RACE, [ran(RACE[0], result)]) == Done(again=False)


def test_after_a_failed_renewal_the_loop_cycles_again_at_once() -> None:
    keep = (RenewLeader(), EnsureSlots(names=()))
    for result in (Result.LOST, Result.UNREACHABLE):
        assert next_step(keep, [ran(keep[0], result)]) == Done(again=True)


def test_a_failsafe_round_never_ends_the_decision() -> None:
    for result in Result:
        assert next_step(FAILSAFE, [ran(FAILSAFE[0], result)]) == RenewLeader()


def test_a_long_action_starts_as_a_task_and_ends_the_decision() -> None:
    clone = Clone(source=MemberName("b"))
    assert next_step((clone,), []) == StartLong(action=clone)


def test_a_decision_that_only_kept_things_as_they_were_sleeps_and_one_that_changed_cycles() -> None:
    steady = (RenewLeader(), SetInitialize(system_id="1", expected_version=None))
    assert next_step(steady, [ran(a, Result.OK) for a in steady]) == Done(again=False)
    assert next_step(RACE, [ran(a, Result.OK) for a in RACE]) == Done(again=True)
