"""Kubernetes Events, the pure parts: which completed actions make which Event, the Event
bodies (checked against the real server's validation, as the test API server applies it),
and the throttle that keeps a flapping member from flooding the API server."""

from __future__ import annotations

import pytest

from agent.actions import (
    Clone,
    Demote,
    EnsureSlots,
    HandOver,
    Promote,
    PromoteReason,
    Rewind,
    StopMode,
)
from agent.events import Event, EventReason, event_for, failsafe_event
from agent.kube.events import EventThrottle, Pending, event_body
from agent.model import MemberName
from tests.k8s_apiserver.resources import find_resource
from tests.k8s_apiserver.validation import problems

B = MemberName("b")


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        (Promote(reason=PromoteReason.FAILOVER), EventReason.FAILOVER),
        (Promote(reason=PromoteReason.SWITCHOVER), EventReason.SWITCHOVER),
        (Demote(mode=StopMode.FAST, reason="lease lost"), EventReason.DEMOTED),
        (HandOver(candidate=B, shutting_down=True), EventReason.SHUTDOWN_HANDOVER),
        (HandOver(candidate=B, shutting_down=False), EventReason.HANDED_OVER),
        (Rewind(source=B), EventReason.REWIND),
        (Clone(source=B, clear_first=True), EventReason.RECLONE),
    ],
)
def test_each_operator_visible_action_makes_its_event(action: object, reason: EventReason) -> None:
    event = event_for(action)  # type: ignore[arg-type]
    assert event is not None and event.reason is reason and event.note


def test_a_first_clone_and_routine_actions_make_no_event() -> None:
    assert event_for(Clone(source=B)) is None
    assert event_for(EnsureSlots(names=(B,), drop=())) is None


def test_failsafe_is_reported_when_entered_and_when_left_only() -> None:
    entered, left = failsafe_event(False, True), failsafe_event(True, False)
    assert entered is not None and entered.reason is EventReason.FAILSAFE_ENTERED
    assert entered.warning
    assert left is not None and left.reason is EventReason.FAILSAFE_LEFT
    assert failsafe_event(True, True) is None and failsafe_event(False, False) is None


def test_event_bodies_pass_the_real_servers_validation() -> None:
    events = find_resource("events.k8s.io", "v1", "events")
    assert events is not None
    for reason in EventReason:
        for count in (1, 5):
            pending = Pending(
                event=Event(reason=reason, note="x" * 2000),
                count=count,
                first_wall=1_700_000_000.0,
                last_wall=1_700_000_060.0,
            )
            body = event_body(pending, namespace="db", pod="pg-0", instance="pg-0", now_wall=1.7e9)
            assert problems(events, body) == []
            assert body["regarding"] == {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": "pg-0",
                "namespace": "db",
            }
            assert ("series" in body) == (count > 1)


def flap(throttle: EventThrottle, now: float, times: int) -> None:
    for i in range(times):
        reason = EventReason.FAILOVER if i % 2 else EventReason.DEMOTED
        throttle.add(Event(reason=reason, note=f"flap {i}"), now=now, wall=now)


def test_a_flapping_member_is_coalesced_and_held_to_the_token_rate() -> None:
    throttle = EventThrottle(burst=3, refill_s=30.0, max_pending=20, now=0.0)
    sent: list[Pending] = []
    now = 0.0
    # 1000 occurrences over 10 minutes: one every 0.6 s.
    for _ in range(1000):
        flap(throttle, now, 1)
        while (pending := throttle.take(now)) is not None:
            sent.append(pending)
        now += 0.6
    # At most the burst and then one per refill period: 3 + 600 / 30.
    assert len(sent) <= 3 + 600 / 30 + 1
    assert max(p.count for p in sent) > 10  # coalesced into Events with a series
    # Nothing is lost: every occurrence is counted in an Event sent or still waiting.
    later = now + 3600
    while (pending := throttle.take(later)) is not None:
        sent.append(pending)
    assert sum(p.count for p in sent) == 1000


def test_reasons_beyond_the_pending_limit_are_dropped_and_counted() -> None:
    throttle = EventThrottle(burst=1, refill_s=30.0, max_pending=2, now=0.0)
    for reason in (EventReason.FAILOVER, EventReason.DEMOTED, EventReason.REWIND):
        throttle.add(Event(reason=reason, note="n"), now=0.0, wall=0.0)
    assert throttle.pending == 2 and throttle.dropped == 1
    first = throttle.take(0.0)
    assert first is not None and first.event.reason is EventReason.FAILOVER
    assert throttle.take(1.0) is None
    assert throttle.wait_s(1.0) == pytest.approx(29.0)
    assert throttle.take(30.0) is not None


def test_a_failed_send_waits_again_merged_with_later_occurrences() -> None:
    throttle = EventThrottle(burst=5, refill_s=1.0, max_pending=5, now=0.0)
    throttle.add(Event(reason=EventReason.REWIND, note="first"), now=0.0, wall=10.0)
    taken = throttle.take(0.0)
    assert taken is not None
    throttle.add(Event(reason=EventReason.REWIND, note="second"), now=0.0, wall=11.0)
    throttle.put_back(taken)
    again = throttle.take(0.0)
    assert again is not None and again.count == 2 and again.event.note == "second"
    assert (again.first_wall, again.last_wall) == (10.0, 11.0)
