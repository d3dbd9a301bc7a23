"""The etcd v3 gateway client against real etcd 3.4 processes: KV, txn, leases, watch."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from agent.dcs.etcd_client import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteOp,
    EtcdClient,
    EtcdCompacted,
    EtcdLeaseNotFound,
    EtcdUnavailable,
    EventType,
    PutOp,
    RangeOp,
    WatchEvent,
    prefix_end,
)
from tests.support.etcd import BlackHole, EtcdCluster, TcpProxy
from tests.support.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TIMEOUT_S = 1.0
SLACK_S = 0.5


@pytest.fixture
def prefix() -> bytes:
    """A key prefix of this test's own, so tests sharing a cluster do not see each other."""
    return f"/test/{uuid.uuid4().hex[:10]}/".encode()


@pytest.fixture
async def client(etcd1: EtcdCluster) -> AsyncIterator[EtcdClient]:
    etcd_client = EtcdClient(etcd1.endpoints, timeout_s=TIMEOUT_S)
    yield etcd_client
    await etcd_client.close()


class Collector:
    """Runs a watch in a named task and gathers its events."""

    def __init__(self, client: EtcdClient, key: bytes, start_revision: int) -> None:
        self.events: list[WatchEvent] = []
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(
            self._run(client, key, start_revision), name="test-watch-collector"
        )

    async def _run(self, client: EtcdClient, key: bytes, start_revision: int) -> None:
        try:
            async for batch in client.watch(key, start_revision=start_revision):
                self.events.extend(batch.events)
                self._changed.set()
        except Exception as exc:
            self.error = exc
            self._changed.set()

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[WatchEvent]:
        async with asyncio.timeout(timeout_s):
            while len(self.events) < count and self.error is None:
                self._changed.clear()
                await self._changed.wait()
        if self.error is not None:
            raise self.error
        return self.events

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def assert_exactly_once(events: list[WatchEvent], keys: list[bytes]) -> None:
    assert [e.kv.key for e in events] == keys
    revisions = [e.kv.mod_revision for e in events]
    assert revisions == sorted(set(revisions)), "events repeated or out of order"


async def next_revision(client: EtcdClient) -> int:
    return (await client.range(b"/nothing-here")).revision + 1


# -- KV --------------------------------------------------------------------------------------


def test_prefix_end_covers_every_key_under_the_prefix() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\x00"


async def test_put_range_and_delete_round_trip_keys_and_values(
    client: EtcdClient, prefix: bytes
) -> None:
    revision = await client.put(prefix + b"a", b"\x00binary\xff")
    got = await client.range(prefix + b"a")
    assert got.revision >= revision
    (kv,) = got.kvs
    assert (kv.key, kv.value, kv.version, kv.lease) == (prefix + b"a", b"\x00binary\xff", 1, 0)
    assert kv.create_revision == kv.mod_revision == revision

    await client.put(prefix + b"a", b"")
    (kv,) = (await client.range(prefix + b"a", serializable=True)).kvs
    assert (kv.value, kv.version, kv.create_revision) == (b"", 2, revision)

    assert await client.delete(prefix + b"a") == 1
    assert (await client.range(prefix + b"a")).kvs == ()
    assert await client.delete(prefix + b"a") == 0


async def test_prefix_range_and_delete_cover_only_keys_under_the_prefix(
    client: EtcdClient, prefix: bytes
) -> None:
    for name in (b"x/1", b"x/2", b"y"):
        await client.put(prefix + name, name)
    got = await client.range(prefix + b"x/", prefix=True)
    assert [kv.key for kv in got.kvs] == [prefix + b"x/1", prefix + b"x/2"]
    assert await client.delete(prefix + b"x/", prefix=True) == 2
    assert [kv.key for kv in (await client.range(prefix, prefix=True)).kvs] == [prefix + b"y"]


# -- txn -------------------------------------------------------------------------------------


