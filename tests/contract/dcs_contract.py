"""The DCS contract suite (agent/dcs/base.py, points 1-9), run against every backend.

Bind it in a few lines: subclass `DcsContract` in a `Test...` class and override the
`cluster` fixture so that it yields a `ContractCluster` for a fresh, empty cluster (and closes
what it made afterwards):

    class TestMemoryDcs(DcsContract):
        @pytest.fixture
        async def cluster(self) -> AsyncIterator[ContractCluster]:
            ...

Time is the binding's business: `expire(seconds)` lets that much lease time pass on the
store's clock (a fake clock advanced at once, or a real sleep), so the same tests run in
microseconds on the memory backend and in a few seconds on a real store.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Protocol

import pytest
from structlog.testing import capture_logs

from agent.dcs.base import Dcs, DcsUnavailable
from agent.model import (
    HistoryEntry,
    LeaderPosition,
    Member,
    MemberName,
    PgState,
    RecordKind,
    Role,
    SwitchoverRequest,
    history_to_json,
)


class ContractCluster(Protocol):
    """What a backend binding hands the suite: one fresh cluster on its store."""

    @property
    def ttl_s(self) -> float:
        """The ttl of every handle `make()` builds."""

    @property
    def expiry_slack_s(self) -> float:
        """How long after `ttl_s` the store may take to drop an expired record."""

    @property
    def wake_s(self) -> float:
        """How long a change may take to reach another member's `wait_for_change`."""

    @property
    def quiet_s(self) -> float:
        """How long to watch for a wake that must not come (0 where changes arrive at once)."""

    @property
    def deadline_s(self) -> float:
        """The request deadline of handles from `make_unreachable()`."""

    @property
    def member_records_expire(self) -> bool:
        """True where a member record goes away with its member's lease (etcd)."""

    def make(self, name: str) -> Dcs:
        """A new handle for member `name` (a second one for a name is a restarted agent)."""

    async def expire(self, seconds: float) -> None:
        """Let `seconds` of lease time pass on the store's clock."""

    async def write_raw(self, key: str, value: bytes | None) -> None:
        """Write (None: delete) a raw value for the record `key`, bypassing every handle.
        Keys follow `agent.dcs.keys` (`leader`, `members/<name>`, `config`, ...); a backend
        that keeps records elsewhere (Kubernetes: annotations) maps them to its own place."""

    async def make_unreachable(self, name: str) -> Dcs:
        """A handle on a store that accepts requests and never answers."""


def member(name: str, *, wal_lsn: int = 0) -> Member:
    return Member(
        name=MemberName(name),
        role=Role.REPLICA,
        state=PgState.STREAMING,
        api_url=f"http://127.0.0.1:8008/{name}",
        host="127.0.0.1",
        port=5432,
        timeline=1,
        wal_lsn=wal_lsn,
    )


async def keep_renewing(cluster: ContractCluster, handle: Dcs, seconds: float) -> None:
    """Renew every half ttl until `seconds` have passed; every renewal must succeed."""
    step = cluster.ttl_s / 2
    for _ in range(math.ceil(seconds / step)):
        await cluster.expire(step)
        assert await handle.renew_leader()


async def keep_publishing(cluster: ContractCluster, handle: Dcs, seconds: float) -> None:
    step = cluster.ttl_s / 2
    for _ in range(math.ceil(seconds / step)):
        await cluster.expire(step)
        await handle.publish_member(member("a"))


async def leader_name(handle: Dcs) -> str | None:
    view = await handle.get_cluster()
    return view.leader.name if view.leader is not None else None


async def let_expire(cluster: ContractCluster) -> None:
    await cluster.expire(cluster.ttl_s + cluster.expiry_slack_s)


