"""A `CallbackRunner` that records calls instead of starting processes, and answers
`run()` (pre_promote, post_bootstrap) with the results a test scripted."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from agent.callback_settings import CallbackEvent
from agent.callbacks import CallbackResult, CallbackRun
from agent.clock import FakeClock


class FakeCallbacks:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[tuple[str, str]] = []  # (event, role), fired and run, in order
        self.results: dict[CallbackEvent, deque[CallbackResult]] = {}
        # Called as each `run()` starts: a test looks at the world the callback would see.
        self.on_run: Callable[[CallbackEvent], None] | None = None

    def script(self, event: CallbackEvent, *results: CallbackResult) -> None:
        """The next `run()`s of `event` end with these results (then: ok)."""
        self.results.setdefault(event, deque()).extend(results)

    def fire(self, event: CallbackEvent, role: str) -> None:
        self.calls.append((event.value, role))

    async def run(self, event: CallbackEvent, role: str, *, timeout_s: float) -> CallbackRun | None:
        self.calls.append((event.value, role))
        if self.on_run is not None:
            self.on_run(event)
        queue = self.results.get(event)
        result = queue.popleft() if queue else CallbackResult.OK
        code = 0 if result is CallbackResult.OK else 1 if result is CallbackResult.FAILED else None
        return CallbackRun(event=event, result=result, exit_code=code, duration_s=0.0)

    async def close(self) -> None:
        pass

    def events(self, event: CallbackEvent) -> list[str]:
        """The roles `event` was called with, in order."""
        return [role for name, role in self.calls if name == event.value]