async def test_txn_create_compare_lets_only_the_first_creator_win(
    client: EtcdClient, prefix: bytes
) -> None:
    key = prefix + b"leader"
    absent = Compare(key=key, target=CompareTarget.CREATE, result=CompareResult.EQUAL, value=0)
    first = await client.txn([absent], [PutOp(key=key, value=b"me")], [RangeOp(key=key)])
    assert first.succeeded
    assert first.ranges == ()
    second = await client.txn([absent], [PutOp(key=key, value=b"you")], [RangeOp(key=key)])
    assert not second.succeeded
    (held,) = second.ranges
    assert [kv.value for kv in held.kvs] == [b"me"]
    assert held.revision == second.revision == first.revision


async def test_txn_mod_value_version_and_lease_compares_pick_the_right_branch(
    client: EtcdClient, prefix: bytes
) -> None:
    key = prefix + b"k"
    lease_id, _ = await client.lease_grant(30)
    revision = await client.put(key, b"v1", lease=lease_id)

    def cmp(target: CompareTarget, result: CompareResult, value: int | bytes) -> Compare:
        return Compare(key=key, target=target, result=result, value=value)

    holds = [
        cmp(CompareTarget.MOD, CompareResult.EQUAL, revision),
        cmp(CompareTarget.VALUE, CompareResult.EQUAL, b"v1"),
        cmp(CompareTarget.VERSION, CompareResult.EQUAL, 1),
        cmp(CompareTarget.LEASE, CompareResult.EQUAL, lease_id),
        cmp(CompareTarget.MOD, CompareResult.LESS, revision + 1),
        cmp(CompareTarget.CREATE, CompareResult.GREATER, 0),
        cmp(CompareTarget.VALUE, CompareResult.NOT_EQUAL, b"v2"),
    ]
    for compare in holds:
        result = await client.txn([compare], [RangeOp(key=key)], [])
        assert result.succeeded, compare
        assert [kv.value for kv in result.ranges[0].kvs] == [b"v1"]

    fails = [
        cmp(CompareTarget.MOD, CompareResult.EQUAL, revision - 1),
        cmp(CompareTarget.VALUE, CompareResult.EQUAL, b"other"),
        cmp(CompareTarget.LEASE, CompareResult.EQUAL, 0),
        cmp(CompareTarget.VERSION, CompareResult.GREATER, 1),
    ]
    for compare in fails:
        result = await client.txn(
            [compare], [DeleteOp(key=key)], [RangeOp(key=key), RangeOp(key=prefix + b"none")]
        )
        assert not result.succeeded, compare
        assert [len(r.kvs) for r in result.ranges] == [1, 0]

    # The success branch ran for real: the key is gone.
    both = [holds[0], holds[1]]
    deleted = await client.txn(both, [DeleteOp(key=key)], [])
    assert deleted.succeeded
    assert (await client.range(key)).kvs == ()
    await client.lease_revoke(lease_id)


async def test_txn_rejects_a_compare_whose_value_type_does_not_fit_the_target(
    client: EtcdClient, prefix: bytes
) -> None:
    bad = Compare(key=prefix, target=CompareTarget.VALUE, result=CompareResult.EQUAL, value=1)
    with pytest.raises(TypeError):
        await client.txn([bad], [])


# -- leases ----------------------------------------------------------------------------------


async def test_lease_keepalive_renews_and_revoke_deletes_the_leased_keys(
    client: EtcdClient, prefix: bytes
) -> None:
    lease_id, granted = await client.lease_grant(5)
    assert granted == 5
    await client.put(prefix + b"member", b"up", lease=lease_id)
    assert await client.lease_keepalive(lease_id) == 5

    await client.lease_revoke(lease_id)
    assert (await client.range(prefix + b"member")).kvs == ()
    assert await client.lease_keepalive(lease_id) == 0
    await client.lease_revoke(lease_id)  # already gone: not an error
    with pytest.raises(EtcdLeaseNotFound):
        await client.put(prefix + b"member", b"up", lease=lease_id)


async def test_lease_expiry_deletes_its_key_and_the_watch_sees_a_delete(
    client: EtcdClient, prefix: bytes
) -> None:
    lease_id, granted = await client.lease_grant(1)
    assert 1 <= granted <= 2  # etcd may raise a ttl to its minimum
    revision = await client.put(prefix + b"leader", b"me", lease=lease_id)
    collector = Collector(client, prefix, revision)
    try:
        events = await collector.wait_for(2, timeout_s=granted + 4)
    finally:
        await collector.stop()
    assert [(e.type, e.kv.key) for e in events] == [
        (EventType.PUT, prefix + b"leader"),
        (EventType.DELETE, prefix + b"leader"),
    ]
    assert events[1].kv.mod_revision > revision
    assert await client.lease_keepalive(lease_id) == 0


