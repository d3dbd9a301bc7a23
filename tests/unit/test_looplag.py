"""The event-loop lag watcher (agent/looplag.py) on a fake clock and a fake sleep: each sleep
advances the clock by the interval plus the overshoot the test chooses, and the histogram in
/metrics counts exactly those overshoots."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from agent.clock import FakeClock
from agent.looplag import INTERVAL_S, overshoot, watch_event_loop_lag
from agent.metrics import Metrics
from agent.settings import Timing
from tests.unit.test_metrics import scrape, value


class _Stop(Exception):
    """Ends the watcher after the planned sleeps."""


def _late_sleeper(clock: FakeClock, lateness: list[float]) -> Callable[[float], Awaitable[None]]:
    """A sleep that takes `interval` plus the next lateness on `clock`, then stops."""
    pending = list(lateness)

    async def sleep(interval_s: float) -> None:
        if not pending:
            raise _Stop
        clock.advance(interval_s + pending.pop(0))

    return sleep


async def test_each_overshoot_of_the_periodic_sleep_is_one_sample_of_the_lag_histogram() -> None:
    clock, metrics = FakeClock(), Metrics()
    sleep = _late_sleeper(clock, [0.0002, 0.003, 0.004, 0.7])
    with pytest.raises(_Stop):
        await watch_event_loop_lag(clock, metrics, interval_s=1.0, sleep=sleep)
    s = scrape(metrics)
    assert value(s, "pgwarden_event_loop_lag_seconds_count") == 4
    assert value(s, "pgwarden_event_loop_lag_seconds_sum") == pytest.approx(0.7072)
    assert value(s, "pgwarden_event_loop_lag_seconds_bucket", le="0.0005") == 1
    assert value(s, "pgwarden_event_loop_lag_seconds_bucket", le="0.005") == 3
    assert value(s, "pgwarden_event_loop_lag_seconds_bucket", le="0.5") == 3
    assert value(s, "pgwarden_event_loop_lag_seconds_bucket", le="1.0") == 4


def test_the_overshoot_is_the_time_beyond_the_interval_and_never_negative() -> None:
    assert overshoot(10.0, 11.25, 1.0) == pytest.approx(0.25)
    assert overshoot(10.0, 11.0, 1.0) == 0.0
    assert overshoot(10.0, 10.5, 1.0) == 0.0


async def test_the_watcher_runs_until_cancelled_on_the_real_loop() -> None:
    clock, metrics = FakeClock(), Metrics()
    task = asyncio.create_task(watch_event_loop_lag(clock, metrics, interval_s=0.0))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert value(scrape(metrics), "pgwarden_event_loop_lag_seconds_count") >= 1


def test_the_sampler_wakes_no_more_often_than_the_ha_loop_at_the_default_timings() -> None:
    """An idle agent's wake-ups are most of its CPU (issue 15): the lag needs no finer grain
    than the loop whose deadlines it is about."""
    assert Timing().loop_wait_s <= INTERVAL_S
