"""HaLoop.accept_failsafe: when a member may promise a primary in failsafe mode not to race,
and how the promise reaches decide() (it is kept in Memory, for one ttl)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

from agent.clock import FakeClock
from agent.dcs.memory import MemoryDcs, MemoryStore
from agent.decide import Memory
from agent.loop import HaLoop
from agent.metrics import Metrics
from agent.model import ClusterView, LeaderRecord, LocalState, MemberName
from tests.unit.test_decide import PRIMARY, REPLICA, make_settings

SETTINGS = make_settings("b")
TTL = SETTINGS.timing.ttl_s


def make_loop(local: LocalState = REPLICA) -> tuple[HaLoop, FakeClock]:
    clock = FakeClock()
    loop = HaLoop(
        settings=SETTINGS,
        clock=clock,
        dcs=MemoryDcs(MemoryStore(clock), "b", ttl_s=TTL, clock=clock),
        pg=cast(Any, None),  # accept_failsafe touches neither PostgreSQL nor the fencer
        fence=cast(Any, None),
        peers=cast(Any, None),
        metrics=Metrics(),
    )
    loop._local = local
    return loop, clock


def test_a_replica_accepts_and_is_bound_for_one_ttl_from_now() -> None:
    loop, clock = make_loop()
    clock.advance(5)
    assert loop.accept_failsafe("a") is None
    assert loop.memory.promised_to == MemberName("a")
    assert loop.memory.promised_until == clock.monotonic() + TTL


def test_a_member_running_a_primary_refuses() -> None:
    loop, _ = make_loop(PRIMARY)
    assert loop.accept_failsafe("a") == "this member runs a primary"
    assert loop.memory == Memory()


def test_a_member_holding_or_taking_the_lease_refuses() -> None:
    loop, clock = make_loop()
    loop.executor.memory = replace(Memory(), lease_sent_at=clock.monotonic())
    assert loop.accept_failsafe("a") is not None
    loop.executor.memory = Memory()
    loop.executor.racing = True
    assert loop.accept_failsafe("a") is not None
    assert loop.memory == Memory()


def test_a_member_that_sees_another_leader_in_the_dcs_refuses() -> None:
    loop, _ = make_loop()
    loop._view = ClusterView(leader=LeaderRecord(name=MemberName("c"), version="1"))
    loop._status = replace(loop._status, dcs_ok=True)
    assert loop.accept_failsafe("a") == "c holds the leader lease"
    # The requester itself as leader (its lease not expired yet for us) is fine.
    assert loop.accept_failsafe("c") is None


def test_a_request_naming_this_member_itself_is_refused() -> None:
    loop, _ = make_loop()
    assert loop.accept_failsafe("b") is not None
