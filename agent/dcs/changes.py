"""Change tracking behind `wait_for_change` (base.py, contract point 8), for every backend
that learns of changes from watch streams.

A backend feeds one `ChangeTracker` from two sides and asks it one question:

- its watch streams report each change they deliver (`observed(version)`), after dropping
  what point 8 does not count (member heartbeats, renewals by the same holder);
- its public calls that write run inside `writing()` and report the version each write
  produced (`own(version)`);
- `wait_for_change` is `wait(timeout_s)`: True once for every batch of changes that holds at
  least one version that is not ours, False on timeout.

The rules, and why:

- A write's own event can arrive from the watch before the write's answer tells us its
  version. So while any write is in flight, pending changes are not judged; they are judged
  when the last write ends (bounded by the backend's request deadline), and the end of that
  write wakes a waiter to do so.
- An own version that the watch delivered is forgotten once judged. An own version the
  watch filtered out (a heartbeat) would be kept forever: `watched_to(version)` (a backend
  whose one watch delivers events in version order) forgets every own version below it,
  and in any case at most `own_kept` are kept (a forgotten one costs one spurious wake).
- `resync()` (the watch lost events: compaction, 410 Gone) wakes once, whatever is pending:
  the caller re-reads.
- Reads do not consume changes: nothing here is told of reads.
- Optional `timers` (deadlines on the injected clock, such as records expiring in an
  observer's eyes) wake the waiter once each when they fall due, and bound how long it
  sleeps between judgements.

`watch_forever` runs one watch (a backend's `follow` coroutine, one stream from where the
last one stopped) forever: a `WatchResync` raised by `follow` is logged and resyncs the
tracker; any other failure is logged and retried after an exponential `Backoff`, or after
the pause the backend asks for that failure (`pause_s`: a server that throttles), whichever
is longer. It never raises into the caller (only cancellation ends it).

Everything but `wait` and `watch_forever` is synchronous and does no I/O; times come from
the injected `Clock`, except the wait's own timeout, which is an asyncio timeout (how long
an await lasts, not a lease).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from agent.clock import Clock

OWN_VERSIONS_KEPT = 1024
WATCH_BACKOFF_FIRST_S = 0.1
WATCH_BACKOFF_MAX_S = 2.0
# A timer that falls due is judged this long after its deadline, so that the deadline has
# surely passed on the clock when the waiter looks (float rounding, coarse timers).
_TIMER_GRACE_S = 0.01


class Timers(Protocol):
    """Deadlines on the tracker's clock that count as changes when they fall due."""

    def take_due(self, now: float) -> bool:
        """True if a deadline not reported before has passed at `now`; reports it (once)."""
        ...

    def next_due(self) -> float | None:
        """The earliest deadline not yet reported, None if there is none."""
        ...


