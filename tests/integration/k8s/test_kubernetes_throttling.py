"""The 429 / Retry-After path (issue 15): with the API server throttling, no leader is lost
that was not dead, and throttling that outlasts the ttl ends in the safe outcome: the leader
fences at its deadline, and another member takes the lock only after it (never two).

Three members of one cluster against the in-process test API server, each driven by a small
HA loop that keeps the agent's lease rules: a leader renews every cycle and counts its lease
from the send time of its last successful renewal; it stops being writable ("fenced") at
that time + ttl - fence margin, or when a renewal says the lock is no longer its own; a
member with no live leader in its view tries to acquire. Every member's writable intervals
are recorded on the one monotonic clock of the test, so overlaps are checked exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from agent.config import LockKind
from agent.dcs.base import DcsUnavailable
from agent.dcs.kubernetes import KubernetesDcs
from agent.dcs.kubernetes.api import Throttled
from agent.dcs.kubernetes.objects import THROTTLED_ANNOTATION, annotations_of
from agent.model import MemberName, PgState, RecordKind, Role, SyncRecord
from tests.contract.dcs_contract import member
from tests.integration.k8s.test_kubernetes_dcs import (
    APP_LABELS,
    NAMESPACE,
    KubeContractCluster,
    contract_cluster,
    url_factory,
)
from tests.k8s_apiserver import Fault, FaultMode, KubeApiServer

pytestmark = pytest.mark.integration

TTL_S, LOOP_S, RETRY_S, MARGIN_S = 6.0, 1.0, 3.0, 2.0
TIMEOUT_S = 0.9 * RETRY_S  # the backend's share of retry_timeout_s, as from_settings


@dataclass
class Agent:
    """One member's lease-keeping loop (see the module docstring)."""

    name: str
    dcs: KubernetesDcs
    leading_sent: float | None = None  # send time of the last successful acquire/renew
    intervals: list[list[float]] = field(default_factory=list)  # [start, end] writable
    renew_failures: int = 0

    @property
    def leading(self) -> bool:
        return self.leading_sent is not None

    def stop_leading(self, at: float) -> None:
        assert self.leading_sent is not None
        self.intervals[-1].append(min(at, self.leading_sent + TTL_S - MARGIN_S))
        self.leading_sent = None

    async def cycle(self) -> None:
        now = time.monotonic()
        if self.leading_sent is not None and now >= self.leading_sent + TTL_S - MARGIN_S:
            self.stop_leading(now)  # the fencing deadline
        try:
            view = await self.dcs.get_cluster()
        except DcsUnavailable:
            view = None
        sent = time.monotonic()
        if self.leading:
            try:
                renewed = await self.dcs.renew_leader()
            except DcsUnavailable:
                self.renew_failures += 1
            else:
                if renewed:
                    self.leading_sent = sent
                else:
                    self.stop_leading(time.monotonic())
        elif view is not None and view.leader is None:
            with contextlib.suppress(DcsUnavailable):
                if await self.dcs.acquire_leader():
                    self.leading_sent = sent
                    self.intervals.append([sent])
        with contextlib.suppress(DcsUnavailable):
            await self.dcs.publish_member(member(self.name))

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            started = time.monotonic()
            await self.cycle()
            await asyncio.sleep(max(0.0, LOOP_S - (time.monotonic() - started)))
        if self.leading:
            self.intervals[-1].append(time.monotonic())


def overlaps(agents: list[Agent]) -> list[str]:
    """Writable intervals of two different members that overlap."""
    spans = [(start, end, a.name) for a in agents for start, *rest in a.intervals for end in rest]
    found = []
    for i, (s1, e1, n1) in enumerate(spans):
        for s2, e2, n2 in spans[i + 1 :]:
            if n1 != n2 and s1 < e2 and s2 < e1:
                found.append(f"{n1} [{s1:.2f}, {e1:.2f}] and {n2} [{s2:.2f}, {e2:.2f}]")
    return found


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[KubeContractCluster]:
    async with contract_cluster(tmp_path, LockKind.LEASE) as c:
        yield c