class DcsContract:
    """Every backend keeps these. Bindings override the `cluster` fixture."""

    @pytest.fixture
    def cluster(self) -> ContractCluster:
        raise NotImplementedError("bind the contract: override the `cluster` fixture")

    # ---------------------------------------------------------------- 1. snapshot

    async def test_an_empty_cluster_reads_as_no_leader_no_members_no_records(
        self, cluster: ContractCluster
    ) -> None:
        view = await cluster.make("a").get_cluster()
        assert view.leader is None
        assert view.members == ()
        assert view.initialize is None
        assert view.switchover is None
        assert view.history == ()
        assert view.config.paused is False

    # ---------------------------------------------------------------- 2. acquire

    async def test_of_concurrent_acquirers_exactly_one_wins(self, cluster: ContractCluster) -> None:
        names = [f"m{i}" for i in range(5)]
        handles = [cluster.make(name) for name in names]
        results = await asyncio.gather(*(h.acquire_leader() for h in handles))
        assert results.count(True) == 1
        winner = names[results.index(True)]
        for handle in handles:
            assert await leader_name(handle) == winner

    async def test_acquire_fails_while_another_member_holds_the_leader_record(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        assert await a.acquire_leader()
        assert not await b.acquire_leader()
        assert await leader_name(b) == "a"

    async def test_the_leader_acquiring_again_keeps_the_record(
        self, cluster: ContractCluster
    ) -> None:
        a = cluster.make("a")
        assert await a.acquire_leader()
        assert await a.acquire_leader()
        assert await a.renew_leader()
        assert await leader_name(a) == "a"

    async def test_a_restarted_member_takes_its_own_leader_record_back(
        self, cluster: ContractCluster
    ) -> None:
        first, b = cluster.make("a"), cluster.make("b")
        assert await first.acquire_leader()
        await first.close()  # the agent dies; its lease runs out in ttl
        restarted = cluster.make("a")
        assert await restarted.acquire_leader()
        # Renewals by the new agent keep the record alive well past the old agent's lease.
        await keep_renewing(cluster, restarted, cluster.ttl_s + cluster.expiry_slack_s)
        assert await leader_name(b) == "a"
        assert not await b.acquire_leader()

    # ---------------------------------------------------------------- 3. renew

    async def test_the_holder_renews_and_a_non_holder_cannot(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        assert not await a.renew_leader()  # nobody holds it yet
        assert await a.acquire_leader()
        assert await a.renew_leader()
        assert not await b.renew_leader()
        assert await leader_name(b) == "a"

    async def test_renewing_keeps_the_leader_record_beyond_its_ttl(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        assert await a.acquire_leader()
        await keep_renewing(cluster, a, 2 * cluster.ttl_s)
        assert await leader_name(b) == "a"

    # ---------------------------------------------------------------- 4. release

    async def test_release_by_a_non_holder_changes_nothing(self, cluster: ContractCluster) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        assert await a.acquire_leader()
        before = (await b.get_cluster()).leader
        await b.release_leader()
        after = (await b.get_cluster()).leader
        assert after == before
        assert await a.renew_leader()

    async def test_release_by_the_holder_frees_the_record_and_wakes_other_members(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        assert await a.acquire_leader()
        assert await leader_name(b) == "a"
        waiter = asyncio.create_task(b.wait_for_change(60.0), name="contract-waiter")
        await a.release_leader()
        assert await asyncio.wait_for(waiter, cluster.wake_s) is True
        assert await leader_name(b) is None
        assert not await a.renew_leader()
        assert await b.acquire_leader()

    async def test_release_when_nobody_leads_does_nothing(self, cluster: ContractCluster) -> None:
        a = cluster.make("a")
        await a.release_leader()
        assert await leader_name(a) is None

    # ---------------------------------------------------------------- 5. expiry

    async def test_a_lapsed_leader_is_seen_gone_by_waiting_members_and_the_record_is_free(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        assert await a.acquire_leader()
        assert await leader_name(b) == "a"
        # A long timeout: the waiter must be woken by the expiry, not by its own timeout.
        waiter = asyncio.create_task(b.wait_for_change(600.0), name="contract-waiter")
        await let_expire(cluster)
        assert await asyncio.wait_for(waiter, cluster.wake_s) is True
        assert await leader_name(b) is None
        assert await b.acquire_leader()
        assert await leader_name(a) == "b"

    async def test_the_leader_record_survives_until_the_ttl_has_passed(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        assert await a.acquire_leader()
        await cluster.expire(cluster.ttl_s / 2)
        assert await leader_name(b) == "a"
        assert not await b.acquire_leader()

    async def test_renew_after_expiry_fails_and_never_recreates_the_record(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        assert await a.acquire_leader()
        await let_expire(cluster)
        assert not await a.renew_leader()
        assert not await a.renew_leader()
        assert await leader_name(b) is None
        # A member whose lease lapsed can still win the record again, on a fresh lease.
        assert await a.acquire_leader()
        assert await a.renew_leader()
        assert await leader_name(b) == "a"

    # ---------------------------------------------------------------- 6. member records

    async def test_published_member_records_are_visible_to_other_members(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        await a.publish_member(member("a", wal_lsn=42))
        await b.publish_member(member("b", wal_lsn=7))
        view = await b.get_cluster()
        assert [m.name for m in view.members] == ["a", "b"]
        seen = view.member("a")
        assert seen is not None
        assert seen.wal_lsn == 42
        assert seen.api_url == member("a").api_url
        assert seen.version != ""

    async def test_an_unchanged_member_record_is_not_rewritten_and_a_changed_one_is(
        self, cluster: ContractCluster
    ) -> None:
        a = cluster.make("a")
        await a.publish_member(member("a", wal_lsn=1))
        first = (await a.get_cluster()).member("a")
        await a.publish_member(member("a", wal_lsn=1))
        again = (await a.get_cluster()).member("a")
        await a.publish_member(member("a", wal_lsn=2))
        changed = (await a.get_cluster()).member("a")
        assert first is not None and again is not None and changed is not None
        assert again.version == first.version
        assert changed.version != first.version
        assert changed.wal_lsn == 2

    async def test_a_member_record_removed_behind_our_back_is_published_again(
        self, cluster: ContractCluster
    ) -> None:
        a = cluster.make("a")
        await a.publish_member(member("a"))
        await cluster.write_raw("members/a", None)
        assert (await a.get_cluster()).member("a") is None
        await a.publish_member(member("a"))
        assert (await a.get_cluster()).member("a") is not None

    async def test_publishing_keeps_a_member_record_alive_beyond_its_ttl(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        await a.publish_member(member("a"))
        await keep_publishing(cluster, a, 2 * cluster.ttl_s)
        assert (await b.get_cluster()).member("a") is not None

    async def test_a_member_record_disappears_when_its_lease_expires_and_that_wakes_others(
        self, cluster: ContractCluster
    ) -> None:
        if not cluster.member_records_expire:
            pytest.skip("member records of this backend do not expire")
        a, b = cluster.make("a"), cluster.make("b")
        await a.publish_member(member("a"))
        assert (await b.get_cluster()).member("a") is not None
        waiter = asyncio.create_task(b.wait_for_change(600.0), name="contract-waiter")
        await let_expire(cluster)
        assert await asyncio.wait_for(waiter, cluster.wake_s) is True
        assert (await b.get_cluster()).member("a") is None
        # Publishing again (on a new lease) brings it back.
        await a.publish_member(member("a"))
        assert (await b.get_cluster()).member("a") is not None

    # ---------------------------------------------------------------- 7. records (CAS)

    async def test_a_create_only_write_succeeds_once(self, cluster: ContractCluster) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        results = await asyncio.gather(
            a.write_record(RecordKind.INITIALIZE, "", expected_version=None),
            b.write_record(RecordKind.INITIALIZE, "", expected_version=None),
        )
        assert sorted(results) == [False, True]
        assert not await a.write_record(RecordKind.INITIALIZE, "x", expected_version=None)
        view = await a.get_cluster()
        assert view.initialize == ""
        assert view.initialize_version != ""

    async def test_compare_and_set_succeeds_at_the_current_version_and_fails_on_a_stale_one(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        assert await a.write_record(RecordKind.INITIALIZE, "", expected_version=None)
        v1 = (await a.get_cluster()).initialize_version
        assert await a.write_record(RecordKind.INITIALIZE, "7000", expected_version=v1)
        v2 = (await a.get_cluster()).initialize_version
        assert v2 != v1
        assert not await b.write_record(RecordKind.INITIALIZE, "6000", expected_version=v1)
        assert not await b.write_record(RecordKind.INITIALIZE, "6000", expected_version="bogus")
        view = await b.get_cluster()
        assert view.initialize == "7000"
        assert view.initialize_version == v2

    async def test_an_empty_expected_version_means_absent(self, cluster: ContractCluster) -> None:
        a = cluster.make("a")
        # "" is what the view reports for an absent record; it works as "create only".
        assert (await a.get_cluster()).history_version == ""
        entry = HistoryEntry(
            timeline=1, switch_lsn=100, reason="r", at=1.0, new_leader=MemberName("a")
        )
        assert await a.write_record(
            RecordKind.HISTORY, history_to_json((entry,)), expected_version=""
        )
        assert not await a.write_record(RecordKind.HISTORY, "[]", expected_version="")
        assert (await a.get_cluster()).history == (entry,)

    async def test_none_deletes_a_record_only_at_its_current_version(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        request = SwitchoverRequest(leader=MemberName("a"), candidate=MemberName("b"))
        assert await a.write_record(RecordKind.SWITCHOVER, request.to_json(), expected_version=None)
        v1 = (await a.get_cluster()).switchover
        assert v1 is not None
        assert v1.candidate == "b"
        assert await a.write_record(
            RecordKind.SWITCHOVER, request.to_json(), expected_version=v1.version
        )
        assert not await b.write_record(RecordKind.SWITCHOVER, None, expected_version=v1.version)
        current = (await b.get_cluster()).switchover
        assert current is not None
        assert await b.write_record(RecordKind.SWITCHOVER, None, expected_version=current.version)
        assert (await a.get_cluster()).switchover is None

    async def test_records_written_by_one_member_wake_and_reach_the_others(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        await b.get_cluster()
        waiter = asyncio.create_task(b.wait_for_change(60.0), name="contract-waiter")
        assert await a.write_record(RecordKind.CONFIG, '{"paused": true}', expected_version=None)
        assert await asyncio.wait_for(waiter, cluster.wake_s) is True
        view = await b.get_cluster()
        assert view.config.paused is True
        assert view.config.version != ""

    # ---------------------------------------------------------------- 8. wait_for_change

    async def test_wait_for_change_times_out_with_false_when_nothing_changes(
        self, cluster: ContractCluster
    ) -> None:
        a = cluster.make("a")
        await a.get_cluster()
        assert await a.wait_for_change(cluster.quiet_s) is False

    async def test_a_change_made_before_the_wait_wakes_it_at_once_and_only_once(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        await b.get_cluster()
        assert await a.acquire_leader()  # before b waits: b must still learn of it
        assert await b.wait_for_change(cluster.wake_s) is True
        assert await b.wait_for_change(cluster.quiet_s) is False

    async def test_a_read_in_between_does_not_swallow_a_change(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        await b.get_cluster()
        assert await b.wait_for_change(cluster.quiet_s) is False  # b watches from now on
        assert await a.acquire_leader()
        await asyncio.sleep(cluster.quiet_s)  # the change reaches b's watch meanwhile
        assert await leader_name(b) == "a"  # another task (the API) reads through b
        assert await b.wait_for_change(cluster.wake_s) is True

    async def test_own_writes_and_member_heartbeats_do_not_wake(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        await a.get_cluster()
        assert await a.acquire_leader()
        assert await a.write_record(RecordKind.CONFIG, "{}", expected_version=None)
        await a.publish_member(member("a"))
        await b.publish_member(member("b"))
        assert await a.wait_for_change(cluster.quiet_s * 4) is True  # a new member: wakes
        await b.publish_member(member("b", wal_lsn=99))  # a heartbeat: new WAL position only
        await asyncio.sleep(cluster.quiet_s)
        assert await a.wait_for_change(cluster.quiet_s) is False

    async def test_a_member_changing_role_or_state_wakes_the_others(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        await a.get_cluster()
        await b.publish_member(member("b"))
        assert await a.wait_for_change(cluster.quiet_s * 4) is True
        await b.publish_member(replace(member("b"), state=PgState.RUNNING, role=Role.PRIMARY))
        assert await a.wait_for_change(cluster.quiet_s * 4) is True

    async def test_own_writes_do_not_wake_a_wait_running_at_the_same_time(
        self, cluster: ContractCluster
    ) -> None:
        # The HA loop waits in one task while it writes in another; the watch may deliver a
        # write's event before the write itself returns.
        a = cluster.make("a")
        await a.get_cluster()
        assert await a.wait_for_change(cluster.quiet_s) is False  # a watches from now on
        waiter = asyncio.create_task(a.wait_for_change(4 * cluster.quiet_s), name="waiter")
        await asyncio.sleep(0)
        for round_ in range(5):
            assert await a.acquire_leader()
            assert await a.write_record(
                RecordKind.HISTORY, history_to_json(()), expected_version=None
            )
            current = (await a.get_cluster()).history_version
            assert await a.write_record(RecordKind.HISTORY, None, expected_version=current)
            await a.publish_member(member("a", wal_lsn=round_))
            await a.release_leader()
        assert await waiter is False

    async def test_the_leader_position_record_wakes_nobody(self, cluster: ContractCluster) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        await b.get_cluster()
        assert await b.wait_for_change(cluster.quiet_s) is False  # b watches from now on
        version: str | None = None
        for lsn in (100, 200, 300):
            position = LeaderPosition(leader=MemberName("a"), timeline=1, wal_lsn=lsn)
            assert await a.write_record(
                RecordKind.POSITION, position.to_json(), expected_version=version
            )
            version = (await a.get_cluster()).position_version
        await asyncio.sleep(cluster.quiet_s)
        assert await b.wait_for_change(cluster.quiet_s) is False
        seen = (await b.get_cluster()).position
        assert seen is not None
        assert (seen.leader, seen.timeline, seen.wal_lsn) == ("a", 1, 300)

    # ---------------------------------------------------------------- 9. records outlive leases

    async def test_the_position_record_outlives_the_leader_its_lease_and_its_agent(
        self, cluster: ContractCluster
    ) -> None:
        a = cluster.make("a")
        assert await a.acquire_leader()
        await a.publish_member(member("a"))
        position = LeaderPosition(leader=MemberName("a"), timeline=3, wal_lsn=7 << 32)
        assert await a.write_record(RecordKind.POSITION, position.to_json(), expected_version=None)
        await a.close()  # the leader's agent is gone; nothing renews its lease
        await let_expire(cluster)
        restarted = cluster.make("b")  # a member's agent that starts after all that
        await restarted.get_cluster()
        await let_expire(cluster)  # an observer times expiry from when it first saw the lease
        view = await restarted.get_cluster()
        assert view.leader is None
        if cluster.member_records_expire:
            assert view.member("a") is None
        assert view.position is not None
        assert (view.position.leader, view.position.timeline) == ("a", 3)
        assert view.position.wal_lsn == 7 << 32
        assert view.position_version == view.position.version != ""

    # ---------------------------------------------------------------- corrupt values

    async def test_corrupt_values_under_our_keys_read_as_absent_and_are_logged(
        self, cluster: ContractCluster
    ) -> None:
        a, b = cluster.make("a"), cluster.make("b")
        await a.publish_member(member("a"))
        garbage = {
            "leader": b"\xff\xfe",
            "members/x": b"{not json",
            "members/y": b'{"role": "emperor"}',
            "members/z": b"\x80\x81",
            "config": b'{"paused": "yes"}',
            "switchover": b"[]",
            "history": b'{"timeline": 1}',
        }
        for key, value in garbage.items():
            await cluster.write_raw(key, value)
        with capture_logs() as logs:
            view = await b.get_cluster()
        assert view.leader is None
        assert [m.name for m in view.members] == ["a"]
        assert view.config.paused is False
        assert view.switchover is None
        assert view.history == ()
        problems = [e for e in logs if e["event"] == "dcs_record_corrupt"]
        assert len(problems) == len(garbage)
        assert all(isinstance(e["problem"], str) and e["problem"] for e in problems)
        # Nothing raises on top of garbage either; the garbage leader key is not ours.
        assert not await b.acquire_leader()
        assert not await b.renew_leader()
        await b.release_leader()

    # ---------------------------------------------------------------- unavailable

    async def test_an_unreachable_store_raises_dcs_unavailable_within_the_deadline(
        self, cluster: ContractCluster
    ) -> None:
        handle = await cluster.make_unreachable("a")
        loop = asyncio.get_running_loop()
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "get_cluster": handle.get_cluster,
            "acquire_leader": handle.acquire_leader,
            "renew_leader": handle.renew_leader,
            "release_leader": handle.release_leader,
            "publish_member": lambda: handle.publish_member(member("a")),
            "write_record": lambda: handle.write_record(
                RecordKind.CONFIG, "{}", expected_version=None
            ),
        }
        # Generous: the point is "bounded by the deadline", not scheduling precision.
        grace_s = 0.5 + cluster.deadline_s / 2
        for name, call in calls.items():
            started = loop.time()
            try:
                result = await asyncio.wait_for(call(), cluster.deadline_s + 10)
            except DcsUnavailable:
                pass
            else:
                # A handle that never held a lease knows it is not the leader without asking.
                assert name == "renew_leader" and result is False, f"{name} did not raise"
            took = loop.time() - started
            assert took <= cluster.deadline_s + grace_s, f"{name} took {took:.2f} s"
        # Watch trouble never raises: the wait just times out.
        assert await handle.wait_for_change(cluster.quiet_s) is False
        async with asyncio.timeout(cluster.deadline_s + grace_s):
            await handle.close()
