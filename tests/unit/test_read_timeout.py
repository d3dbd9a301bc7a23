"""`read_timeout_s`: a leader's cluster read never eats the time a retried renewal needs
before the fence deadline (chaos finding 22: under 40% packet loss on its etcd links a failed
renewal and then a failed read left the retry 0.45 s of the 1.35 s it needed, and the primary
was fenced while its next request would have gone through)."""

from __future__ import annotations

import pytest

from agent.actions import RenewLeader
from agent.decide import Memory, Outcome, Result, read_timeout_s, record_outcome
from agent.decide.state import MIN_READ_S
from tests.unit.test_decide import NOW, A

RETRY = A.timing.retry_timeout_s
DEADLINE_AFTER = A.timing.ttl_s - A.timing.fence_margin_s  # of a renewal's send time


def test_a_member_without_a_lease_reads_with_the_whole_retry_timeout() -> None:
    assert read_timeout_s(Memory(), NOW, A) == RETRY


def test_a_leader_one_loop_wait_after_its_renewal_reads_with_the_whole_retry_timeout() -> None:
    memory = Memory(lease_sent_at=NOW - A.timing.loop_wait_s)
    assert read_timeout_s(memory, NOW, A) == RETRY


@pytest.mark.parametrize("left_s", [RETRY + 0.3, RETRY + 0.01])
def test_a_leader_near_its_deadline_reads_only_as_long_as_leaves_a_retry_its_time(
    left_s: float,
) -> None:
    memory = Memory(lease_sent_at=NOW - (DEADLINE_AFTER - left_s), renewal_unanswered=True)
    budget = read_timeout_s(memory, NOW, A)
    assert budget == pytest.approx(max(left_s - RETRY, MIN_READ_S))
    assert budget < RETRY


def test_a_leader_past_the_point_of_a_retry_still_reads_briefly() -> None:
    memory = Memory(lease_sent_at=NOW - DEADLINE_AFTER + 0.2, renewal_unanswered=True)
    assert read_timeout_s(memory, NOW, A) == MIN_READ_S


def test_a_leader_whose_renewals_are_answered_slowly_reads_with_the_whole_retry_timeout() -> None:
    # Chaos finding 11's slow network: each renewal answered after seconds, none failed.
    memory = Memory(lease_sent_at=NOW - (DEADLINE_AFTER - RETRY - 0.3))
    assert read_timeout_s(memory, NOW, A) == RETRY


def test_an_unanswered_renewal_is_remembered_until_one_is_answered() -> None:
    leading = Memory(lease_sent_at=NOW - 3)
    unanswered = record_outcome(
        leading,
        Outcome(action=RenewLeader(), result=Result.UNREACHABLE, sent_at=NOW - 1),
        A,
    )
    assert unanswered.renewal_unanswered and unanswered.lease_sent_at == NOW - 3
    answered = record_outcome(
        unanswered, Outcome(action=RenewLeader(), result=Result.OK, sent_at=NOW), A
    )
    assert not answered.renewal_unanswered and answered.lease_sent_at == NOW
