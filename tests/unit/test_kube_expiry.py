"""Expiry judged on the observer's own clock (the Kubernetes backend), on a fake clock."""

from __future__ import annotations

import pytest

from agent.clock import FakeClock
from agent.dcs.heartbeat import heartbeat_interval
from agent.dcs.kubernetes.expiry import ObservedExpiry

TTL_S = 10.0


def test_a_record_unchanged_for_the_ttl_expires_and_a_new_token_restarts_its_clock() -> None:
    clock, expiry = FakeClock(), ObservedExpiry(TTL_S)
    assert expiry.note("leader", "5", 5, clock.monotonic())
    clock.advance(TTL_S - 0.1)
    assert expiry.note("leader", "5", 5, clock.monotonic())  # the same token: no restart
    assert not expiry.is_expired("leader", 5, clock.monotonic())
    clock.advance(0.1)
    assert not expiry.note("leader", "5", 5, clock.monotonic())
    assert expiry.is_expired("leader", 5, clock.monotonic())
    assert expiry.note("leader", "9", 9, clock.monotonic())  # renewed: a full ttl again
    assert not expiry.is_expired("leader", 9, clock.monotonic())


def test_an_expired_record_is_only_expired_at_the_version_that_was_timed() -> None:
    clock, expiry = FakeClock(), ObservedExpiry(TTL_S)
    expiry.note("leader", "5", 5, clock.monotonic())
    clock.advance(TTL_S)
    assert expiry.is_expired("leader", 5, clock.monotonic())
    assert not expiry.is_expired("leader", 6, clock.monotonic())  # changed since: not stale
    assert not expiry.is_expired("members/a", 5, clock.monotonic())  # never seen


def test_an_older_observation_read_late_does_not_restart_the_clock() -> None:
    clock, expiry = FakeClock(), ObservedExpiry(TTL_S)
    expiry.note("members/a", "rec+hb2", 20, clock.monotonic())
    clock.advance(TTL_S)
    assert not expiry.note("members/a", "rec+hb1", 12, clock.monotonic())


def test_a_new_observer_gives_an_old_record_a_full_ttl_of_its_own() -> None:
    clock = FakeClock()
    clock.advance(1000.0)
    late = ObservedExpiry(TTL_S)
    assert late.note("leader", "5", 5, clock.monotonic())
    assert late.next_due() == clock.monotonic() + TTL_S


def test_each_expiry_is_reported_once_and_the_next_deadline_is_the_earliest_untold() -> None:
    clock, expiry = FakeClock(), ObservedExpiry(TTL_S)
    start = clock.monotonic()
    assert expiry.next_due() is None
    expiry.note("leader", "5", 5, start)
    clock.advance(3.0)
    expiry.note("members/a", "x", 7, clock.monotonic())
    assert expiry.next_due() == start + TTL_S
    assert not expiry.take_due(clock.monotonic())
    clock.advance(TTL_S - 3.0)
    assert expiry.take_due(clock.monotonic())
    assert not expiry.take_due(clock.monotonic())
    assert expiry.next_due() == start + 3.0 + TTL_S
    clock.advance(3.0)
    assert expiry.take_due(clock.monotonic())
    assert expiry.next_due() is None


def test_forgotten_records_neither_expire_nor_wake() -> None:
    clock, expiry = FakeClock(), ObservedExpiry(TTL_S)
    for name, pod in (("a", "pod-a"), ("b", "pod-b"), ("c", "pod-c")):
        expiry.note(f"members/{name}", "x", 1, clock.monotonic(), source=pod)
    expiry.note("leader", "1", 1, clock.monotonic())
    expiry.forget_source("pod-a", prefix="members/")
    expiry.forget_all_but({"members/b"}, prefix="members/")
    expiry.forget("leader")
    clock.advance(TTL_S)
    now = clock.monotonic()
    gone = ["members/a", "members/c", "leader"]
    assert [key for key in gone if expiry.is_expired(key, 1, now)] == []
    assert expiry.is_expired("members/b", 1, now)
    assert expiry.take_due(now)  # members/b
    assert expiry.next_due() is None


def test_a_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        ObservedExpiry(0.0)


@pytest.mark.parametrize(
    ("ttl_s", "loop_wait_s", "timeout_s", "expected"),
    [
        (10.0, 2.0, 2.7, 4.3),  # the defaults (retry_timeout_s 3 at 0.9): a write every 6 s
        (30.0, 10.0, 9.0, 10.0),  # Patroni's defaults
        (30.0, 2.0, 2.7, 15.0),  # at most half the ttl
        (2.5, 0.5, 2.0, 0.0),  # no room: every publish writes
    ],
)
def test_the_heartbeat_leaves_a_cycle_a_request_and_a_slack_inside_the_ttl(
    ttl_s: float, loop_wait_s: float, timeout_s: float, expected: float
) -> None:
    interval = heartbeat_interval(ttl_s, loop_wait_s, timeout_s)
    assert interval == pytest.approx(expected)
    # The next write: at the first cycle past the interval, and as slow as a request may be.
    assert interval + loop_wait_s + timeout_s < ttl_s or interval == 0.0