def agents_of(
    cluster: KubeContractCluster, server: KubeApiServer, timeout_s: float = TIMEOUT_S
) -> list[Agent]:
    out = []
    for name in ("a", "b", "c"):
        cluster.ensure_pod(name)
        handle = KubernetesDcs(
            client_factory=url_factory(server.url),
            namespace=NAMESPACE,
            cluster=cluster.cluster,
            member_name=name,
            ttl_s=TTL_S,
            timeout_s=timeout_s,
            loop_wait_s=LOOP_S,
            lock=LockKind.LEASE,
            labels=APP_LABELS,
        )
        cluster.handles.append(handle)
        out.append(Agent(name, handle))
    return out


async def elect(agents: list[Agent]) -> Agent:
    """Run cycles until one leads; that one (a) first, so that it wins."""
    for _ in range(5):
        for agent in agents:
            await agent.cycle()
        leaders = [a for a in agents if a.leading]
        if leaders:
            assert len(leaders) == 1
            return leaders[0]
    raise AssertionError("no leader elected")


def lease_puts_refused(count: int | None = None) -> Fault:
    """Lock writes (Lease PUTs) refused with a 429 and a Retry-After of 1 s: `count` of them,
    or every one while the fault is set."""
    return Fault(
        mode=FaultMode.ERROR,
        status=429,
        retry_after_s=1,
        count=count,
        path_prefix="/apis/coordination.k8s.io/",
        methods=("PUT",),
    )


async def test_a_leader_whose_renewals_are_throttled_keeps_its_lease(
    cluster: KubeContractCluster,
) -> None:
    """The Lease's updates are throttled to 0.6 a second (a token bucket of one) while the
    leader renews every cycle: most renewals are refused (429, Retry-After 1) once or twice
    and go through when sent again inside the same call, within its deadline. So the leader
    keeps its lease; nobody else ever leads. A renewal refused three times (its resends are
    jittered, x1-1.5 the Retry-After, and the second one is cut to fit what the call has left,
    so it can come before the next token: once in a loaded fresh-clone CI run) fails, and the
    next cycle's renewal holds the lease; at most one does. (Without honouring the
    Retry-After, most renewals fail: the lease then hangs on the ones that happen to find a
    token, and the failure count and the fencing assertions fail.)"""
    server = cluster.server
    agents = agents_of(cluster, server)
    leader = await elect(agents)
    server.faults.set(
        Fault(
            mode=FaultMode.THROTTLE,
            rate=0.6,
            burst=1,
            retry_after_s=1,
            path_prefix="/apis/coordination.k8s.io/",
            methods=("PUT",),
        )
    )
    until = time.monotonic() + 3 * TTL_S
    await asyncio.gather(*(a.run(until) for a in agents))
    assert server.faults.throttled >= 5, "the renewals were not throttled"
    assert leader.dcs._api.throttled >= 3, "no renewal was sent again after its Retry-After"
    assert leader.renew_failures <= 1, f"{leader.renew_failures} renewals failed"
    assert leader.intervals == [[leader.intervals[0][0], leader.intervals[0][1]]]
    assert leader.intervals[0][1] >= until, f"{leader.name} fenced: {leader.intervals}"
    assert [a.name for a in agents if a.intervals and a is not leader] == []


async def test_throttling_that_outlasts_the_ttl_fences_the_leader_before_anyone_takes_over(
    cluster: KubeContractCluster,
) -> None:
    """Every request refused (429, Retry-After 1) for twice the ttl: the leader's renewals
    fail within their deadline, it fences at its deadline, nobody can take the lock while
    the server refuses, and once it answers again a new leader is elected whose writable
    interval starts after the old one's ended."""
    server = cluster.server
    agents = agents_of(cluster, server)
    leader = await elect(agents)
    for _ in range(2):  # every member has seen the leader renew
        for agent in agents:
            await agent.cycle()
    server.faults.set(Fault(mode=FaultMode.ERROR, status=429, retry_after_s=1))
    throttled_until = time.monotonic() + 2 * TTL_S
    runs = [asyncio.create_task(a.run(throttled_until + 2 * TTL_S)) for a in agents]
    await asyncio.sleep(throttled_until - time.monotonic())
    assert not leader.leading and len(leader.intervals) == 1, "the leader did not fence"
    assert leader.renew_failures >= 1
    assert all(len(a.intervals) == 0 for a in agents if a is not leader)
    server.faults.clear()
    await asyncio.gather(*runs)
    assert sum(len(a.intervals) for a in agents) >= 2, "no new leader after the throttling"
    assert overlaps(agents) == []