# -- watch -----------------------------------------------------------------------------------


async def test_watch_sees_puts_and_deletes_in_order_from_the_start_revision(
    client: EtcdClient, prefix: bytes
) -> None:
    before = await client.put(prefix + b"old", b"0")
    start = await client.put(prefix + b"a", b"1")
    collector = Collector(client, prefix, start)
    try:
        await client.put(prefix + b"a", b"2")
        await client.delete(prefix + b"a")
        await client.put(b"/elsewhere/" + prefix, b"not watched")
        events = await collector.wait_for(3)
        await asyncio.sleep(0.1)  # nothing else should arrive
    finally:
        await collector.stop()
    assert before < start
    assert [(e.type, e.kv.value) for e in collector.events] == [
        (EventType.PUT, b"1"),
        (EventType.PUT, b"2"),
        (EventType.DELETE, b""),
    ]
    assert events[2].kv.key == prefix + b"a"


async def test_watch_from_a_compacted_revision_raises_etcd_compacted(
    client: EtcdClient, etcd1: EtcdCluster, prefix: bytes
) -> None:
    first = await client.put(prefix + b"a", b"1")
    latest = await client.put(prefix + b"a", b"2")
    etcd1.etcdctl("compact", str(latest))
    with pytest.raises(EtcdCompacted) as raised:
        async with asyncio.timeout(5):
            async for _ in client.watch(prefix, start_revision=first):
                pass
    assert raised.value.compact_revision == latest


async def test_requests_share_one_kept_alive_connection_and_outlive_its_reset(
    etcd1: EtcdCluster, prefix: bytes
) -> None:
    """The client's requests reuse one connection (agent/http/client.py's pool: no TCP
    connect per request); a kept connection reset while idle is replaced, not an error."""
    port = int(etcd1.endpoints[0].rsplit(":", 1)[1])
    async with TcpProxy(port) as proxy:
        client = EtcdClient([proxy.url], timeout_s=TIMEOUT_S)
        try:
            for i in range(10):
                await client.put(prefix + b"k", str(i).encode())
                assert (await client.range(prefix + b"k")).kvs[0].value == str(i).encode()
            assert proxy.connections == 1  # 20 requests
            proxy.cut()
            await asyncio.sleep(0.1)  # the reset reaches the idle connection
            await client.put(prefix + b"k", b"after")
            assert (await client.range(prefix + b"k")).kvs[0].value == b"after"
            assert proxy.connections == 2
        finally:
            await client.close()


async def test_watch_resumes_without_loss_or_repeats_after_connections_are_cut(
    etcd1: EtcdCluster, prefix: bytes
) -> None:
    port = int(etcd1.endpoints[0].rsplit(":", 1)[1])
    writer = EtcdClient(etcd1.endpoints, timeout_s=TIMEOUT_S)
    async with TcpProxy(port) as proxy:
        watcher = EtcdClient([proxy.url], timeout_s=TIMEOUT_S)
        collector = Collector(watcher, prefix, await next_revision(writer))
        keys: list[bytes] = []
        try:
            for round_ in range(3):
                for i in range(5):
                    keys.append(prefix + f"{round_}/{i}".encode())
                    await writer.put(keys[-1], b"x")
                await collector.wait_for(len(keys))
                proxy.cut()  # the next writes happen while the watch reconnects
            for i in range(5):
                keys.append(prefix + f"last/{i}".encode())
                await writer.put(keys[-1], b"x")
            await collector.wait_for(len(keys))
            await asyncio.sleep(0.1)
        finally:
            await collector.stop()
            await watcher.close()
            await writer.close()
    assert_exactly_once(collector.events, keys)
    assert proxy.connections >= 4


