"""The etcd client's hedged requests (agent/dcs/etcd_transport.py, `_call_with_failover`), on a
fake transport and fake time (tests/unit/fakes/virtual_time.py): each endpoint answers after
its own latency, never (a black hole), or refuses at once.

Chaos finding 11: with every endpoint equally slow (a slow link from the primary to etcd), the
old failover gave the first endpoint half of the deadline and cancelled it there, so a request
whose round trip was above ~0.45 x the deadline never succeeded, and a primary whose renewals
all reached etcd fenced itself.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.dcs.etcd_client import EtcdClient, EtcdUnavailable
from agent.http.client import HttpError
from tests.unit.fakes.virtual_time import run_virtual

ENDPOINTS = ("http://e1:2379", "http://e2:2379", "http://e3:2379")
TIMEOUT_S = 6.3  # 0.9 x retry_timeout_s 7, the slow-network chaos clusters' request deadline
BLACK_HOLE = -1.0
REFUSED = -2.0


@dataclass(slots=True)
class FakeEtcd:
    """Answers every request (a range, a keepalive) after the endpoint's latency."""

    clock: FakeClock
    latency_s: dict[str, float]
    sent: list[tuple[float, str, str]] = field(default_factory=list)  # (when, endpoint, path)
    answered: list[tuple[float, str]] = field(default_factory=list)  # (when, endpoint)
    cancelled: list[str] = field(default_factory=list)

    async def post(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, Any]:
        endpoint, _, path = url.partition("/v3")
        self.sent.append((self.clock.monotonic(), endpoint, f"/v3{path}"))
        latency = self.latency_s[endpoint]
        if latency == REFUSED:
            raise HttpError(f"{endpoint}: connection refused")
        try:
            if latency == BLACK_HOLE:
                await asyncio.Event().wait()
            await asyncio.sleep(latency)
        except asyncio.CancelledError:
            self.cancelled.append(endpoint)
            raise
        self.answered.append((self.clock.monotonic(), endpoint))
        if path == "/lease/keepalive":
            return 200, {"result": {"ID": body["ID"], "TTL": "20"}}
        return 200, {"header": {"revision": "7"}, "kvs": []}


def client(fake: FakeEtcd) -> EtcdClient:
    return EtcdClient(ENDPOINTS, timeout_s=TIMEOUT_S, post=fake.post)


def endpoints_with(*latencies: float) -> dict[str, float]:
    return dict(zip(ENDPOINTS, latencies, strict=True))


def test_a_request_slower_than_half_the_deadline_on_every_endpoint_still_answers() -> None:
    clock = FakeClock()
    fake = FakeEtcd(clock, endpoints_with(5.0, 5.0, 5.0))

    async def main() -> float:
        etcd = client(fake)
        start = clock.monotonic()
        assert await etcd.lease_keepalive(42) == 20
        assert (await etcd.range(b"/k")).revision == 7
        return clock.monotonic() - start

    took = run_virtual(main(), clock)
    # Each call answered by its first request, 5 s after it was sent: the slow attempt was
    # not abandoned (the old failover cancelled it at 3.15 s and raised EtcdUnavailable).
    assert took == pytest.approx(10.0)
    assert [e for _, e in fake.answered] == [ENDPOINTS[0], ENDPOINTS[0]]


def test_a_slow_endpoint_is_hedged_by_the_next_one_and_the_duplicates_are_cancelled() -> None:
    clock = FakeClock()
    fake = FakeEtcd(clock, endpoints_with(5.0, 5.0, 5.0))

    async def main() -> None:
        start = clock.monotonic()
        await client(fake).lease_keepalive(42)
        sent = [(round(t - start, 3), e) for t, e, _ in fake.sent]
        # A quarter of the deadline alone, then the next endpoint too, the third, and the
        # first again (the rotation goes on until an answer or the deadline).
        hedge = TIMEOUT_S / 4
        assert sent == [
            (0.0, ENDPOINTS[0]),
            (round(hedge, 3), ENDPOINTS[1]),
            (round(2 * hedge, 3), ENDPOINTS[2]),
            (round(3 * hedge, 3), ENDPOINTS[0]),
        ]
        await asyncio.sleep(0)
        assert sorted(fake.cancelled) == [ENDPOINTS[0], ENDPOINTS[1], ENDPOINTS[2]]

    run_virtual(main(), clock)