async def test_a_call_whose_deadline_ends_while_a_retry_after_is_waited_out_keeps_the_caches(
    cluster: KubeContractCluster,
) -> None:
    """At the default timings (a call's deadline 1.35 s) a renewal refused twice (429,
    Retry-After 1) runs out of time while it waits to send a third time: it fails as
    throttled, not as unreachable. The server answered, so the next get_cluster is served
    from the watches' caches as before (no request), instead of a pod list and two gets per
    cycle for every throttled member (bench/scale.py at 100 clusters)."""
    server = cluster.server
    agents = agents_of(cluster, server, timeout_s=0.9 * 1.5)
    leader = await elect(agents)
    await leader.dcs.wait_for_change(0.5)  # the watches run and fill the caches
    await leader.dcs.get_cluster()
    server.faults.set(lease_puts_refused())
    with pytest.raises(DcsUnavailable) as failed:
        await leader.dcs.renew_leader()
    server.faults.clear()
    server.audit.clear()
    await leader.dcs.get_cluster()
    reads = [r.path for r in server.audit.records if r.method == "GET" and r.verb != "watch"]
    assert reads == [], f"get_cluster read from the server after a throttled call: {reads}"
    assert isinstance(failed.value, Throttled)


def requests_since(server: KubeApiServer, method: str, verb: str | None = None) -> list[str]:
    return [
        r.path
        for r in server.audit.records
        if r.method == method and (verb is None or r.verb == verb) and r.code != 429
    ]


async def test_while_throttled_the_leader_renews_and_defers_its_heartbeat_not_a_change(
    cluster: KubeContractCluster,
) -> None:
    """Renewals first (issue 15): once the server has refused one of its requests (429), a
    member defers what can wait for the throttling pause (at least a ttl): the heartbeat of
    an unchanged record, or one that only moves WAL positions, is not written, while the
    Lease renewal is (sent again after its Retry-After) and a record whose role changed is
    written at once (peers wake for it). Without the priority, the due heartbeat is a PATCH
    of the pod like any other and competes with the renewals for the server's tokens."""
    server = cluster.server
    agents = agents_of(cluster, server, timeout_s=0.9 * 1.5)
    leader = await elect(agents)
    dcs = leader.dcs
    server.faults.set(lease_puts_refused(count=1))
    assert await dcs.renew_leader(), "a renewal refused once is sent again and goes through"
    assert server.faults.throttled == 0 and server.faults.active is None  # the one 429 used
    await asyncio.sleep(3.1)  # past the heartbeat interval (3 s at ttl 6, loop 1)
    server.audit.clear()
    await dcs.publish_member(member(leader.name))  # unchanged: a heartbeat
    await dcs.publish_member(member(leader.name, wal_lsn=4096))  # only the WAL position moved
    assert requests_since(server, "PATCH") == [], "a heartbeat was written while throttled"
    assert await dcs.renew_leader()
    assert len(requests_since(server, "PUT")) == 1, "the renewal was not sent"
    changed = replace(member(leader.name), role=Role.PRIMARY, state=PgState.RUNNING)
    await dcs.publish_member(changed)
    assert len(requests_since(server, "PATCH")) == 1, "a changed record waited"


async def test_watches_refused_by_a_throttling_server_wait_out_the_pause_and_keep_the_caches(
    cluster: KubeContractCluster,
) -> None:
    """Every request refused (429, Retry-After 1) and every watch stream cut: each watch
    tries to re-open once, is refused, and then waits out its handle's throttling pause (a
    ttl at least, jittered) instead of the watch backoff (0.1 s doubling: about six tries
    each in 3 s, 900 watches of a fleet at once). Meanwhile get_cluster is served from what
    the watches saw (the server answered; a re-read from it would take the tokens the
    renewals need): no request."""
    server = cluster.server
    agents = agents_of(cluster, server, timeout_s=0.9 * 1.5)
    await elect(agents)
    for agent in agents:
        await agent.dcs.wait_for_change(0.5)  # the watches run and fill the caches
        await agent.dcs.get_cluster()
    server.faults.set(Fault(mode=FaultMode.ERROR, status=429, retry_after_s=1))
    server.audit.clear()
    server.cut_watches()
    await asyncio.sleep(3.0)
    tries = [r for r in server.audit.records if r.verb in ("watch", "list")]
    watches = 3 * len(agents)  # pods, lock, ConfigMap
    assert len([r for r in tries if r.code == 429]) >= watches // 2, "no watch was refused"
    assert len(tries) <= watches, f"{len(tries)} watch tries for {watches} watches in 3 s"
    server.audit.clear()
    for agent in agents:
        await agent.dcs.get_cluster()
    assert server.audit.records == (), "get_cluster read from a throttling server"
    server.faults.clear()


