"""More of the Kubernetes backend's throttling and lock-race behaviour (issue 15), each with a
test of its own: the one-cycle limit on an acquire that writes over its read, and the
doubling of a leaderless read's wait while the server keeps refusing it.

Members of one cluster against the in-process test API server, on a fake clock shared by
the handles (what the backend times: the read's age, the Retry-After, the pause), so that
the boundaries are checked exactly and nothing sleeps for seconds; the server, its watches
and the requests are real.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.clock import FakeClock
from agent.config import LockKind
from agent.dcs.base import DcsUnavailable
from agent.dcs.kubernetes import KubernetesDcs
from agent.dcs.kubernetes.api import Throttled
from agent.dcs.kubernetes.throttle import RESEND_JITTER, URGENT_SENDS
from tests.integration.k8s.test_kubernetes_dcs import (
    APP_LABELS,
    NAMESPACE,
    KubeContractCluster,
    contract_cluster,
    url_factory,
)
from tests.k8s_apiserver import Fault, FaultMode, KubeApiServer

pytestmark = pytest.mark.integration

TTL_S, LOOP_S, TIMEOUT_S = 6.0, 1.0, 2.0


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[KubeContractCluster]:
    async with contract_cluster(tmp_path, LockKind.LEASE) as c:
        yield c


@pytest.fixture(params=list(LockKind), ids=[kind.value for kind in LockKind])
async def any_lock(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[KubeContractCluster]:
    async with contract_cluster(tmp_path, request.param) as c:
        yield c


def handle(cluster: KubeContractCluster, name: str, clock: FakeClock) -> KubernetesDcs:
    cluster.ensure_pod(name)
    dcs = KubernetesDcs(
        client_factory=url_factory(cluster.server.url),
        namespace=NAMESPACE,
        cluster=cluster.cluster,
        member_name=name,
        ttl_s=TTL_S,
        timeout_s=TIMEOUT_S,
        loop_wait_s=LOOP_S,
        lock=cluster.lock,
        labels=APP_LABELS,
        clock=clock,
    )
    cluster.handles.append(dcs)
    return dcs


def sent(server: KubeApiServer, method: str, what: str) -> list[str]:
    """The requests (not watches) of `method` whose path contains `what`, since the audit
    was last cleared."""
    return [
        r.path
        for r in server.audit.records
        if r.method == method and r.verb != "watch" and what in r.path
    ]


async def test_an_acquire_more_than_a_cycle_after_its_leaderless_read_reads_the_lock_again(
    any_lock: KubeContractCluster,
) -> None:
    """An acquire writes over the lock objects its leaderless read returned only within
    `loop_wait` of that read (hkube2, test_kubernetes_throttling.py); older, the read may
    be out of date and the acquire reads the locks again. Here a read before any lock object
    existed: meanwhile b took the lock and gave it back, and a, acquiring more than a cycle
    later, must find it free and take it. Writing over its old read (no object: a create)
    it would be refused (409, the object exists) and lose a race nobody else ran."""
    server, clock = any_lock.server, FakeClock()
    a, b = handle(any_lock, "a", clock), handle(any_lock, "b", clock)
    assert (await a.get_cluster()).leader is None  # no lock object yet
    assert await b.acquire_leader()
    await b.release_leader()  # the lock objects exist, held by nobody
    clock.advance(LOOP_S + 0.01)
    server.audit.clear()
    assert await a.acquire_leader(), "a lost to a read older than a cycle"
    reads = [r.path for r in server.audit.records if r.method == "GET"]
    creates = [r.path for r in server.audit.records if r.method == "POST"]
    for holder in a._holders:
        assert holder.lock.path() in reads, f"{holder.lock.name} was not read again"
        assert holder.lock.path(named=False) not in creates


async def test_a_leaderless_read_refused_again_and_again_waits_twice_as_long_each_time(
    cluster: KubeContractCluster,
) -> None:
    """A view with no live leader is read from the server after the last 429's
    Retry-After (throttle.py), not after the whole pause; each further 429 doubles that
    wait, up to 8 times the Retry-After, so that a fleet of leaderless clusters does not
    re-read every cycle into a bucket the remaining leaders' renewals need. A read that goes
    through takes back a doubling for each of its requests (a pod list and two gets): after
    three refusals, the next 429's wait is the bare Retry-After again.

    Every pod list is refused (Retry-After 1); a member with no leader in its view asks the
    server as soon as its wait is over, and never before."""
    server, clock = cluster.server, FakeClock()
    dcs = handle(cluster, "a", clock)
    await dcs.get_cluster()
    for _ in range(50):  # until the watches run: their caches hold a view with no leader
        await dcs.wait_for_change(0.1)
        if dcs._watches.cached() is not None:
            break
    assert dcs._watches.cached() is not None, "the watches did not start"
    refuse = Fault(
        mode=FaultMode.ERROR,
        status=429,
        retry_after_s=1,
        path_prefix=f"/api/v1/namespaces/{NAMESPACE}/pods",
        methods=("GET",),
    )
    server.faults.set(refuse)

    async def lists_on_read() -> int:
        """Pod lists one get_cluster sent (each refused: Throttled either way)."""
        server.audit.clear()
        with pytest.raises(Throttled):
            await dcs.get_cluster()
        return len(sent(server, "GET", "/pods"))

    async def waits(*factors: int) -> None:
        """After a refused read: the next is sent once its wait (`factor` Retry-Afters,
        jittered) is over, and not before; each is refused in turn."""
        for factor in factors:
            clock.advance(factor - 0.05)
            assert await lists_on_read() == 0, f"read before its wait of {factor} s was over"
            clock.advance(factor * RESEND_JITTER + 0.1)  # past the wait, whatever its jitter
            assert await lists_on_read() == 1, f"no read once its wait of {factor} s was over"

    assert await lists_on_read() == 1
    await waits(1, 2)  # three refusals: the next read waits 4 s
    server.faults.clear()
    clock.advance(4 - 0.05)
    assert await lists_on_read() == 0, "read before its wait of 4 s was over"
    clock.advance(4 * RESEND_JITTER + 0.1)
    server.audit.clear()
    assert (await dcs.get_cluster()).leader is None  # goes through: three doublings back
    assert len(sent(server, "GET", "/pods")) == 1
    server.faults.set(refuse)
    assert await lists_on_read() == 1
    await waits(1, 2, 4, 8, 8)  # from the bare Retry-After again, and capped at 8 times it
    assert dcs._throttle.throttling(), "the pause ended: the waits above were not the reads'"


async def test_a_leaderless_read_after_a_failed_request_waits_the_retry_after_not_the_pause(
    cluster: KubeContractCluster,
) -> None:
    """A request that failed without a 429 (a 503, a timeout: common on an overloaded
    server) makes the next get_cluster read from the server instead of the caches. That
    read must still be judged by what the caches show: with no leader there, a race may
    start, so it waits the 429's Retry-After, as any leaderless read, not the whole pause
    (12 s at least at ttl 6: a dead leader's cluster failed over that much later)."""
    server, clock = cluster.server, FakeClock()
    dcs = handle(cluster, "a", clock)
    await dcs.get_cluster()
    for _ in range(50):  # until the watches run: their caches hold a view with no leader
        await dcs.wait_for_change(0.1)
        if dcs._watches.cached() is not None:
            break
    assert dcs._watches.cached() is not None, "the watches did not start"
    server.faults.set(Fault(mode=FaultMode.ERROR, status=503, count=1))
    with pytest.raises(DcsUnavailable):
        await dcs.get_cluster()  # leaderless: read from the server, which fails
    server.faults.set(Fault(mode=FaultMode.ERROR, status=429, retry_after_s=1, count=1))
    with pytest.raises(Throttled):
        await dcs.get_cluster()
    assert dcs._throttle.pause_left_s() > 2 * (1 + RESEND_JITTER)
    clock.advance(1 + RESEND_JITTER + 0.05)
    server.audit.clear()
    assert (await dcs.get_cluster()).leader is None, "waited for the pause"
    assert len(sent(server, "GET", "/pods")) == 1


async def test_a_lapsed_lock_saying_its_holder_was_throttled_tells_no_longer_than_a_429_would(
    cluster: KubeContractCluster,
) -> None:
    """A lapsed lock object that still carries its holder's throttled marker keeps the
    members told (their heartbeats wait, their streams are kept, they read in turn: turns.py)
    while a 429 seen at its last renewal would still count (`max_pause_s`), not for ever: a
    cluster left leaderless (its synchronous standby dead too, no member eligible) must not
    defer every member's heartbeats, and so let every record expire, long after the
    throttling ended, until someone takes the lock."""
    clock = FakeClock()
    a, b = handle(cluster, "a", clock), handle(cluster, "b", clock)
    assert await a.acquire_leader()
    a._throttle.refused(None)  # a 429 of a's own: its next renewal says so
    assert await a.renew_leader()
    assert (await b.get_cluster()).leader is not None
    assert b._throttle.recent(), "not told by its live leader's marker"
    clock.advance(TTL_S + 0.1)  # a is gone: its lease lapses, the marker stays
    assert (await b.get_cluster()).leader is None
    assert b._throttle.recent(), "told no more by the lapsed lock right after it lapsed"
    clock.advance(b._throttle.max_pause_s)
    assert (await b.get_cluster()).leader is None
    assert not b._throttle.recent(), "told by a lock that lapsed long after any 429"


def lease_puts_refused(count: int | None = None) -> Fault:
    """Lease PUTs refused with a 429 and a Retry-After of 1 s (kube-apiserver's, whatever
    its load): `count` of them, or every one while the fault is set."""
    return Fault(
        mode=FaultMode.ERROR,
        status=429,
        retry_after_s=1,
        count=count,
        path_prefix="/apis/coordination.k8s.io/",
        methods=("PUT",),
    )


async def renew_as_the_loop(dcs: KubernetesDcs, deadline: float) -> float | None:
    """Renew as the HA loop does (agent/executor.py, agent/loop.py `_sleep_for`): a
    throttled renewal again after the wait it names, the loop woken 0.5 s before the fencing
    deadline, then every 0.05 s; when it went through (monotonic), None if not in time."""
    while time.monotonic() < deadline:
        try:
            renewed = await dcs.renew_leader()
        except Throttled as exc:
            wait_s = 0.2 if exc.retry_after_s is None else exc.retry_after_s
            await asyncio.sleep(min(wait_s, max(0.05, deadline - time.monotonic() - 0.5)))
            continue
        return time.monotonic() if renewed else None
    return None


def lease_puts(server: KubeApiServer, since_wall: float) -> list[float]:
    """Wall-clock times of the Lease PUTs the server got since `since_wall`."""
    return [
        r.ts
        for r in server.audit.records
        if r.method == "PUT" and "/leases/" in r.path and r.ts >= since_wall
    ]


async def test_a_renewal_refused_near_its_fencing_deadline_is_sent_by_it_not_by_retry_after(
    cluster: KubeContractCluster,
) -> None:
    """At the default timings (ttl 6, fence margin 1, a call's deadline 1.35 s): a renewal
    sent 2 s after the last one and refused four times (429, Retry-After 1) still goes
    through before the fencing deadline. Waiting out each Retry-After, its sends came at
    +2, +3.1, +4.3 and +5.3 s: the fourth was refused after the deadline, and the fencer had
    stopped PostgreSQL at +5 s. In the last 1.5 s before its last moment (the deadline less
    0.25 s for the answer and the fencer) it is sent every 0.1-0.15 s instead. Then, every
    Lease PUT refused: no send after that last moment, and a bounded number before it."""
    server = cluster.server
    cluster.ensure_pod("a")
    dcs = KubernetesDcs(
        client_factory=url_factory(server.url),
        namespace=NAMESPACE,
        cluster=cluster.cluster,
        member_name="a",
        ttl_s=6.0,
        timeout_s=0.9 * 1.5,
        loop_wait_s=2.0,
        fence_margin_s=1.0,
        lock=LockKind.LEASE,
        labels=APP_LABELS,
    )
    cluster.handles.append(dcs)
    assert await dcs.acquire_leader()
    sent_at = time.monotonic()
    assert await dcs.renew_leader()
    deadline = sent_at + 6.0 - 1.0  # the fencing deadline of that renewal
    await asyncio.sleep(sent_at + 2.0 - time.monotonic())
    server.faults.set(lease_puts_refused(count=4))
    sent_at = time.monotonic()
    went_through = await renew_as_the_loop(dcs, deadline)
    assert server.faults.active is None, "the four 429s did not all go to the renewal"
    assert went_through is not None, "the renewal did not go through before its deadline"
    assert went_through < deadline - 0.1

    sent_at = dcs._last_renew_sent  # the send time of the call that went through
    deadline = sent_at + 6.0 - 1.0
    server.faults.set(lease_puts_refused())
    wall_offset = time.time() - time.monotonic()
    assert await renew_as_the_loop(dcs, deadline) is None
    server.faults.clear()
    puts = [t - wall_offset for t in lease_puts(server, sent_at + wall_offset)]
    assert max(puts) <= deadline - 0.25 + 0.05, "a renewal was sent after its last moment"
    assert len(puts) <= 3 + URGENT_SENDS + 4, f"{len(puts)} sends of one renewal"


async def test_a_renewal_called_again_long_before_its_planned_send_sends_nothing_and_says_when(
    cluster: KubeContractCluster,
) -> None:
    """A renewal refused twice early in its lease period hands its next send to the HA loop
    (Throttled, with the Retry-After to wait). The loop may call again much sooner (woken
    by a change on its watches): that call sends nothing and names what is left of the
    wait, rather than waiting most of its own deadline out and sending with no room left
    for the answer (a call cut by its deadline counts as a failed request, not a 429)."""
    server = cluster.server
    cluster.ensure_pod("a")
    dcs = KubernetesDcs(
        client_factory=url_factory(server.url),
        namespace=NAMESPACE,
        cluster=cluster.cluster,
        member_name="a",
        ttl_s=6.0,
        timeout_s=0.9 * 1.5,
        loop_wait_s=2.0,
        lock=LockKind.LEASE,
        labels=APP_LABELS,
    )
    cluster.handles.append(dcs)
    assert await dcs.acquire_leader()
    server.faults.set(lease_puts_refused(count=2))
    with pytest.raises(Throttled) as first:
        await dcs.renew_leader()
    assert server.faults.active is None, "the two 429s did not both go to the renewal"
    assert first.value.retry_after_s is not None and first.value.retry_after_s >= 1.0
    wall = time.time()
    with pytest.raises(Throttled) as again:
        await dcs.renew_leader()
    assert lease_puts(server, wall) == [], "sent long before its planned time"
    left_s = again.value.retry_after_s
    assert left_s is not None and 0.5 < left_s <= first.value.retry_after_s
    await asyncio.sleep(left_s)
    assert await dcs.renew_leader()