async def test_watch_recreates_its_stream_periodically_without_loss_or_repeats(
    etcd1: EtcdCluster, prefix: bytes
) -> None:
    port = int(etcd1.endpoints[0].rsplit(":", 1)[1])
    writer = EtcdClient(etcd1.endpoints, timeout_s=TIMEOUT_S)
    async with TcpProxy(port) as proxy:
        watcher = EtcdClient([proxy.url], timeout_s=TIMEOUT_S, watch_refresh_s=0.2)
        collector = Collector(watcher, prefix, await next_revision(writer))
        keys = [prefix + f"{i:02}".encode() for i in range(20)]
        try:
            for key in keys:
                await writer.put(key, b"x")
                await asyncio.sleep(0.04)
            await collector.wait_for(len(keys))
            await asyncio.sleep(0.1)
        finally:
            await collector.stop()
            await watcher.close()
            await writer.close()
    assert_exactly_once(collector.events, keys)
    assert proxy.connections >= 3  # one stream per refresh period


async def test_watch_recovers_from_a_silently_dead_connection_at_the_next_refresh(
    etcd1: EtcdCluster, prefix: bytes
) -> None:
    port = int(etcd1.endpoints[0].rsplit(":", 1)[1])
    writer = EtcdClient(etcd1.endpoints, timeout_s=TIMEOUT_S)
    async with TcpProxy(port) as proxy:
        watcher = EtcdClient([proxy.url], timeout_s=TIMEOUT_S, watch_refresh_s=0.5)
        collector = Collector(watcher, prefix, await next_revision(writer))
        keys = [prefix + f"{i}".encode() for i in range(6)]
        try:
            for key in keys[:3]:
                await writer.put(key, b"x")
            await collector.wait_for(3)
            proxy.freeze()  # the watch's connection looks alive but carries nothing more
            for key in keys[3:]:
                await writer.put(key, b"x")
            await collector.wait_for(6, timeout_s=3)
            await asyncio.sleep(0.1)
        finally:
            await collector.stop()
            await watcher.close()
            await writer.close()
    assert_exactly_once(collector.events, keys)


async def test_cancelling_the_watch_consumer_closes_its_connection(
    etcd1: EtcdCluster, prefix: bytes
) -> None:
    port = int(etcd1.endpoints[0].rsplit(":", 1)[1])
    async with TcpProxy(port) as proxy:
        watcher = EtcdClient([proxy.url], timeout_s=TIMEOUT_S)
        writer = EtcdClient(etcd1.endpoints, timeout_s=TIMEOUT_S)
        try:
            collector = Collector(watcher, prefix, await next_revision(writer))
            await writer.put(prefix + b"a", b"1")
            await collector.wait_for(1)
            assert proxy.open_connections == 1
            await collector.stop()
            async with asyncio.timeout(2):
                while proxy.open_connections > 0:
                    await asyncio.sleep(0.02)
        finally:
            await watcher.close()
            await writer.close()


async def test_watch_moves_past_a_black_hole_endpoint(etcd1: EtcdCluster, prefix: bytes) -> None:
    async with BlackHole() as hole:
        watcher = EtcdClient([hole.url, etcd1.endpoints[0]], timeout_s=0.5)
        writer = EtcdClient(etcd1.endpoints, timeout_s=TIMEOUT_S)
        collector = Collector(watcher, prefix, await next_revision(writer))
        try:
            await writer.put(prefix + b"a", b"1")
            events = await collector.wait_for(1, timeout_s=3)
        finally:
            await collector.stop()
            await watcher.close()
            await writer.close()
    assert [e.kv.key for e in events] == [prefix + b"a"]


async def test_watch_keeps_retrying_while_no_endpoint_is_reachable() -> None:
    client = EtcdClient([f"http://127.0.0.1:{free_port()}"], timeout_s=0.2)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                async for _ in client.watch(b"/x/", start_revision=1):
                    pass
    finally:
        await client.close()