async def test_while_throttled_a_synchronous_standby_keeps_its_heartbeat(
    cluster: KubeContractCluster,
) -> None:
    """A member named in the `sync` record is the exception: its leader chooses synchronous
    standbys among the member records it sees, and one whose record expired there would be
    dropped from the set. So its heartbeat is written when due, throttled or not, while a
    replica outside the set defers it (the test above)."""
    server = cluster.server
    agents = agents_of(cluster, server, timeout_s=0.9 * 1.5)
    leader = await elect(agents)
    standby, other = (a for a in agents if a is not leader)
    sync = SyncRecord(leader=MemberName(leader.name), members=(MemberName(standby.name),), quorum=1)
    assert await leader.dcs.write_record(RecordKind.SYNC, sync.to_json(), expected_version=None)
    for agent in (standby, other):
        server.audit.clear()
        await agent.dcs.get_cluster()  # reads the sync record
        if not server.audit.records:  # served from the caches: wait for the record's event
            await agent.dcs.wait_for_change(1.0)
            await agent.dcs.get_cluster()
        server.faults.set(Fault(mode=FaultMode.ERROR, status=429, retry_after_s=1, count=1))
        with pytest.raises(Throttled):
            await agent.dcs.publish_member(member(agent.name, wal_lsn=1))  # refused: a pause
    await asyncio.sleep(3.1)  # past the heartbeat interval
    server.audit.clear()
    for agent in (standby, other):
        await agent.dcs.publish_member(member(agent.name, wal_lsn=1))
    written = {p.rsplit("/", 1)[-1] for p in requests_since(server, "PATCH")}
    assert written == {standby.name}


async def test_with_no_live_leader_a_throttled_member_reads_after_the_retry_after_not_the_pause(
    cluster: KubeContractCluster,
) -> None:
    """A view with no live leader starts a race for the lock, so its read does not wait for
    the whole throttling pause (a ttl at least), only for the last 429's Retry-After (1 s,
    jittered up to 1.3 s); it is not sent again inside the call. (Sent again at once, or
    every cycle regardless, the reads of a fleet whose leaders the throttling cost took the
    tokens the remaining leaders' renewals needed: bench/scale.py, every request at 60/s.)"""
    server = cluster.server
    (agent, *_) = agents_of(cluster, server, timeout_s=0.9 * 1.5)
    dcs = agent.dcs
    await dcs.get_cluster()
    await dcs.wait_for_change(0.5)  # the watches run: the caches hold a view with no leader
    server.faults.set(Fault(mode=FaultMode.ERROR, status=429, retry_after_s=1, count=1))
    server.audit.clear()
    with pytest.raises(Throttled):
        await dcs.get_cluster()  # refused once: no second send inside the call
    assert len([r for r in server.audit.records if r.verb != "watch"]) == 1
    server.audit.clear()
    with pytest.raises(Throttled):
        await dcs.get_cluster()  # within the Retry-After: nothing sent
    assert [r.path for r in server.audit.records if r.verb != "watch"] == []
    await asyncio.sleep(1.4)  # the Retry-After is over, the pause (6 s at least) is not
    view = await dcs.get_cluster()
    assert view.leader is None
    assert any(r.verb == "list" for r in server.audit.records), "the read waited for the pause"


