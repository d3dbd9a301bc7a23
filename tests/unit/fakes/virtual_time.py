"""An event loop on a FakeClock: asyncio's timers (sleep, timeout, wait_for) run on fake time.

`run_virtual(main, clock)` runs a coroutine on an event loop whose `time()` is
`clock.monotonic()`. Whenever the loop would block waiting for its next timer (nothing ready,
no I/O), the clock jumps to that timer instead (`advance(seconds)`, by default
`clock.advance`), so a test of code that sleeps, times out or hedges runs in microseconds and
sees exact fake durations. Code that spins (reschedules itself without ever waiting on a
timer) would never let fake time move: with `step_s` every turn of the loop that does not wait
costs that much fake time, as CPU work costs real time, so a test can count what happens per
fake second and see a spin.
Real I/O still works (it is polled without blocking), but a test should not need any.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from agent.clock import FakeClock

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """Polls without blocking; where the loop would wait `timeout`, moves time instead."""

    def __init__(self, advance: Callable[[float], None], step_s: float) -> None:
        super().__init__()
        self._advance = advance
        self._step_s = step_s

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready or (timeout is not None and timeout <= 0):
            if self._step_s > 0:
                self._advance(self._step_s)
            return ready
        if timeout is None:
            raise RuntimeError("virtual time: nothing is ready and no timer is due (deadlock)")
        self._advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(
        self, clock: FakeClock, advance: Callable[[float], None] | None = None, step_s: float = 0.0
    ) -> None:
        super().__init__(selector=_JumpingSelector(advance or clock.advance, step_s))
        self._fake_clock = clock

    def time(self) -> float:
        return self._fake_clock.monotonic()


def run_virtual(
    main: Coroutine[Any, Any, T],
    clock: FakeClock,
    advance: Callable[[float], None] | None = None,
    *,
    step_s: float = 0.0,
) -> T:
    """Run `main` to completion on a VirtualTimeLoop over `clock`; its result. `step_s`: the
    fake time each turn of the loop that does not wait costs (0: none)."""
    loop = VirtualTimeLoop(clock, advance, step_s)
    try:
        return loop.run_until_complete(main)
    finally:
        # Tasks the test left running (other members' watches): cancelled, not destroyed.
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        loop.run_until_complete(_drain(left))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _drain(tasks: set[asyncio.Task[Any]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
