"""The executor's stop rules replayed without I/O, for the property tests of decide().

`outcomes_of` runs a decision by `stop_rules.next_step`, the function the Executor itself
runs by, with every action faring as `fate` says: a change in the executor's rules changes
what these tests feed back into Memory.
"""

from __future__ import annotations

from agent.actions import AcquireLeader, Decision, Promote, RenewLeader, StartPostgres
from agent.decide import Outcome, Result
from agent.stop_rules import Done, StartLong, next_step


def outcomes_of(decision: Decision, fate: Result, sent_at: float) -> list[Outcome]:
    """The outcomes the Executor records for `decision`, in order, when each action it runs
    fares as `fate`. A long action's outcome is included: the executor folds it into Memory
    when it ends, before the next decision."""
    done: list[Outcome] = []
    while True:
        step = next_step(decision.actions, done)
        if isinstance(step, Done):
            return done
        action = step.action if isinstance(step, StartLong) else step
        done.append(Outcome(action=action, result=fate, sent_at=sent_at))
        if isinstance(step, StartLong):
            return done


def promotes_unleased(outcomes: list[Outcome]) -> Outcome | None:
    """The first promotion (or start as a primary) that ran without an acquire or renewal
    that succeeded before it in the same run, if any."""
    leased = False
    for outcome in outcomes:
        action = outcome.action
        if isinstance(action, AcquireLeader | RenewLeader) and outcome.ok:
            leased = True
        promoting = isinstance(action, Promote) or (
            isinstance(action, StartPostgres) and action.as_primary
        )
        if promoting and not leased:
            return outcome
    return None