class ChangeTracker:
    """What a backend's watches delivered, minus the backend's own writes. One per handle."""

    def __init__(
        self, clock: Clock, *, timers: Timers | None = None, own_kept: int = OWN_VERSIONS_KEPT
    ) -> None:
        if own_kept < 1:
            raise ValueError("own_kept must be at least 1")
        self._clock = clock
        self._timers = timers
        self._own_kept = own_kept
        self._own: set[int] = set()  # versions of our own writes
        self._in_flight = 0  # own writes whose version is not known yet
        self._pending: set[int] = set()  # versions the watches delivered, not yet judged
        self._watched_to = 0  # every event below this version has been delivered
        self._resync = False  # events were lost: wake once, the caller re-reads
        self._members: dict[str, str] = {}  # member -> last seen signature
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ the writer's side

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around a public call that may write: its versions (`own`) are not changes."""
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and self._pending:
                self._changed.set()  # let a waiter judge what arrived meanwhile

    def own(self, version: int) -> None:
        """A version our own write produced (versions <= 0 are ignored: none was returned)."""
        if version <= 0:
            return
        self._own.add(version)
        if len(self._own) > self._own_kept:
            self._own.discard(min(self._own))

    # ------------------------------------------------------------------ the watches' side

    def observed(self, version: int) -> None:
        """A watch delivered a change (one point 8 counts) at `version`."""
        self._pending.add(version)
        self._changed.set()

    def watched_to(self, version: int) -> None:
        """The watch has delivered every event below `version` (versions are ordered)."""
        self._watched_to = max(self._watched_to, version)

    def resync(self) -> None:
        """The watch lost events: wake a waiter once so that it re-reads."""
        self._resync = True
        self._changed.set()

    def member_changed(self, member: str, signature: str | None) -> bool:
        """Whether a member record's event counts (point 8): it appeared, went away
        (`signature` None), or its signature changed; a heartbeat does not count."""
        if signature is None:
            return self._members.pop(member, None) is not None
        if self._members.get(member) == signature:
            return False
        self._members[member] = signature
        return True

    def seed_members(self, signatures: Mapping[str, str], *, replace: bool) -> None:
        """Member signatures read by a list that a watch continues from (`replace`: the
        list is complete, forget members it does not show)."""
        if replace:
            self._members = dict(signatures)
        else:
            self._members.update(signatures)

    # ------------------------------------------------------------------ the waiter's side

    def take_change(self) -> bool:
        """Judge what is pending: True (once) if it holds a change that is not ours, a
        resync, or a timer that fell due. Pure bookkeeping, no waiting."""
        if self._timers is not None and self._timers.take_due(self._clock.monotonic()):
            return True
        if not self._resync and not (self._pending and self._in_flight == 0):
            return False
        foreign = self._pending - self._own
        self._own -= self._pending
        self._own = {v for v in self._own if v >= self._watched_to}
        self._pending.clear()
        if not foreign and not self._resync:
            return False
        self._resync = False
        return True

    async def wait(self, timeout_s: float) -> bool:
        """True as soon as `take_change()` is, False after `timeout_s` (see the module)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self.take_change():
                return True
            self._changed.clear()
            wait_s = deadline - loop.time()
            due = self._timers.next_due() if self._timers is not None else None
            if due is not None:
                until_due_s = max(0.0, due - self._clock.monotonic()) + _TIMER_GRACE_S
                wait_s = min(wait_s, until_due_s)
            if wait_s <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._changed.wait()


@dataclass(slots=True, kw_only=True)
class Backoff:
    """Exponential retry delays: `first_s`, doubled after each failure up to `max_s`."""

    first_s: float = WATCH_BACKOFF_FIRST_S
    max_s: float = WATCH_BACKOFF_MAX_S
    _next_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s:
            raise ValueError("backoff needs 0 < first_s <= max_s")
        self._next_s = self.first_s

    def next_s(self) -> float:
        """The delay before the next retry (and doubles the one after)."""
        delay_s = self._next_s
        self._next_s = min(2 * delay_s, self.max_s)
        return delay_s

    def reset(self) -> None:
        """The watch made progress: the next failure waits `first_s` again."""
        self._next_s = self.first_s


class WatchResync(Exception):
    """Raised by a `follow` coroutine when its stream lost events (the server compacted or
    expired its position). `event` and `fields` are logged; the tracker resyncs."""

    def __init__(self, event: str, **fields: int) -> None:
        super().__init__(event)
        self.event = event
        self.fields = fields


Follow = Callable[[Backoff], Awaitable[None]]


async def watch_forever(
    follow: Follow,
    *,
    tracker: ChangeTracker,
    log: structlog.typing.FilteringBoundLogger,
    position: Callable[[], int],
    backoff: Backoff | None = None,
    pause_s: Callable[[Exception], float] | None = None,
) -> None:
    """Run `follow` again and again, forever (see the module docstring). `follow` keeps its
    own position and resumes from it; it calls `backoff.reset()` when it makes progress.
    `position()` is logged with failures; `pause_s(failure)`: the least wait before the
    next try (0: the backoff's alone)."""
    retry = backoff or Backoff()
    while True:
        try:
            await follow(retry)
            retry.reset()  # the stream ended as streams do (server timeout): resume at once
        except WatchResync as exc:
            log.warning(exc.event, **exc.fields)
            tracker.resync()
        except Exception as exc:  # the watch must outlive any trouble; it is logged
            delay_s = retry.next_s()
            if pause_s is not None:
                delay_s = max(delay_s, pause_s(exc))
            log.warning("dcs_watch_failed", error=repr(exc), resume_at=position(), retry_s=delay_s)
            await asyncio.sleep(delay_s)
