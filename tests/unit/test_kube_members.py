"""When a member writes its record on its pod (agent/dcs/kubernetes/members.py): at once when
it changed, when its heartbeat is due, and while the server throttles only for a change a peer
wakes for (or a synchronous standby's heartbeat). The transport is a stand-in that answers
every PATCH as the API server does and counts them; times are on a fake clock."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.dcs.base import DcsUnavailable
from agent.dcs.kubernetes.api import Response
from agent.dcs.kubernetes.expiry import ObservedExpiry
from agent.dcs.kubernetes.members import MemberRecords
from agent.dcs.kubernetes.objects import KubeObject, member_patch, written_stamp
from agent.dcs.kubernetes.throttle import ThrottleState
from agent.model import PgState, Role
from tests.contract.dcs_contract import member

TTL_S, HEARTBEAT_S = 6.0, 2.0


class PodApi:
    """Answers each PATCH of the pod with the pod at a new resourceVersion."""

    def __init__(self, clock: FakeClock) -> None:
        self.throttle = ThrottleState(
            clock=clock.monotonic, max_pause_s=5 * TTL_S, min_pause_s=TTL_S, rng=random.Random(3)
        )
        self.patches = 0
        self.failing = False  # answer 500 (a webhook, a server error)

    async def call(self, method: str, path: str, **_: Any) -> Response:
        assert method == "PATCH"
        self.patches += 1
        if self.failing:
            return Response(500, {"kind": "Status", "code": 500})
        return Response(200, {"metadata": {"name": "a", "resourceVersion": str(self.patches)}})


def records(
    clock: FakeClock, renewed: Callable[[], float] = lambda: float("-inf")
) -> tuple[MemberRecords, PodApi]:
    api = PodApi(clock)
    handle = MemberRecords(
        api,  # type: ignore[arg-type]  # the stand-in has what MemberRecords uses
        pod_path="/api/v1/namespaces/default/pods/a",
        cluster="c",
        member="a",
        expiry=ObservedExpiry(TTL_S),
        heartbeat_s=HEARTBEAT_S,
        clock=clock,
        own=lambda rv: None,
        renewed=renewed,
    )
    return handle, api


async def test_a_record_is_written_when_it_changes_or_its_heartbeat_is_due() -> None:
    clock = FakeClock()
    handle, api = records(clock)
    await handle.publish(member("a"))
    await handle.publish(member("a"))
    assert api.patches == 1  # unchanged, heartbeat fresh
    await handle.publish(member("a", wal_lsn=16))
    assert api.patches == 2  # changed (WAL positions count when nothing throttles)
    clock.advance(HEARTBEAT_S)
    await handle.publish(member("a", wal_lsn=16))
    assert api.patches == 3  # the heartbeat


async def test_while_throttled_heartbeats_wait_until_five_ttls_pass_without_a_429() -> None:
    clock = FakeClock()
    handle, api = records(clock)
    await handle.publish(member("a"))
    pause_s = api.throttle.refused(1.0)  # a 429 on any request of this handle
    clock.advance(HEARTBEAT_S)
    await handle.publish(member("a"))
    await handle.publish(member("a", wal_lsn=16))  # only the WAL position moved
    assert api.patches == 1
    clock.advance(pause_s)  # the pause is over, the fleet may still be throttled
    assert not api.throttle.throttling()
    await handle.publish(member("a", wal_lsn=32))
    assert api.patches == 1, "a heartbeat resumed as soon as the pause ended"
    primary = replace(member("a"), role=Role.PRIMARY, state=PgState.RUNNING)
    await handle.publish(primary)
    assert api.patches == 2  # a change peers wake for is written at once
    clock.advance(5 * TTL_S)  # no 429 for 5 ttls: heartbeats again
    await handle.publish(primary)
    assert api.patches == 3


async def test_a_synchronous_standby_heartbeats_while_throttled() -> None:
    clock = FakeClock()
    handle, api = records(clock)
    handle.in_sync_set = True
    await handle.publish(member("a"))
    api.throttle.refused(1.0)
    await handle.publish(member("a"))
    assert api.patches == 1  # still fresh
    clock.advance(HEARTBEAT_S)
    await handle.publish(member("a"))
    assert api.patches == 2


def pod(
    name: str,
    heartbeat: str,
    *,
    vouching: bool = True,
    rv: int = 1,
    written_at: float = 0.0,
    instance: str = "i1",
) -> KubeObject:
    """A member pod as the API server returns it after `name`'s agent wrote its record at
    `written_at` on its own monotonic clock (`vouching=False`: by an agent from before the
    lock vouched for the leader's record, and before records said when they were written)."""
    record = member(name).to_json()
    meta = member_patch("c", name, record, heartbeat=heartbeat, written=(instance, written_at))[
        "metadata"
    ]
    if not vouching:
        del meta["annotations"]["pgwarden.io/lock-vouches"]
        del meta["annotations"]["pgwarden.io/written"]
    return {"metadata": {**meta, "name": name, "resourceVersion": str(rv)}}


async def test_the_leader_skips_heartbeats_while_renewals_vouch_for_its_record() -> None:
    """A renewal sent counts as a heartbeat while every peer's agent lets the lock vouch
    and one of them is live; otherwise, or once renewals stop, heartbeats as before."""
    clock = FakeClock()
    renewed_at = float("-inf")
    handle, api = records(clock, renewed=lambda: renewed_at)
    await handle.publish(member("a"))
    handle.items([pod("a", "t0"), pod("b", "t0")], clock.monotonic())
    for _ in range(5):  # renewing every cycle: no heartbeat
        clock.advance(HEARTBEAT_S)
        renewed_at = clock.monotonic() - 0.1
        await handle.publish(member("a"))
    assert api.patches == 1
    await handle.publish(member("a", wal_lsn=16))
    assert api.patches == 2, "a changed record waits for nothing"
    clock.advance(HEARTBEAT_S)  # renewals stopped (released, lost, failing)
    await handle.publish(member("a", wal_lsn=16))
    assert api.patches == 3


async def test_the_leader_heartbeats_when_a_peer_runs_an_older_agent_or_none_is_live() -> None:
    clock = FakeClock()
    handle, api = records(clock, renewed=clock.monotonic)
    await handle.publish(member("a"))
    # c's record was written by an older agent (it would expire the leader's record).
    handle.items([pod("a", "t0"), pod("b", "t0"), pod("c", "t0", vouching=False)], 0.0)
    clock.advance(HEARTBEAT_S)
    await handle.publish(member("a"))
    assert api.patches == 2
    # Every peer vouches but none is live: its pods cache hears no heartbeat but ours.
    handle.items([pod("a", "t0"), pod("b", "t0", rv=2)], clock.monotonic() + TTL_S)
    clock.advance(HEARTBEAT_S)
    await handle.publish(member("a"))
    assert api.patches == 3


def live_names(handle: MemberRecords, pods: list[KubeObject], now: float) -> list[str]:
    items, _ = handle.items(pods, now)
    return sorted(key.rsplit("/", 1)[-1] for key, _, _ in items)


def test_a_cache_from_before_a_members_last_write_does_not_give_it_a_fresh_ttl() -> None:
    """p wrote its record after this observer's pods stream died, then p died. Each cycle
    the handle evaluates its cache (which lacks p's record) and then reads the server (which
    shows it): the record is timed from its first sight, not again from each read after the
    cache's list (review hreview3 finding 2: p looked live for as long as that went on)."""
    clock = FakeClock()
    handle, _ = records(clock)
    server = [pod("a", "t1", rv=5), pod("p", "t1", rv=7)]
    cache = [pod("a", "t0", rv=3)]  # as the stream last delivered: p had no record yet
    start = clock.monotonic()
    assert live_names(handle, server, start) == ["a", "p"]
    while clock.monotonic() < start + TTL_S - 0.5:
        clock.advance(0.5)
        live_names(handle, cache, clock.monotonic())
        assert "p" in live_names(handle, server, clock.monotonic())
    clock.advance(0.5)
    live_names(handle, cache, clock.monotonic())
    assert "p" not in live_names(handle, server, clock.monotonic()), "p lives on a ttl after"


def test_a_record_the_server_showed_gone_is_not_brought_back_by_a_cache_that_lags() -> None:
    clock = FakeClock()
    handle, _ = records(clock)
    cache = [pod("a", "t0", rv=5), pod("p", "t0", rv=7)]
    assert live_names(handle, cache, clock.monotonic()) == ["a", "p"]
    clock.advance(1.0)
    # The server: p's pod deleted (p gone), a heartbeated since (rv 9).
    assert live_names(handle, [pod("a", "t1", rv=9)], clock.monotonic()) == ["a"]
    for _ in range(int(2 * TTL_S)):
        assert "p" not in live_names(handle, cache, clock.monotonic()), "p seen anew"
        clock.advance(1.0)


async def test_after_a_failed_write_the_leader_is_behind_and_heartbeats_until_one_goes() -> None:
    """A failed write makes the record behind (the leader's renewals then say so and vouch
    for nothing, holding.py): a renewal counts as no heartbeat until a write goes through,
    so the record its pod shows is kept alive by heartbeats, not by renewals."""
    clock = FakeClock()
    renewed_at = float("-inf")
    handle, api = records(clock, renewed=lambda: renewed_at)
    await handle.publish(member("a"))
    handle.items([pod("a", "t0"), pod("b", "t0")], clock.monotonic())
    api.failing = True
    with pytest.raises(DcsUnavailable):
        await handle.publish(member("a", wal_lsn=16))
    assert handle.behind
    api.failing = False
    clock.advance(HEARTBEAT_S)
    renewed_at = clock.monotonic() - 0.1
    await handle.publish(member("a"))  # as written before; renewals do not vouch for it
    assert api.patches == 3 and not handle.behind
    clock.advance(HEARTBEAT_S)
    renewed_at = clock.monotonic() - 0.1
    await handle.publish(member("a"))
    assert api.patches == 3  # a write went through: renewals vouch again


def test_a_write_seen_late_is_timed_from_about_when_it_was_made() -> None:
    """This observer's pods stream died without a word just before p's last heartbeat (1 s
    after the one before, on p's clock); the cache is found quiet and the server read 5 s
    later: p, dead since that write, goes a ttl after it, not a ttl after this first sight
    (it lingered up to about 2 ttl). A live member is never dated before its write."""
    clock = FakeClock()
    handle, _ = records(clock)
    start = clock.monotonic()
    assert live_names(handle, [pod("p", "t0", rv=3, written_at=50.0)], start) == ["p"]
    clock.advance(5.0)
    late = [pod("p", "t1", rv=4, written_at=51.0)]  # written at start + 1 s
    assert live_names(handle, late, clock.monotonic()) == ["p"]
    clock.advance(TTL_S - 5.0 + 1.0 - 0.1)
    assert live_names(handle, late, clock.monotonic()) == ["p"]
    clock.advance(0.1)
    assert live_names(handle, late, clock.monotonic()) == [], "p lives on past a ttl"


def test_a_write_is_dated_only_against_an_earlier_write_of_the_same_agent() -> None:
    """Another agent instance (p restarted), an older agent's write (no stamp, or a stamp
    left from before with another heartbeat) or a stamp that went backwards: timed from
    first sight, as before."""
    clock = FakeClock()
    for late in (
        pod("p", "t1", rv=4, written_at=51.0, instance="i2"),
        pod("p", "t1", rv=4, vouching=False),
        pod("p", "t1", rv=4, written_at=49.0),
    ):
        handle, _ = records(clock)
        start = clock.monotonic()
        assert live_names(handle, [pod("p", "t0", rv=3, written_at=50.0)], start) == ["p"]
        clock.advance(5.0)
        assert live_names(handle, [late], clock.monotonic()) == ["p"]
        clock.advance(TTL_S - 0.1)
        assert live_names(handle, [late], clock.monotonic()) == ["p"], late
        clock.advance(1.0)
    stale = pod("p", "t2", rv=5, written_at=60.0)
    stale["metadata"]["annotations"]["pgwarden.io/heartbeat"] = "t3"  # an older agent's write
    assert written_stamp(stale) is None
