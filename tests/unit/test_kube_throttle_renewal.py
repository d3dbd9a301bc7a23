"""When a refused renewal of a lock we hold is sent again (throttle.py `RenewalSends`),
pure, on a fake clock: by its Retry-After while that ends before the last stretch before
the renewal's last moment (`send_by`: its fencing deadline less the time an answer needs);
in that stretch every 0.1-0.15 s, at most `URGENT_SENDS` times per renewal; never after
`send_by`."""

from __future__ import annotations

import random

import pytest

from agent.clock import FakeClock
from agent.dcs.kubernetes.throttle import (
    PAUSE_JITTER,
    RESEND_JITTER,
    URGENT_SENDS,
    URGENT_SPACING_S,
    URGENT_WINDOW_S,
    ThrottleState,
)

SEND_BY = 100.0  # the renewal's last moment, on the fake clock


def state(clock: FakeClock, seed: int = 3) -> ThrottleState:
    return ThrottleState(clock=clock.monotonic, max_pause_s=30.0, rng=random.Random(seed))


def test_a_retry_after_that_ends_before_the_last_stretch_is_waited_out_as_is() -> None:
    clock = FakeClock(start=SEND_BY - URGENT_WINDOW_S - 3.0)
    throttle = state(clock)
    delay_s = throttle.renewals.delay_s(1.0, SEND_BY)
    assert delay_s is not None and 1.0 <= delay_s <= 1.0 + RESEND_JITTER
    assert throttle.renewals.urgent == 0


def test_a_retry_after_that_would_end_in_the_last_stretch_is_cut_to_its_start() -> None:
    clock = FakeClock(start=SEND_BY - URGENT_WINDOW_S - 0.9)
    throttle = state(clock)
    assert throttle.renewals.delay_s(1.0, SEND_BY) == pytest.approx(0.9)
    assert throttle.renewals.urgent == 1


@pytest.mark.parametrize("seed", range(5))
def test_in_the_last_stretch_it_is_sent_every_fifth_of_a_second_until_its_last_moment(
    seed: int,
) -> None:
    """From the start of the stretch to `send_by`: a send every 0.1-0.15 s, at least 10 in
    the 1.5 s (a Retry-After of 1 s would allow one more at most; every 0.2-0.3 s, 6-7 sends,
    still lost a leader now and then at 100 clusters: docs/kubernetes.md), none after
    `send_by`, then None (the fencer acts)."""
    clock = FakeClock(start=SEND_BY - URGENT_WINDOW_S)
    throttle = state(clock, seed)
    sends = [clock.monotonic()]
    while (delay_s := throttle.renewals.delay_s(1.0, SEND_BY)) is not None:
        assert URGENT_SPACING_S <= delay_s <= URGENT_SPACING_S * (1 + PAUSE_JITTER)
        clock.advance(delay_s)
        sends.append(clock.monotonic())
    assert sends[-1] <= SEND_BY
    assert len(sends) >= 1 + 10
    assert throttle.renewals.urgent == len(sends) - 1


def test_each_renewal_has_at_most_its_early_sends_and_the_next_one_has_them_again() -> None:
    clock = FakeClock(start=SEND_BY - URGENT_WINDOW_S)
    throttle = state(clock)
    delays = [throttle.renewals.delay_s(1.0, SEND_BY) for _ in range(URGENT_SENDS + 1)]
    assert all(d is not None and d < 1.0 for d in delays[:URGENT_SENDS])
    assert delays[-1] is not None and delays[-1] >= 1.0, "past the cap: the Retry-After"
    assert throttle.renewals.urgent == URGENT_SENDS
    throttle.renewals.answered()
    delay_s = throttle.renewals.delay_s(1.0, SEND_BY)
    assert delay_s is not None and delay_s < 1.0


def test_past_the_cap_a_retry_after_that_ends_after_the_last_moment_gives_up() -> None:
    clock = FakeClock(start=SEND_BY - 0.5)
    throttle = state(clock)
    for _ in range(URGENT_SENDS):
        assert throttle.renewals.delay_s(1.0, SEND_BY) is not None
    assert throttle.renewals.delay_s(1.0, SEND_BY) is None


def test_after_the_last_moment_nothing_is_sent() -> None:
    clock = FakeClock(start=SEND_BY - 0.1)
    assert state(clock).renewals.delay_s(1.0, SEND_BY) is None
    clock.advance(1.0)
    assert state(clock).renewals.delay_s(0.0, SEND_BY) is None


def test_a_call_sooner_than_planned_waits_and_none_is_sent_once_it_gave_up() -> None:
    """The HA loop wakes before the fencing deadline and may call sooner than the planned
    send: it waits the rest; once the renewal gave up, nothing is sent for it (the loop's
    calls in the last half second would otherwise each send one); a renewal of the next
    lease period (another `send_by`) starts afresh."""
    clock = FakeClock(start=SEND_BY - URGENT_WINDOW_S)
    sends = state(clock).renewals
    assert sends.wait_s(SEND_BY) == 0.0
    delay_s = sends.delay_s(1.0, SEND_BY)
    assert delay_s is not None
    clock.advance(0.05)
    assert sends.wait_s(SEND_BY) == pytest.approx(delay_s - 0.05)
    clock.advance(URGENT_WINDOW_S - 0.1)
    assert sends.delay_s(1.0, SEND_BY) is None
    assert sends.wait_s(SEND_BY) is None
    assert sends.wait_s(SEND_BY + 2.0) == 0.0
