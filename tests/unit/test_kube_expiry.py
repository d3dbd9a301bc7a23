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
    expiry.forget_source("pod-a", prefix="members/", rv=2)
    expiry.forget_all_but({"members/b"}, prefix="members/", rv=2)
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


def test_each_renewal_of_the_lock_restarts_the_clock_of_the_member_record_it_names() -> None:
    """The leader's member record lives as long as the lock that names it: a dead leader's
    record goes one ttl after its last renewal was seen, not later."""
    clock, expiry = FakeClock(), ObservedExpiry(TTL_S)
    assert expiry.note("members/a", "rec+hb1", 3, clock.monotonic())
    for rv in range(10, 40, 10):  # renewals every half ttl, the record never written again
        clock.advance(TTL_S / 2)
        assert expiry.note("leader@l", str(rv), rv, clock.monotonic(), vouches="members/a")
        assert expiry.note("members/a", "rec+hb1", 3, clock.monotonic())
    last_renewal = clock.monotonic()
    assert expiry.next_due() == last_renewal + TTL_S
    clock.advance(TTL_S / 2)
    # The same renewal seen again, or the lock naming someone else: no restart for `a`.
    expiry.note("leader@l", "30", 30, clock.monotonic(), vouches="members/a")
    expiry.note("leader@l", "41", 41, clock.monotonic(), vouches="members/b")
    clock.advance(TTL_S / 2 - 0.01)
    assert expiry.note("members/a", "rec+hb1", 3, clock.monotonic())
    clock.advance(0.01)
    assert not expiry.note("members/a", "rec+hb1", 3, clock.monotonic())


def test_a_renewal_seen_after_the_record_expired_brings_it_back_and_its_expiry_is_told() -> None:
    clock, expiry = FakeClock(), ObservedExpiry(TTL_S)
    expiry.note("members/a", "rec", 3, clock.monotonic())
    clock.advance(TTL_S)
    assert expiry.take_due(clock.monotonic())
    expiry.note("leader@l", "10", 10, clock.monotonic(), vouches="members/a")
    assert expiry.note("members/a", "rec", 3, clock.monotonic())
    clock.advance(TTL_S)
    assert expiry.take_due(clock.monotonic())


def test_a_record_seen_gone_is_not_brought_back_by_an_older_observation() -> None:
    """A lock read released at rv 12 (forgotten at it) and then shown held at rv 10 by a
    watch cache that lags, or whose stream died silently: stale, not a holder first seen now
    (review hreview3: a dead leader looked live for another ttl). A newer write counts."""
    clock, expiry = FakeClock(), ObservedExpiry(TTL_S)
    assert expiry.note("leader@l", "10", 10, clock.monotonic())
    expiry.forget("leader@l", rv=12)
    clock.advance(1)
    assert not expiry.note("leader@l", "10", 10, clock.monotonic())
    assert expiry.next_due() is None  # nothing timed for it
    assert not expiry.note("leader@l", "12", 12, clock.monotonic())
    assert expiry.note("leader@l", "15", 15, clock.monotonic())  # taken again since
    clock.advance(TTL_S - 0.1)
    assert expiry.note("leader@l", "15", 15, clock.monotonic())


def test_a_stale_lock_does_not_vouch_for_its_holders_member_record() -> None:
    clock, expiry = FakeClock(), ObservedExpiry(TTL_S)
    assert expiry.note("members/x", "rec", 3, clock.monotonic())
    assert expiry.note("leader@l", "10", 10, clock.monotonic(), vouches="members/x")
    expiry.forget("leader@l", rv=12)  # released: x handed over and exited
    clock.advance(TTL_S - 1)
    assert not expiry.note("leader@l", "10", 10, clock.monotonic(), vouches="members/x")
    clock.advance(1)
    assert not expiry.note("members/x", "rec", 3, clock.monotonic()), "x's record lives on"


def test_an_absence_older_than_what_was_seen_forgets_nothing() -> None:
    """A lock seen held at rv 15 from the server, then shown released at rv 12 by a cache
    that lags: the holder is not forgotten (it would be first seen anew at the next read,
    a fresh ttl each cycle); its clock runs on from its first sight."""
    clock, expiry = FakeClock(), ObservedExpiry(TTL_S)
    start = clock.monotonic()
    assert expiry.note("leader@l", "15", 15, start)
    clock.advance(TTL_S - 1)
    expiry.forget("leader@l", rv=12)
    expiry.forget_all_but(set(), prefix="leader@", rv=14)
    assert expiry.age_s("leader@l", clock.monotonic()) == TTL_S - 1
    clock.advance(1)
    assert not expiry.note("leader@l", "15", 15, clock.monotonic())
    assert expiry.is_expired("leader@l", 15, start + TTL_S)


def test_a_write_dated_from_the_writers_gap_keeps_a_later_clock_a_renewal_restarted() -> None:
    """The leader's record: its clock restarted by a renewal seen at +4 s; its next write (1 s
    after the one before, on its clock) seen late at +5 s starts no earlier than +4 s."""
    clock, expiry = FakeClock(), ObservedExpiry(TTL_S)
    start = clock.monotonic()
    assert expiry.note("members/x", "r0", 3, start, written=("i", 10.0))
    clock.advance(4.0)
    assert expiry.note("leader@l", "7", 7, clock.monotonic(), vouches="members/x")
    clock.advance(1.0)
    assert expiry.note("members/x", "r1", 8, clock.monotonic(), written=("i", 11.0))
    assert expiry.age_s("members/x", clock.monotonic()) == 1.0
    # Without a renewal: dated from our sight of r1 plus the writer's 0.5 s.
    clock.advance(3.0)
    assert expiry.note("members/x", "r2", 9, clock.monotonic(), written=("i", 11.5))
    assert expiry.age_s("members/x", clock.monotonic()) == 2.5
