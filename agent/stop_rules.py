"""The executor's stop rules, pure (agent/executor.py runs by `next_step`; the decide
property tests replay it through tests/unit/fakes/replay.py, so a change here changes what
they feed back into Memory):
- the actions run in order, and the first one that does not succeed ends the decision
  (an acquire that lost the race is not followed by the promotion planned after it);
- after a failed renewal (lost, or unreachable: then the lease stands until its fencing
  deadline, `record_outcome`) the loop cycles again at once;
- a failsafe round never ends the decision (the renewal after it may still succeed);
- a long action (`is_long`) starts as a tracked task and ends the decision; its Outcome is
  folded into Memory at the start of the next cycle;
- a decision that ran to its end cycles again at once if it changed something (an action
  other than those that keep things as they are succeeded), else the loop sleeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.actions import (
    Action,
    ClearSwitchover,
    ConfirmFailsafe,
    DropStaleSlots,
    EnsureSlots,
    RenewLeader,
    RestartWalReceiver,
    SetInitialize,
    SetLeaderPosition,
    is_long,
)
from agent.decide import Outcome

# Actions that only keep things as they are: a cycle made of these sleeps normally.
# (DropStaleSlots too: it is retried at the next normal cycle, never in a tight loop; and
# RestartWalReceiver: the new receiver takes at least wal_retrieve_retry_interval to start.)
_STEADY = (
    RenewLeader,
    EnsureSlots,
    DropStaleSlots,
    RestartWalReceiver,
    ClearSwitchover,
    SetInitialize,
    ConfirmFailsafe,
    SetLeaderPosition,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Done:
    """The decision ends here; `again`: cycle again at once, without sleeping."""

    again: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class StartLong:
    """Start `action` as a tracked task; the decision ends here (not again at once)."""

    action: Action


def next_step(actions: Sequence[Action], done: Sequence[Outcome]) -> Action | StartLong | Done:
    """The stop rules (module docstring), pure: what follows the outcomes `done` of the first
    `len(done)` of `actions`."""
    if done:
        last = done[-1]
        if not last.ok and not isinstance(last.action, ConfirmFailsafe):
            # The first failure ends the decision; after a failed renewal the loop cycles
            # again at once, to retry it (unreachable) or to act on the loss (lost).
            return Done(again=isinstance(last.action, RenewLeader))
    if len(done) == len(actions):
        return Done(again=any(o.ok and not isinstance(o.action, _STEADY) for o in done))
    action = actions[len(done)]
    return StartLong(action=action) if is_long(action) else action
