"""How late the agent's event loop runs what is due: the overshoot of a periodic sleep.

A task sleeps `interval_s` and measures on the injected clock how much longer than that it took
to run again: the time the loop spent on other callbacks, or blocked (a synchronous call, a
process starved of CPU), before it could serve one that was due. Every deadline the agent keeps
(lease renewal, the fence margin, the API's answers) is late by at least as much, so it is a
histogram in /metrics, `pgwarden_event_loop_lag_seconds`. Its cost: one wake-up per interval,
2 s, as often as the HA loop cycles at the default timings (issue 15: at 1 s it was about a
tenth of an idle agent's wake-ups, each of which costs more than most of what it runs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from agent.clock import Clock

INTERVAL_S: Final = 2.0


class LagSink(Protocol):
    """Where the measured overshoots go (`agent.metrics.Metrics` is one)."""

    def observe_event_loop_lag(self, seconds: float) -> None: ...


def overshoot(slept_at: float, woke_at: float, interval_s: float) -> float:
    """How much later than `interval_s` after `slept_at` the sleeper ran again (never < 0)."""
    return max(0.0, woke_at - slept_at - interval_s)


async def watch_event_loop_lag(
    clock: Clock,
    sink: LagSink,
    *,
    interval_s: float = INTERVAL_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Forever: sleep `interval_s`, hand the overshoot to `sink`. Ends only when cancelled."""
    while True:
        slept_at = clock.monotonic()
        await sleep(interval_s)
        sink.observe_event_loop_lag(overshoot(slept_at, clock.monotonic(), interval_s))