async def test_watch_follows_to_another_member_when_its_member_is_killed(
    etcd3: EtcdCluster, prefix: bytes
) -> None:
    watcher = EtcdClient(etcd3.endpoints, timeout_s=TIMEOUT_S)  # connects to member 0 first
    writer = EtcdClient(etcd3.endpoints[1:], timeout_s=3.0)
    collector = Collector(watcher, prefix, await next_revision(writer))
    keys = [prefix + f"{i:02}".encode() for i in range(20)]
    try:
        for key in keys[:10]:
            await writer.put(key, b"x")
        await collector.wait_for(10)
        etcd3.kill(0)
        for key in keys[10:]:
            await writer.put(key, b"x")
        await collector.wait_for(20, timeout_s=10)
        await asyncio.sleep(0.1)
    finally:
        await collector.stop()
        await watcher.close()
        await writer.close()
    assert_exactly_once(collector.events, keys)


# -- availability ----------------------------------------------------------------------------


async def test_calls_keep_working_with_one_member_of_three_killed(
    etcd3: EtcdCluster, prefix: bytes
) -> None:
    etcd3.kill(0)
    client = EtcdClient(etcd3.endpoints, timeout_s=3.0)
    try:
        await client.put(prefix + b"a", b"1")
        assert [kv.value for kv in (await client.range(prefix + b"a")).kvs] == [b"1"]
        lease_id, _ = await client.lease_grant(5)
        assert await client.lease_keepalive(lease_id) > 0
    finally:
        await client.close()


async def test_calls_raise_unavailable_within_the_timeout_with_two_members_of_three_killed(
    etcd3: EtcdCluster, prefix: bytes
) -> None:
    etcd3.kill(1)
    etcd3.kill(2)
    client = EtcdClient(etcd3.endpoints, timeout_s=TIMEOUT_S)
    try:
        for call in (
            lambda: client.put(prefix + b"a", b"1"),
            lambda: client.range(prefix + b"a"),
            lambda: client.lease_grant(5),
        ):
            started = time.monotonic()
            with pytest.raises(EtcdUnavailable) as raised:
                await call()
            assert time.monotonic() - started < TIMEOUT_S + SLACK_S
        # The survivor says at once that it has no leader (we ask it to: `hasleader`) rather
        # than letting each linearizable request run into the deadline.
        assert "no leader" in str(raised.value)
    finally:
        await client.close()


async def test_calls_raise_unavailable_within_the_timeout_on_a_closed_port() -> None:
    client = EtcdClient([f"http://127.0.0.1:{free_port()}"], timeout_s=TIMEOUT_S)
    try:
        started = time.monotonic()
        with pytest.raises(EtcdUnavailable):
            await client.range(b"/a")
        assert time.monotonic() - started < TIMEOUT_S + SLACK_S
    finally:
        await client.close()


async def test_calls_raise_unavailable_within_the_timeout_on_a_black_hole() -> None:
    async with BlackHole() as hole:
        client = EtcdClient([hole.url, hole.url], timeout_s=TIMEOUT_S)
        try:
            started = time.monotonic()
            with pytest.raises(EtcdUnavailable):
                await client.put(b"/a", b"1")
            assert TIMEOUT_S - 0.05 < time.monotonic() - started < TIMEOUT_S + SLACK_S
        finally:
            await client.close()


async def test_client_fails_over_past_dead_endpoints_and_remembers_the_live_one(
    etcd1: EtcdCluster, prefix: bytes
) -> None:
    async with BlackHole() as hole:
        endpoints = [hole.url, f"http://127.0.0.1:{free_port()}", etcd1.endpoints[0]]
        client = EtcdClient(endpoints, timeout_s=2.0)
        try:
            started = time.monotonic()
            await client.put(prefix + b"a", b"1")
            assert time.monotonic() - started < 2.0
            started = time.monotonic()
            for _ in range(3):
                await client.range(prefix + b"a")
            assert time.monotonic() - started < 0.3  # no more waiting on the black hole
        finally:
            await client.close()


async def test_client_is_constructed_while_etcd_is_down_and_works_once_it_is_up(
    etcd1: EtcdCluster, prefix: bytes
) -> None:
    etcd1.kill(0)
    client = EtcdClient(etcd1.endpoints, timeout_s=TIMEOUT_S)  # no I/O, no error
    try:
        with pytest.raises(EtcdUnavailable):
            await client.range(prefix)
        etcd1.restart(0)
        await client.put(prefix + b"a", b"1")
    finally:
        await client.close()