async def test_a_leader_refused_lately_tells_its_replicas_which_then_defer_their_heartbeats(
    cluster: KubeContractCluster,
) -> None:
    """A member learns of the throttling from its own 429s, so a replica whose heartbeats
    happen to go through keeps sending them into the bucket the renewals need (at 100
    clusters, most heartbeats sent while throttled were each replica's sends before its own
    first 429). A leader refused lately says so in the Lease it renews anyway (no extra
    request); a replica that sees it defers its heartbeat as if refused itself, while a
    record a peer wakes for still goes out. Only the leader's own 429s decide its marker."""
    server = cluster.server
    agents = agents_of(cluster, server, timeout_s=0.9 * 1.5)
    leader = await elect(agents)
    replica = next(a for a in agents if a is not leader)
    server.faults.set(lease_puts_refused(count=1))
    assert await leader.dcs.renew_leader(), "a renewal refused once is sent again"
    assert server.faults.active is None  # the one 429 went to the leader, not the replica
    assert await leader.dcs.renew_leader()  # the next renewal says so
    for _ in range(10):  # until the renewal's event reached the replica's cache
        await replica.dcs.wait_for_change(0.5)
        await replica.dcs.get_cluster()
        if replica.dcs._throttle.recent():
            break
    await asyncio.sleep(3.1)  # past the heartbeat interval
    server.audit.clear()
    await replica.dcs.publish_member(member(replica.name))  # unchanged: a heartbeat
    assert requests_since(server, "PATCH") == [], "the replica's heartbeat was written"
    assert not replica.dcs._throttle.refused_lately()  # told, not refused: says nothing on
    changed = replace(member(replica.name), state=PgState.STOPPED)
    await replica.dcs.publish_member(changed)
    assert len(requests_since(server, "PATCH")) == 1, "a changed record waited"


async def test_an_acquire_right_after_a_leaderless_read_writes_over_what_it_read(
    cluster: KubeContractCluster,
) -> None:
    """A race for the lock starts from a view read from the server (a leaderless view is
    never served by the caches); the acquire that follows within the cycle writes over the
    lock object that read returned, conditional on its resourceVersion, instead of reading
    it again (at 100 clusters throttled at 60/s for every request, the reads of the
    leaderless clusters took tokens the renewals needed). A read that a peer's write
    overtook only costs a refused write: never a second leader."""
    server = cluster.server
    a, b, _ = agents_of(cluster, server)
    assert (await a.dcs.get_cluster()).leader is None
    assert (await b.dcs.get_cluster()).leader is None  # both read: no lock yet
    server.audit.clear()
    assert await a.dcs.acquire_leader()
    lease_reads = [r for r in server.audit.records if r.method == "GET" and "leases" in r.path]
    assert lease_reads == [], f"the acquire read the Lease again: {lease_reads}"
    assert not await b.dcs.acquire_leader(), "b wrote over a read that a's write overtook"
    assert (await b.dcs.get_cluster()).leader is not None


async def test_streams_opened_before_the_throttling_are_not_ended_for_their_age_meanwhile(
    cluster: KubeContractCluster,
) -> None:
    """A stream is ended on our side when it is old (the ConfigMap's, at `watch_timeout_s`)
    or silent (pods, lock) and re-opened: a request. While the server throttles, silence is
    expected, so a stream is kept, and that must hold for the streams opened before the
    throttling began too: at 100 clusters, the whole fleet's streams ending for their age or
    silence in the first 30 s of a throttling took the tokens the renewals needed. Here a
    replica told by its leader's marker (so with no pause of its own to wait out) keeps its
    ConfigMap stream, opened before, past its 2 s timeout."""
    server = cluster.server
    a, b, _ = agents_of(cluster, server, timeout_s=0.9 * 1.5)
    replica = KubernetesDcs(
        client_factory=url_factory(server.url),
        namespace=NAMESPACE,
        cluster=cluster.cluster,
        member_name="b",
        ttl_s=TTL_S,
        timeout_s=0.9 * 1.5,
        loop_wait_s=LOOP_S,
        lock=LockKind.LEASE,
        labels=APP_LABELS,
        watch_timeout_s=2,  # the server ends it at 4 times that: well past the test
    )
    cluster.handles.append(replica)
    b = replace(b, dcs=replica)
    leader = await elect([a, b])
    assert leader is a
    await replica.wait_for_change(0.5)  # its watches run, opened before any 429
    server.faults.set(lease_puts_refused(count=1))
    assert await a.dcs.renew_leader()  # refused once, sent again
    assert await a.dcs.renew_leader()  # says so: the marker
    for _ in range(10):
        await replica.wait_for_change(0.3)
        await replica.get_cluster()
        if replica._throttle.recent():
            break
    assert replica._throttle.recent() and not replica._throttle.throttling()
    server.audit.clear()
    for _ in range(6):  # 3 s: the leader renews (keeps the replica told), the replica waits
        assert await a.dcs.renew_leader()
        await replica.wait_for_change(0.5)
        await replica.get_cluster()
    opened = [r.path for r in server.audit.records if r.verb == "watch" and "configmaps" in r.path]
    assert opened == [], f"a stream was re-opened while throttled: {opened}"


