"""The wait of what must not wait for the whole throttling pause (a read that starts a race
for a free lock: throttle.py `retry_after_over`), pure, on a fake clock: the last 429's
Retry-After, jittered, doubled for each further 429 up to 8 times, never past the pause,
and shorter again by a doubling for each deferred request that goes through."""

from __future__ import annotations

import random

import pytest

from agent.clock import FakeClock
from agent.dcs.kubernetes.throttle import PAUSE_JITTER, RESEND_JITTER, ThrottleState


def state(
    clock: FakeClock, *, max_pause_s: float = 60.0, min_pause_s: float = 12.0
) -> ThrottleState:
    return ThrottleState(
        clock=clock.monotonic,
        max_pause_s=max_pause_s,
        min_pause_s=min_pause_s,
        rng=random.Random(7),
    )


def wait_s(throttle: ThrottleState, clock: FakeClock, step_s: float = 0.01) -> float:
    """How long `retry_after_over` stays false from now (the clock ends there)."""
    waited = 0.0
    while not throttle.retry_after_over():
        clock.advance(step_s)
        waited += step_s
        assert waited < 1000, "never over"
    return waited


@pytest.mark.parametrize("retry_after_s", [1.0, 0.5])
def test_each_429_doubles_the_wait_up_to_eight_times_the_retry_after(retry_after_s: float) -> None:
    clock = FakeClock()
    throttle = state(clock)
    assert throttle.retry_after_over()  # nothing refused yet
    for factor in (1, 2, 4, 8, 8, 8):
        throttle.refused(retry_after_s)
        assert throttle.throttling()
        waited = wait_s(throttle, clock)
        base_s = factor * retry_after_s
        assert base_s - 0.01 <= waited <= base_s * (1 + RESEND_JITTER) + 0.02, (factor, waited)


def test_the_wait_never_outlasts_the_pause() -> None:
    """A pause capped short (`max_pause_s`) caps the wait too: once the pause is over,
    everything may be sent, and a wait longer than it would hold back only the race."""
    clock = FakeClock()
    throttle = state(clock, max_pause_s=3.0, min_pause_s=0.0)
    for _ in range(3):
        throttle.refused(1.0)
        clock.advance(10.0)
    throttle.refused(1.0)  # 8 times 1 s, but the pause is at most 3 s and its jitter
    pause_s = throttle.pause_left_s()
    assert pause_s <= 3.0 * (1 + PAUSE_JITTER)
    assert wait_s(throttle, clock) <= pause_s + 0.01


def test_each_deferred_request_answered_takes_one_doubling_back() -> None:
    """A read that goes through is three answered requests (a pod list, the Lease, the
    ConfigMap): after three 429s it brings the next wait back to the Retry-After alone; after
    five, to twice it."""
    for refusals, answers, factor in ((3, 3, 1), (5, 3, 4), (5, 1, 8), (1, 1, 1)):
        clock = FakeClock()
        throttle = state(clock)
        for _ in range(refusals):
            throttle.refused(1.0)
            clock.advance(20.0)
        for _ in range(answers):
            throttle.answered()
        throttle.refused(1.0)
        waited = wait_s(throttle, clock)
        assert factor - 0.01 <= waited <= factor * (1 + RESEND_JITTER) + 0.02, (
            refusals,
            answers,
            waited,
        )