def test_a_write_is_copied_only_when_the_old_failover_copied_it_and_its_slow_answer_counts() -> (
    None
):
    """A request that may change the store keeps the old schedule (the next endpoint at half
    of what remains, once each): no more copies than before, but the first is not cancelled."""
    clock = FakeClock()
    fake = FakeEtcd(clock, endpoints_with(5.0, 5.0, 5.0))

    async def main() -> None:
        start = clock.monotonic()
        assert await client(fake).put(b"/k", b"v") == 7
        assert clock.monotonic() - start == pytest.approx(5.0)
        sent = [(round(t - start, 3), e) for t, e, _ in fake.sent]
        assert sent == [
            (0.0, ENDPOINTS[0]),
            (round(TIMEOUT_S / 2, 3), ENDPOINTS[1]),
            (round(TIMEOUT_S * 3 / 4, 3), ENDPOINTS[2]),
        ]

    run_virtual(main(), clock)


def test_a_black_hole_costs_a_quarter_of_the_deadline_and_the_answering_endpoint_is_kept() -> None:
    clock = FakeClock()
    fake = FakeEtcd(clock, endpoints_with(BLACK_HOLE, 0.01, 0.01))

    async def main() -> tuple[float, float]:
        etcd = client(fake)
        start = clock.monotonic()
        await etcd.range(b"/k")
        first = clock.monotonic() - start
        start = clock.monotonic()
        await etcd.range(b"/k")
        return first, clock.monotonic() - start

    first, second = run_virtual(main(), clock)
    assert first == pytest.approx(TIMEOUT_S / 4 + 0.01)
    assert second == pytest.approx(0.01)  # e2 answered last: asked first now
    assert fake.sent[-1][1] == ENDPOINTS[1]


def test_a_request_that_stalls_where_it_was_sent_is_sent_again_and_answered() -> None:
    """A member waiting for its cluster to elect a leader holds a request until etcd's own
    timeout; the same request sent after the election is answered at once."""
    clock = FakeClock()
    fake = FakeEtcd(clock, {ENDPOINTS[0]: BLACK_HOLE})

    async def main() -> float:
        etcd = EtcdClient(ENDPOINTS[:1], timeout_s=TIMEOUT_S, post=fake.post)
        start = clock.monotonic()
        asyncio.get_running_loop().call_later(1.0, fake.latency_s.update, {ENDPOINTS[0]: 0.01})
        await etcd.range(b"/k")
        return clock.monotonic() - start

    # The first copy stalls; the second, sent after the "election", is answered.
    assert run_virtual(main(), clock) == pytest.approx(TIMEOUT_S / 4 + 0.01)
    assert [e for _, e, _ in fake.sent] == [ENDPOINTS[0], ENDPOINTS[0]]


def test_a_refusing_endpoint_hands_over_to_the_next_at_once() -> None:
    clock = FakeClock()
    fake = FakeEtcd(clock, endpoints_with(REFUSED, REFUSED, 0.02))

    async def main() -> float:
        start = clock.monotonic()
        await client(fake).range(b"/k")
        return clock.monotonic() - start

    assert run_virtual(main(), clock) == pytest.approx(0.02)


def test_a_call_that_no_endpoint_answers_in_time_fails_at_its_deadline_naming_them() -> None:
    clock = FakeClock()
    fake = FakeEtcd(clock, endpoints_with(7.0, BLACK_HOLE, REFUSED))

    async def main() -> tuple[float, str]:
        start = clock.monotonic()
        with pytest.raises(EtcdUnavailable) as raised:
            await client(fake).lease_keepalive(42)
        return clock.monotonic() - start, str(raised.value)

    took, message = run_virtual(main(), clock)
    assert took == pytest.approx(TIMEOUT_S)
    for endpoint in ENDPOINTS:
        assert endpoint in message
    assert "connection refused" in message