async def test_with_no_leader_while_throttled_the_members_read_in_turn_the_lost_holder_first(
    cluster: KubeContractCluster,
) -> None:
    """A leader whose lease lapses while it says it is being throttled (the marker) lost it
    to the throttling, not to death: its replicas do not read the leaderless cluster from
    the server (a pod list and two gets each) before their turns, half a ttl apart; it does,
    first, and takes the lock back; they learn of it on their watches, with no request.
    (Each member reading at once, every lost leader made three readers of the tokens the
    remaining leaders' renewals needed: at 100 clusters with every request throttled at
    60/s, bench/scale.py.) The order is no safety rule: the lock is still taken by a
    compare-and-set."""
    server = cluster.server
    agents = agents_of(cluster, server, timeout_s=0.9 * 1.5)
    leader = await elect(agents)
    replicas = [a for a in agents if a is not leader]
    for agent in agents:
        await agent.dcs.wait_for_change(0.3)  # the watches run and fill the caches
    server.faults.set(lease_puts_refused(count=1))
    assert await leader.dcs.renew_leader(), "a renewal refused once is sent again"
    assert await leader.dcs.renew_leader()  # says so: the marker
    lapses = time.monotonic() + TTL_S
    while time.monotonic() < lapses + 0.5:  # the leader stops renewing; all cycle
        for agent in agents:
            await agent.dcs.wait_for_change(0.2)
            with contextlib.suppress(Throttled):
                await agent.dcs.get_cluster()
    server.audit.clear()
    for agent in replicas:
        with pytest.raises(Throttled, match="turn to read"):
            await agent.dcs.get_cluster()
    reads = [r.path for r in server.audit.records if r.verb in ("get", "list")]
    assert reads == [], f"a replica read the leaderless cluster out of turn: {reads}"
    # A turn (half a ttl) later the second in turn reads; the third still waits.
    third = max(replicas, key=lambda a: a.name)  # b, c: the same WAL position, by name

    async def cycle_replicas(until: float) -> None:
        while time.monotonic() < until:
            for agent in replicas:
                await agent.dcs.wait_for_change(0.2)
                with contextlib.suppress(Throttled):
                    await agent.dcs.get_cluster()

    await cycle_replicas(lapses + TTL_S / 2 + 1.0)
    assert any(r.verb == "list" for r in server.audit.records), "the second did not read"
    server.audit.clear()
    with pytest.raises(Throttled, match="turn to read"):
        await third.dcs.get_cluster()
    # Its last sight of a live leader a ttl old, the third is still told: the lapsed lock
    # still says its holder was throttled (so the turns hold, and heartbeats wait).
    await cycle_replicas(lapses + TTL_S + 0.5)
    assert third.dcs._throttle.recent(), "told no more by the lapsed lock"
    server.audit.clear()
    assert (await leader.dcs.get_cluster()).leader is None  # lapsed on its own clock too
    assert any(r.verb == "list" for r in server.audit.records), "the holder did not read"
    assert await leader.dcs.acquire_leader(), "the holder did not take its lock back"
    for agent in replicas:
        await agent.dcs.wait_for_change(1.0)
        view = await agent.dcs.get_cluster()
        assert view.leader is not None and view.leader.name == leader.name
    reads = [r.path for r in server.audit.records if r.verb == "list"]
    assert len(reads) == 1, f"the replicas read the cluster again: {reads}"


async def test_a_renewal_sent_again_after_a_429_says_its_leader_was_refused(
    cluster: KubeContractCluster,
) -> None:
    """The marker goes out with the resend of the refused renewal itself, not only with the
    next renewal a cycle later: the replicas defer their heartbeats a cycle sooner, at the
    start of a throttling, when the fleet's heartbeats are most of what the server gets
    (at 100 clusters, the leaders lost in a throttling's first seconds)."""
    server = cluster.server
    agents = agents_of(cluster, server, timeout_s=0.9 * 1.5)
    leader = await elect(agents)
    lease_path = leader.dcs._holders[0].lock.path()
    assert THROTTLED_ANNOTATION not in annotations_of(await leader.dcs._api.get(lease_path))
    server.faults.set(lease_puts_refused(count=1))
    assert await leader.dcs.renew_leader(), "a renewal refused once is sent again"
    assert server.faults.active is None  # the one 429 went to the renewal
    lease = await leader.dcs._api.get(lease_path)
    assert THROTTLED_ANNOTATION in annotations_of(lease), "the resend did not say so"
