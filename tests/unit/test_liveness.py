"""decide(): a leader whose PostgreSQL answers but cannot commit (issue 16, the zombie
primary): it keeps the lease through a short stall, and past `postgres_unresponsive_s`
kills the server and hands the lease on instead of renewing it."""

from __future__ import annotations

from dataclasses import replace

from agent.actions import ReleaseLeader, RenewLeader, StopMode, StopPostgres
from agent.decide import Outcome, Result, decide, record_outcome
from tests.unit.test_decide import (
    LEASED,
    ME_PRIMARY,
    NOW,
    PRIMARY,
    TIMING,
    A,
    B,
    obs,
    view,
)

STALLED = replace(PRIMARY, commit_stalled=True)


def test_a_short_commit_stall_keeps_the_lease() -> None:
    decision, memory = decide(obs(view("a", ME_PRIMARY, B), STALLED), LEASED, A)
    assert decision.actions == (RenewLeader(),)
    assert memory.commit_stalled_since == NOW


def test_a_primary_that_cannot_commit_past_the_bound_is_killed_and_hands_the_lease_on() -> None:
    memory = replace(LEASED, commit_stalled_since=NOW - TIMING.postgres_unresponsive_s)
    decision, memory = decide(obs(view("a", ME_PRIMARY, B), STALLED), memory, A)
    # Before the equality: after it mypy narrows the tuple and calls this check unreachable.
    assert RenewLeader() not in decision.actions
    assert decision.actions == (StopPostgres(mode=StopMode.KILL), ReleaseLeader())
    memory = record_outcome(
        memory, Outcome(action=ReleaseLeader(), result=Result.OK, sent_at=NOW), A
    )
    assert memory.commit_stalled_since is None and memory.lease_sent_at is None


def test_a_commit_that_succeeds_again_clears_the_stall() -> None:
    memory = replace(LEASED, commit_stalled_since=NOW - 1)
    decision, memory = decide(obs(view("a", ME_PRIMARY, B), PRIMARY), memory, A)
    assert decision.actions == (RenewLeader(),)
    assert memory.commit_stalled_since is None
