"""The memory backend: the DCS contract on a fake clock, and its fault injection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clock import FakeClock
from agent.dcs.base import Dcs, DcsUnavailable
from agent.dcs.memory import MemoryDcs, MemoryStore
from agent.model import RecordKind
from tests.contract.dcs_contract import ContractCluster, DcsContract, member

TTL_S = 10.0


class MemoryCluster:
    """Binds the contract suite to one `MemoryStore` on a `FakeClock`."""

    ttl_s = TTL_S
    expiry_slack_s = 0.001
    wake_s = 1.0  # a woken waiter finishes at the next loop iteration; this is only a bound
    quiet_s = 0.0
    deadline_s = 0.0
    member_records_expire = True

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.store = MemoryStore(self.clock)
        self.handles: list[MemoryDcs] = []

    def make(self, name: str) -> Dcs:
        handle = MemoryDcs(self.store, name, ttl_s=self.ttl_s, clock=self.clock)
        self.handles.append(handle)
        return handle

    async def expire(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.store.expire_leases()
        await asyncio.sleep(0)

    async def write_raw(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.store.delete_raw(key)
        else:
            self.store.put_raw(key, value)

    async def make_unreachable(self, name: str) -> Dcs:
        handle = MemoryDcs(self.store, name, ttl_s=self.ttl_s, timeout_s=self.deadline_s)
        handle.faults.slow_s = 3600.0  # never answers; the deadline (0 s) cuts it short
        self.handles.append(handle)
        return handle

    async def close(self) -> None:
        for handle in self.handles:
            await handle.close()


class TestMemoryDcsContract(DcsContract):
    @pytest.fixture
    async def cluster(self) -> AsyncIterator[ContractCluster]:
        cluster = MemoryCluster()
        yield cluster
        await cluster.close()


# --------------------------------------------------------------------------- memory specifics


@pytest.fixture
def mem() -> MemoryCluster:
    return MemoryCluster()


def handle(cluster: MemoryCluster, name: str) -> MemoryDcs:
    made = cluster.make(name)
    assert isinstance(made, MemoryDcs)
    return made


async def test_a_store_wide_outage_fails_every_call_at_once_and_heals(mem: MemoryCluster) -> None:
    a = handle(mem, "a")
    mem.store.faults.unavailable = True
    for call in (a.get_cluster, a.acquire_leader, a.renew_leader, a.release_leader):
        with pytest.raises(DcsUnavailable):
            await call()
    mem.store.faults.unavailable = False
    assert await a.acquire_leader()


async def test_an_outage_of_one_handle_leaves_the_others_working(mem: MemoryCluster) -> None:
    a, b = handle(mem, "a"), handle(mem, "b")
    a.faults.unavailable = True
    with pytest.raises(DcsUnavailable):
        await a.publish_member(member("a"))
    await b.publish_member(member("b"))
    assert [m.name for m in (await b.get_cluster()).members] == ["b"]


async def test_a_partitioned_leader_loses_its_record_when_its_lease_runs_out(
    mem: MemoryCluster,
) -> None:
    a, b = handle(mem, "a"), handle(mem, "b")
    assert await a.acquire_leader()
    mem.store.partition("a")
    with pytest.raises(DcsUnavailable):
        await a.renew_leader()
    await mem.expire(TTL_S)
    assert (await b.get_cluster()).leader is None
    assert await b.acquire_leader()
    mem.store.heal("a")
    assert not await a.renew_leader()


async def test_a_partition_covers_a_restarted_handle_of_the_same_member(mem: MemoryCluster) -> None:
    handle(mem, "a")
    mem.store.partition("a")
    with pytest.raises(DcsUnavailable):
        await handle(mem, "a").get_cluster()


async def test_changes_during_a_partition_wake_the_member_once_it_is_healed(
    mem: MemoryCluster,
) -> None:
    a, b = handle(mem, "a"), handle(mem, "b")
    await a.get_cluster()
    mem.store.partition("a")
    assert await b.acquire_leader()
    assert await a.wait_for_change(0) is False
    mem.store.heal("a")
    assert await a.wait_for_change(0) is True


async def test_a_lost_race_is_injected_for_the_next_conditional_write_only(
    mem: MemoryCluster,
) -> None:
    a = handle(mem, "a")
    a.faults.lose_races = 1
    assert not await a.acquire_leader()
    assert (await a.get_cluster()).leader is None
    assert await a.acquire_leader()
    mem.store.faults.lose_races = 1
    assert not await a.write_record(RecordKind.INITIALIZE, "", expected_version=None)
    assert await a.write_record(RecordKind.INITIALIZE, "", expected_version=None)


async def test_a_slow_store_raises_at_the_deadline_and_applies_nothing(mem: MemoryCluster) -> None:
    slow = MemoryDcs(mem.store, "a", ttl_s=TTL_S, timeout_s=0.0)
    slow.faults.slow_s = 60.0
    with pytest.raises(DcsUnavailable):
        await slow.acquire_leader()
    assert (await handle(mem, "b").get_cluster()).leader is None  # nothing was applied
    mem.store.faults.slow_s = 60.0
    fast_caller = handle(mem, "c")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):  # the caller's own timeout applies too
            await fast_caller.get_cluster()


async def test_expiry_is_judged_on_the_store_clock_only_when_it_passes_the_ttl(
    mem: MemoryCluster,
) -> None:
    a, b = handle(mem, "a"), handle(mem, "b")
    assert await a.acquire_leader()
    mem.clock.advance(TTL_S - 0.001)
    assert (await b.get_cluster()).leader is not None
    mem.clock.advance(0.001)
    # No explicit expire_leases(): any operation applies what is due first.
    assert (await b.get_cluster()).leader is None


async def test_a_store_takes_its_clock_from_its_first_handle_and_refuses_a_second_clock() -> None:
    clock = FakeClock()
    store = MemoryStore()
    MemoryDcs(store, "a", ttl_s=TTL_S, clock=clock)
    assert store.clock is clock
    with pytest.raises(ValueError, match="one clock"):
        MemoryDcs(store, "b", ttl_s=TTL_S, clock=FakeClock())


async def test_a_closed_handle_is_unavailable(mem: MemoryCluster) -> None:
    a = handle(mem, "a")
    await a.close()
    with pytest.raises(DcsUnavailable):
        await a.get_cluster()


# --------------------------------------------------------------------------- one leader, always

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["acquire", "renew", "release", "publish", "restart"]),
        st.integers(min_value=0, max_value=2),
        st.sampled_from([0.0, 0.0, 0.5, 4.99, 5.0, 9.99, 10.0, 12.0]),  # time passing before
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=_OPS)
def test_no_two_members_ever_hold_overlapping_leases(ops: list[tuple[str, int, float]]) -> None:
    """Whoever gets True from acquire or renew at t believes it leads until t + ttl (unless it
    releases first); no other member may get True before then, and a free record is free."""
    asyncio.run(_run_leader_scenario(ops))


async def _run_leader_scenario(ops: list[tuple[str, int, float]]) -> None:
    cluster = MemoryCluster()
    names = ["a", "b", "c"]
    handles = {name: handle(cluster, name) for name in names}
    believes_until: dict[str, float] = {}
    for op, index, seconds in ops:
        await cluster.expire(seconds)
        name = names[index]
        dcs = handles[name]
        now = cluster.clock.monotonic()
        if op == "restart":
            await dcs.close()  # the agent dies; the new one starts with no belief of its own
            handles[name] = handle(cluster, name)
            continue
        if op == "publish":
            await dcs.publish_member(member(name))
            continue
        if op == "release":
            await dcs.release_leader()
            believes_until.pop(name, None)
            continue
        leader_before = (await dcs.get_cluster()).leader
        won = await (dcs.acquire_leader() if op == "acquire" else dcs.renew_leader())
        if op == "acquire":
            expected = leader_before is None or leader_before.name == name
            assert won == expected, f"{name} acquire at {now}: {won}, leader was {leader_before}"
        if won:
            rivals = [n for n, until in believes_until.items() if n != name and until > now]
            assert not rivals, f"{name} won at {now} while {rivals} still believe they lead"
            believes_until[name] = now + TTL_S
