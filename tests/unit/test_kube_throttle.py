"""The throttling pause of the Kubernetes backend (agent/dcs/kubernetes/throttle.py), pure:
how long what can wait waits after a 429, and how a Retry-After is waited out in a call."""

from __future__ import annotations

import random

import pytest

from agent.clock import FakeClock
from agent.dcs.kubernetes.cache import ObjectCache
from agent.dcs.kubernetes.throttle import PAUSE_JITTER, RESEND_JITTER, ThrottleState


def state(clock: FakeClock, *, seed: int = 1, min_pause_s: float = 0.0) -> ThrottleState:
    return ThrottleState(
        clock=clock.monotonic, max_pause_s=30.0, min_pause_s=min_pause_s, rng=random.Random(seed)
    )


def test_no_pause_runs_before_a_429_and_one_runs_after_it_for_its_jittered_length() -> None:
    clock = FakeClock()
    throttle = state(clock)
    assert not throttle.throttling() and not throttle.recent()
    pause_s = throttle.refused(1.0)
    assert 1.0 <= pause_s <= 1.0 + PAUSE_JITTER
    assert throttle.throttling() and throttle.pause_left_s() == pytest.approx(pause_s)
    clock.advance(pause_s)
    assert not throttle.throttling() and throttle.recent()  # over, but a 429 came lately
    clock.advance(30.0)
    assert not throttle.recent()


def test_each_429_doubles_the_next_pause_up_to_the_cap_and_each_answer_takes_one_back() -> None:
    clock = FakeClock()
    throttle = state(clock)
    bases = []
    for _ in range(7):
        pause_s = throttle.refused(1.0)
        bases.append(pause_s)
        clock.advance(pause_s)
    assert [b >= 2**i for i, b in enumerate(bases[:5])] == [True] * 5
    assert max(bases) <= 30.0 * (1 + PAUSE_JITTER)  # capped
    assert bases[-1] >= 30.0
    for _ in range(8):
        throttle.answered()
    clock.advance(60.0)
    assert throttle.refused(1.0) <= 1.0 + PAUSE_JITTER  # back to the Retry-After alone


def test_a_pause_is_never_shorter_than_the_minimum_nor_the_retry_after() -> None:
    clock = FakeClock()
    assert state(clock, min_pause_s=6.0).refused(1.0) >= 6.0
    assert state(clock, min_pause_s=6.0).refused(None) >= 6.0  # no header: 1 s, then the floor
    assert state(clock).refused(4.0) >= 4.0


def test_a_fleet_refused_at_once_does_not_come_back_at_once() -> None:
    clock = FakeClock()
    pauses = {round(state(clock, seed=seed).refused(1.0), 3) for seed in range(50)}
    assert len(pauses) > 40
    assert max(pauses) - min(pauses) > PAUSE_JITTER / 2


def test_a_retry_after_is_waited_out_with_jitter_only_when_it_fits_in_the_call() -> None:
    throttle = state(FakeClock())
    delays = [throttle.resend_delay_s(1.0, room_s=1.35) for _ in range(50)]
    assert all(d is not None and 1.0 <= d <= min(1.0 + RESEND_JITTER, 1.28) for d in delays)
    assert len({round(d or 0, 3) for d in delays}) > 25  # spread, some at the room's edge
    assert throttle.resend_delay_s(1.0, room_s=1.0) is None  # fail now, not at the deadline
    assert throttle.resend_delay_s(1.0, room_s=0.4) is None


def test_a_throttled_watch_keeps_its_cache_usable_until_the_hold_ends() -> None:
    cache = ObjectCache(max_quiet_s=6.0)
    cache.set_live(True)
    cache.fill([{"metadata": {"name": "a", "resourceVersion": "5"}}], 10, now=0.0)
    cache.hold(until=4.0)  # its re-open got a 429: the server answered, nothing was missed
    assert cache.usable(3.9)
    assert not cache.usable(4.0)
    cache.hold(until=9.0)
    assert not cache.usable(7.0)  # the quiet limit still applies ...
    assert cache.usable(7.0, lenient=True)  # ... unless the server throttles (silence expected)
    cache.set_live(False)  # any other failure: no longer held
    assert not cache.usable(1.0)


def test_told_by_the_leader_is_recent_for_its_time_but_not_refused_lately() -> None:
    """A replica told by its leader's Lease (`told`) defers as if refused (`recent`), for as
    long as it is told; it starts no pause, and never says so on in a Lease of its own
    (`refused_lately`), so a marker cannot keep itself alive between two members."""
    clock = FakeClock()
    throttle = state(clock)
    throttle.told(6.0)
    assert throttle.recent() and not throttle.refused_lately() and not throttle.throttling()
    clock.advance(5.0)
    throttle.told(6.0)  # the next renewal says it again
    clock.advance(5.0)
    assert throttle.recent()
    clock.advance(1.5)
    assert not throttle.recent()
    throttle.refused(1.0)
    assert throttle.refused_lately() and throttle.recent()
