"""The change tracker behind `wait_for_change` (base.py, point 8), on a fake clock."""

from __future__ import annotations

import asyncio
import itertools

import pytest
import structlog

from agent.clock import FakeClock
from agent.dcs.changes import Backoff, ChangeTracker, WatchResync, watch_forever


class Deadlines:
    """`Timers` with deadlines set by the test."""

    def __init__(self, *deadlines: float) -> None:
        self.untold = set(deadlines)

    def take_due(self, now: float) -> bool:
        due = {d for d in self.untold if d <= now}
        self.untold -= due
        return bool(due)

    def next_due(self) -> float | None:
        return min(self.untold, default=None)


def tracker(*, own_kept: int = 1024) -> ChangeTracker:
    return ChangeTracker(FakeClock(), own_kept=own_kept)


def test_a_change_by_someone_else_is_told_once() -> None:
    changes = tracker()
    assert not changes.take_change()
    changes.observed(7)
    assert changes.take_change()
    assert not changes.take_change()


def test_own_writes_are_not_changes_in_either_order() -> None:
    changes = tracker()
    with changes.writing():
        changes.own(5)
    changes.observed(5)
    assert not changes.take_change()
    with changes.writing():
        changes.observed(6)  # the watch was faster than the write's answer
        assert not changes.take_change()  # not judged while the write is in flight
        changes.own(6)
    assert not changes.take_change()


def test_a_foreign_change_among_own_ones_is_told() -> None:
    changes = tracker()
    with changes.writing():
        changes.own(5)
        changes.observed(5)
        changes.observed(6)
        assert not changes.take_change()
    assert changes.take_change()


def test_versions_of_no_write_are_not_remembered_as_own() -> None:
    changes = tracker()
    changes.own(0)
    changes.observed(0)
    assert changes.take_change()


def test_an_own_version_the_watch_passed_is_forgotten() -> None:
    changes = tracker()
    changes.own(5)  # a heartbeat the backend filtered out: never observed
    changes.own(12)
    changes.watched_to(10)
    changes.observed(9)
    assert changes.take_change()
    # Only a forgotten version can wake here (the watch never delivers one twice).
    changes.observed(5)
    assert changes.take_change()
    changes.observed(12)
    assert not changes.take_change()


def test_at_most_own_kept_versions_are_remembered_oldest_first_forgotten() -> None:
    changes = tracker(own_kept=2)
    for version in (1, 2, 3):
        changes.own(version)
    changes.observed(3)
    changes.observed(2)
    assert not changes.take_change()
    changes.observed(1)
    assert changes.take_change()


def test_own_versions_the_watch_delivered_leave_room_for_those_still_expected() -> None:
    changes = tracker(own_kept=2)
    changes.own(5)
    changes.observed(5)
    assert not changes.take_change()
    changes.own(1)
    changes.own(2)
    changes.observed(1)
    changes.observed(2)
    assert not changes.take_change()


def test_a_resync_is_told_once_even_while_a_write_is_in_flight() -> None:
    changes = tracker()
    with changes.writing():
        changes.resync()
        assert changes.take_change()
        assert not changes.take_change()


def test_member_heartbeats_do_not_count_but_appearing_changing_and_going_do() -> None:
    changes = tracker()
    assert changes.member_changed("a", "replica/streaming")  # appears
    assert not changes.member_changed("a", "replica/streaming")  # a heartbeat
    assert changes.member_changed("a", "primary/running")
    assert changes.member_changed("a", None)  # goes
    assert not changes.member_changed("a", None)  # was not there


def test_seeded_members_merge_or_replace() -> None:
    changes = tracker()
    changes.seed_members({"a": "s1", "b": "s1"}, replace=False)
    assert not changes.member_changed("a", "s1")
    changes.seed_members({"c": "s1"}, replace=False)
    assert not changes.member_changed("b", "s1")
    changes.seed_members({"c": "s1"}, replace=True)
    assert changes.member_changed("a", "s1")  # forgotten by the complete list
    assert not changes.member_changed("c", "s1")


def test_a_timer_wakes_once_when_due_on_the_injected_clock() -> None:
    clock = FakeClock()
    changes = ChangeTracker(clock, timers=Deadlines(clock.monotonic() + 10.0))
    assert not changes.take_change()
    clock.advance(9.9)
    assert not changes.take_change()
    clock.advance(0.1)
    assert changes.take_change()
    assert not changes.take_change()


async def test_wait_returns_a_change_made_before_it_at_once_and_times_out_otherwise() -> None:
    changes = tracker()
    changes.observed(3)
    assert await changes.wait(0.0) is True
    assert await changes.wait(0.0) is False


async def test_wait_wakes_on_a_change_and_on_the_end_of_the_last_write() -> None:
    changes = tracker()
    waiter = asyncio.create_task(changes.wait(30.0))
    await asyncio.sleep(0)
    changes.observed(4)
    assert await asyncio.wait_for(waiter, 5.0) is True

    with changes.writing():
        changes.observed(8)
        waiter = asyncio.create_task(changes.wait(30.0))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not waiter.done()  # judged only when no write is in flight
    assert await asyncio.wait_for(waiter, 5.0) is True


async def test_wait_returns_when_a_timer_is_due_and_no_later_than_its_timeout() -> None:
    clock = FakeClock()
    timers = Deadlines(clock.monotonic() + 5.0)
    changes = ChangeTracker(clock, timers=timers)
    assert await changes.wait(0.0) is False
    clock.advance(5.0)
    assert await asyncio.wait_for(changes.wait(30.0), 5.0) is True
    assert timers.next_due() is None


async def test_a_waiter_sleeps_no_longer_than_until_the_next_timer() -> None:
    clock = FakeClock()
    changes = ChangeTracker(clock, timers=Deadlines(clock.monotonic() + 0.05))
    waiter = asyncio.create_task(changes.wait(30.0))
    await asyncio.sleep(0)
    clock.advance(0.05)  # nothing wakes the waiter: it must look again by itself
    assert await asyncio.wait_for(waiter, 5.0) is True


async def test_the_watch_resyncs_on_lost_events_and_retries_failures_forever() -> None:
    changes = tracker()
    calls = itertools.count()
    reached = asyncio.Event()

    async def follow(backoff: Backoff) -> None:
        match next(calls):
            case 0:
                raise WatchResync("dcs_watch_compacted", start=4, compact_revision=9)
            case 1 | 2:
                raise ConnectionResetError("gone")
            case 3:
                return  # the server ended the stream: resume
            case _:
                reached.set()
                await asyncio.Event().wait()

    task = asyncio.create_task(
        watch_forever(
            follow,
            tracker=changes,
            log=structlog.get_logger("test"),
            position=lambda: 0,
            backoff=Backoff(first_s=0.001, max_s=0.002),
        )
    )
    try:
        await asyncio.wait_for(reached.wait(), 5.0)
        assert changes.take_change()  # the resync
        assert not changes.take_change()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_backoff_doubles_up_to_its_maximum_and_resets_on_progress() -> None:
    backoff = Backoff(first_s=0.1, max_s=0.3)
    assert [backoff.next_s() for _ in range(4)] == [0.1, 0.2, 0.3, 0.3]
    backoff.reset()
    assert backoff.next_s() == 0.1


@pytest.mark.parametrize(("first_s", "max_s"), [(0.0, 1.0), (2.0, 1.0)])
def test_backoff_rejects_bad_bounds(first_s: float, max_s: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(first_s=first_s, max_s=max_s)
