"""The etcd backend against a real 3-member etcd: the DCS contract, plus etcd member failures."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest

from agent.clock import FakeClock, SystemClock
from agent.config import (
    DcsKind,
    DcsSettings,
    EtcdSettings,
    PostgresSettings,
    Secret,
    Settings,
    Timing,
)
from agent.dcs.base import Dcs, DcsAuthError, DcsUnavailable
from agent.dcs.etcd import EtcdDcs
from agent.dcs.etcd_client import Compare, DeleteOp, EtcdClient, TxnOp, TxnResult
from agent.dcs.etcd_mirror import Mirror
from agent.model import RecordKind
from tests.contract.dcs_contract import ContractCluster, DcsContract, member
from tests.support.etcd import BlackHole, EtcdCluster, make_tls_files, running_cluster

pytestmark = pytest.mark.integration

TTL_S = 2.0  # etcd's minimum lease ttl here is 1 s (500 ms election timeout); 2 s has margin
TIMEOUT_S = 2.0


class EtcdContractCluster:
    """Binds the contract suite to a fresh cluster name (its own key prefix) on a real etcd."""

    ttl_s = TTL_S
    # etcd checks for expired leases every 500 ms; a loaded machine needs some more.
    expiry_slack_s = 1.0
    wake_s = 3.0
    quiet_s = 0.5
    deadline_s = 0.5
    member_records_expire = True

    def __init__(self, endpoints: list[str], black_hole: BlackHole) -> None:
        self.endpoints = endpoints
        self.namespace = "pgwarden-test"
        self.cluster = f"c-{uuid.uuid4().hex[:10]}"
        self.black_hole = black_hole
        self.raw = EtcdClient(endpoints, timeout_s=TIMEOUT_S)
        self.handles: list[EtcdDcs] = []

    def make_etcd(
        self, name: str, *, endpoints: list[str] | None = None, timeout_s: float = TIMEOUT_S
    ) -> EtcdDcs:
        handle = EtcdDcs(
            endpoints=endpoints or self.endpoints,
            namespace=self.namespace,
            cluster=self.cluster,
            member_name=name,
            ttl_s=self.ttl_s,
            timeout_s=timeout_s,
        )
        self.handles.append(handle)
        return handle

    def make(self, name: str) -> Dcs:
        return self.make_etcd(name)

    async def expire(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def write_raw(self, key: str, value: bytes | None) -> None:
        full = f"/{self.namespace}/{self.cluster}/{key}".encode()
        if value is None:
            await self.raw.delete(full)
        else:
            await self.raw.put(full, value)

    async def make_unreachable(self, name: str) -> Dcs:
        return self.make_etcd(name, endpoints=[self.black_hole.url], timeout_s=self.deadline_s)

    async def close(self) -> None:
        for handle in self.handles:
            await handle.close()
        await self.raw.delete(f"/{self.namespace}/{self.cluster}/".encode(), prefix=True)
        await self.raw.close()


@pytest.fixture
async def etcd_dcs(etcd3: EtcdCluster) -> AsyncIterator[EtcdContractCluster]:
    async with BlackHole() as black_hole:
        cluster = EtcdContractCluster(etcd3.endpoints, black_hole)
        try:
            yield cluster
        finally:
            etcd3.heal()  # a test may have killed members; cleanup needs a quorum
            await cluster.close()


class TestEtcdDcsContract(DcsContract):
    @pytest.fixture
    def cluster(self, etcd_dcs: EtcdContractCluster) -> ContractCluster:
        return etcd_dcs


# --------------------------------------------------------------------------- etcd failures


async def test_with_the_raft_leader_killed_every_call_still_works(
    etcd3: EtcdCluster, etcd_dcs: EtcdContractCluster
) -> None:
    a, b = etcd_dcs.make("a"), etcd_dcs.make("b")
    assert await a.acquire_leader()
    await a.publish_member(member("a"))
    etcd3.kill(etcd3.leader_index())
    assert await a.renew_leader()
    await a.publish_member(member("a", wal_lsn=5))
    assert await a.write_record(RecordKind.CONFIG, '{"paused": true}', expected_version=None)
    view = await b.get_cluster()
    assert view.leader is not None and view.leader.name == "a"
    seen = view.member("a")
    assert seen is not None and seen.wal_lsn == 5
    assert view.config.paused is True
    assert not await b.acquire_leader()
    await a.release_leader()
    assert await b.acquire_leader()


async def test_with_two_of_three_etcd_members_killed_calls_raise_dcs_unavailable_in_time(
    etcd3: EtcdCluster, etcd_dcs: EtcdContractCluster
) -> None:
    deadline_s = 0.5
    a = etcd_dcs.make_etcd("a", timeout_s=deadline_s)
    assert await a.acquire_leader()
    await a.get_cluster()
    etcd3.kill(1)
    etcd3.kill(2)
    # A raft leader that lost its quorum keeps answering lease keepalives (served by the
    # leader alone) until it steps down, one election timeout (0.5 s here) later.
    await asyncio.sleep(1.5)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "get_cluster": a.get_cluster,
        "renew_leader": a.renew_leader,
        "acquire_leader": a.acquire_leader,
        "publish_member": lambda: a.publish_member(member("a")),
        "write_record": lambda: a.write_record(RecordKind.SYNC, "{}", expected_version=None),
        "release_leader": a.release_leader,
    }
    loop = asyncio.get_running_loop()
    for name, call in calls.items():
        started = loop.time()
        with pytest.raises(DcsUnavailable):
            await asyncio.wait_for(call(), 30)
        took = loop.time() - started
        assert took <= deadline_s + 0.5, f"{name} took {took:.2f} s"
    assert await a.wait_for_change(0.2) is False  # a watch without a quorum never raises


async def test_the_watch_resumes_when_the_etcd_member_it_is_connected_to_is_killed(
    etcd3: EtcdCluster, etcd_dcs: EtcdContractCluster
) -> None:
    # Both handles talk to member 0 first; the watch of `b` lives on member 0.
    a, b = etcd_dcs.make("a"), etcd_dcs.make("b")
    await b.get_cluster()
    assert await b.wait_for_change(0.3) is False  # the watch is running now
    etcd3.kill(0)
    # What is tested is b's watch, not how fast the survivors elect a raft leader (ci44: the
    # acquire, sent during that election on a loaded machine, found no quorum within 2 s).
    await asyncio.to_thread(etcd3.wait_writable)
    assert await a.acquire_leader()
    assert await b.wait_for_change(etcd_dcs.wake_s) is True
    view = await b.get_cluster()
    assert view.leader is not None and view.leader.name == "a"
    # And it keeps delivering afterwards.
    await a.release_leader()
    assert await b.wait_for_change(etcd_dcs.wake_s) is True


async def test_a_compacted_watch_start_wakes_the_caller_to_re_read_and_watches_on(
    etcd3: EtcdCluster, etcd_dcs: EtcdContractCluster
) -> None:
    a, b = etcd_dcs.make("a"), etcd_dcs.make("b")
    await b.get_cluster()  # b's watch will start after this revision...
    for paused in ("true", "false", "true"):
        current = (await a.get_cluster()).config.version or None
        assert await a.write_record(
            RecordKind.CONFIG, f'{{"paused": {paused}}}', expected_version=current
        )
    latest = int((await a.get_cluster()).config.version)
    etcd3.etcdctl("compact", str(latest))  # ...which etcd no longer keeps
    assert await b.wait_for_change(etcd_dcs.wake_s) is True
    assert (await b.get_cluster()).config.paused is True
    assert await a.acquire_leader()
    assert await b.wait_for_change(etcd_dcs.wake_s) is True


async def test_an_idle_member_sends_keepalives_but_no_writes(
    etcd_dcs: EtcdContractCluster,
) -> None:
    a, b = etcd_dcs.make("a"), etcd_dcs.make("b")
    await a.publish_member(member("a"))
    before = (await b.get_cluster()).member("a")
    for _ in range(3):
        await asyncio.sleep(TTL_S / 2)
        await a.publish_member(member("a"))
    after = (await b.get_cluster()).member("a")
    assert before is not None and after is not None
    assert after.version == before.version  # no write, yet alive past its ttl


async def test_a_late_copy_of_a_release_leaves_the_leader_key_acquired_again_alone(
    etcd_dcs: EtcdContractCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review R6: a hedged release whose first copy is applied only after we acquired the
    key again (same name, same lease) must not delete the new key. The copy is replayed
    here, byte for byte, after the re-acquire."""
    a, b = etcd_dcs.make_etcd("a"), etcd_dcs.make_etcd("b")
    sent: list[tuple[Sequence[Compare], Sequence[TxnOp]]] = []
    send = a._client.txn  # records what the handle sends; etcd is real

    async def recording(
        compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> TxnResult:
        sent.append((compares, success))
        return await send(compares, success, failure)

    monkeypatch.setattr(a._client, "txn", recording)
    assert await a.acquire_leader()
    sent.clear()
    await a.release_leader()
    (release,) = [(c, ops) for c, ops in sent if any(isinstance(op, DeleteOp) for op in ops)]
    assert await a.acquire_leader()
    assert await a.renew_leader()

    late = await etcd_dcs.raw.txn(*release)  # the first release's copy, applied late

    assert late.succeeded is False
    view = await b.get_cluster()
    assert view.leader is not None and view.leader.name == "a"
    assert await a.renew_leader()


async def test_a_renewal_fails_once_the_leader_key_is_another_incarnation_on_our_lease(
    etcd_dcs: EtcdContractCluster,
) -> None:
    """The renewal compares on the key's creation, not on our name and lease alone: a leader
    key deleted and put again (here by hand, with our name on our lease) is not the one we
    acquired, and the renewal says so."""
    a = etcd_dcs.make_etcd("a")
    assert await a.acquire_leader()
    key = a.prefix + b"leader"
    (kv,) = (await etcd_dcs.raw.range(key)).kvs
    await etcd_dcs.raw.txn([], [DeleteOp(key=key)])
    await etcd_dcs.raw.put(key, b"a", lease=kv.lease)

    assert not await a.renew_leader()


def count_calls(monkeypatch: pytest.MonkeyPatch, handle: EtcdDcs, method: str) -> list[str]:
    """Each call the handle's client makes of `method` appends its name (etcd stays real)."""
    calls: list[str] = []
    client = handle._client
    send = getattr(client, method)

    async def counting(*args: object, **kwargs: object) -> object:
        calls.append(method)
        return await send(*args, **kwargs)

    monkeypatch.setattr(client, method, counting)
    return calls


async def test_with_its_watch_running_a_member_reads_peer_changes_without_asking_etcd(
    etcd_dcs: EtcdContractCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15 (footprint): the watch's mirror answers get_cluster, and a change a peer
    makes is in the read that follows the wake (base.py, point 8)."""
    a, b = etcd_dcs.make_etcd("a"), etcd_dcs.make_etcd("b")
    assert await a.acquire_leader()
    assert await b.wait_for_change(0.2) is False  # starts b's watch
    await b.publish_member(member("b"))  # an answered request: etcd is reachable
    await b.get_cluster()  # the read the mirror starts from
    reads = count_calls(monkeypatch, b, "range")

    await a.publish_member(member("a"))
    assert await b.wait_for_change(etcd_dcs.wake_s) is True
    view = await b.get_cluster()
    assert view.member("a") is not None
    assert await a.write_record(RecordKind.CONFIG, '{"paused": true}', expected_version=None)
    assert await b.wait_for_change(etcd_dcs.wake_s) is True
    view = await b.get_cluster()
    assert view.config.paused is True
    assert view.leader is not None and view.leader.name == "a"
    assert reads == []

    await a.release_leader()  # no leader: a race is judged on a fresh read
    assert await b.wait_for_change(etcd_dcs.wake_s) is True
    assert (await b.get_cluster()).leader is None
    assert reads == ["range"]


async def test_a_leader_with_its_watch_running_renews_with_a_keepalive_alone(
    etcd_dcs: EtcdContractCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15 (footprint): the mirror says whether the leader key is still ours; a key
    rewritten behind the leader's back (another name, no lease) fails its next renewal."""
    a = etcd_dcs.make_etcd("a")
    assert await a.acquire_leader()
    assert await a.wait_for_change(0.2) is False  # starts a's watch
    await a.get_cluster()
    txns = count_calls(monkeypatch, a, "txn")

    assert await a.renew_leader()
    assert txns == []
    assert await a.renew_leader()
    assert txns == ["txn"]  # every second renewal asks etcd's compare (review E1)
    await etcd_dcs.write_raw("leader", b"b")
    assert await a.wait_for_change(etcd_dcs.wake_s) is True
    assert await a.renew_leader() is False
    assert txns == ["txn"]  # the mirror saw it


async def test_a_key_rewritten_while_the_watch_stays_silent_is_found_within_two_renewals(
    etcd_dcs: EtcdContractCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review hreview2 E1: a leader key rewritten by hand while the watch delivers nothing (a
    connection that died silently, a lagging etcd member) fails a renewal within two cycles,
    not when the stream is re-created 30 s later. Without the periodic compare every renewal
    trusts the mirror and succeeds."""
    a = etcd_dcs.make_etcd("a")
    assert await a.acquire_leader()
    assert await a.wait_for_change(0.2) is False  # starts a's watch
    await a.get_cluster()
    assert await a.renew_leader()  # from the mirror
    monkeypatch.setattr(Mirror, "apply", lambda self, event: None)  # the watch goes silent
    await etcd_dcs.write_raw("leader", b"b")
    await asyncio.sleep(0.3)  # what the watch would have delivered by now, it drops
    assert await a.renew_leader() is False


async def test_with_the_etcd_member_of_its_watch_frozen_a_member_reads_from_another(
    etcd3: EtcdCluster, etcd_dcs: EtcdContractCluster
) -> None:
    """Issue 15 (footprint): a frozen member keeps the watch's stream open and silent; the
    first request another member answers puts the mirror in doubt, so the next read is a
    real one (without that check it showed the keys from before the freeze)."""
    a, b = etcd_dcs.make_etcd("a"), etcd_dcs.make_etcd("b")
    assert await a.acquire_leader()
    assert await b.wait_for_change(0.2) is False  # b's watch runs on member 0
    await b.publish_member(member("b"))
    await b.get_cluster()
    frozen = etcd3.members[0].process
    assert frozen is not None
    frozen.send_signal(signal.SIGSTOP)
    try:
        for _ in range(10):  # the others may need an election first
            with contextlib.suppress(DcsUnavailable):
                await a.write_record(RecordKind.CONFIG, '{"paused": true}', expected_version=None)
                break
        # An attempt that timed out may still have been applied (then the next one, a create,
        # finds the record there): what counts is that the record is written.
        assert (await a.get_cluster()).config.paused is True
        # A request of b's that writes nothing (b's own writes, not delivered by the frozen
        # watch, would put the mirror in doubt anyway): another member answers it.
        assert await b.renew_leader() is False
        assert (await b.get_cluster()).config.paused is True
    finally:
        frozen.send_signal(signal.SIGCONT)


async def test_a_renewal_answered_by_another_member_than_the_watch_s_asks_etcd_for_the_key(
    etcd3: EtcdCluster, etcd_dcs: EtcdContractCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review hreview2 E2: with the watch's etcd member frozen, the leader's keepalive is
    answered by another member, and its mirror still shows the keys from before the freeze.
    That very renewal must ask etcd whose key it is: a leader key rewritten meanwhile (by
    hand: the leader's lease is alive, so nothing else can) fails it. Without the check it
    trusted the frozen mirror and renewed."""
    a = EtcdDcs(
        endpoints=etcd_dcs.endpoints,
        namespace=etcd_dcs.namespace,
        cluster=etcd_dcs.cluster,
        member_name="a",
        ttl_s=10.0,  # the lease and the mirror's answer outlive the election below
        timeout_s=TIMEOUT_S,
    )
    etcd_dcs.handles.append(a)
    assert await a.acquire_leader()
    assert await a.wait_for_change(0.2) is False  # starts a's watch, on member 0
    await asyncio.sleep(0.3)  # the stream is created and has delivered the acquire
    await a.get_cluster()  # the read the mirror starts from
    txns = count_calls(monkeypatch, a, "txn")
    assert await a.renew_leader()
    assert txns == []  # the mirror is current: the keepalive alone
    frozen = etcd3.members[0].process
    assert frozen is not None
    frozen.send_signal(signal.SIGSTOP)
    try:
        for _ in range(10):  # the others may need an election first
            with contextlib.suppress(DcsUnavailable):
                await etcd_dcs.write_raw("leader", b"b")
                break
        assert await a.renew_leader() is False
        assert txns == ["txn"]
    finally:
        frozen.send_signal(signal.SIGCONT)


async def test_after_a_failed_renewal_a_publish_that_sends_nothing_does_not_vouch_for_the_mirror(
    etcd3: EtcdCluster, etcd_dcs: EtcdContractCluster
) -> None:
    """With every etcd member frozen the leader's renewal fails; a publish of its unchanged
    record right after needs no request (its keepalive is fresh) and must not count as an
    answer: the next get_cluster reads, and fails, instead of serving the mirror (failsafe
    and dcs_up depend on that read failing)."""
    a = EtcdDcs(
        endpoints=etcd_dcs.endpoints,
        namespace=etcd_dcs.namespace,
        cluster=etcd_dcs.cluster,
        member_name="a",
        ttl_s=10.0,  # a keepalive stays fresh for 5 s: the publish below sends nothing
        timeout_s=1.0,
    )
    etcd_dcs.handles.append(a)
    assert await a.acquire_leader()
    assert await a.wait_for_change(0.2) is False  # starts a's watch
    await a.publish_member(member("a"))
    await asyncio.sleep(0.2)  # the publish came back through the watch
    await a.get_cluster()
    assert await a.renew_leader()
    frozen = [m.process for m in etcd3.members if m.process is not None]
    for process in frozen:
        process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(DcsUnavailable):
            await a.renew_leader()
        await a.publish_member(member("a"))
        with pytest.raises(DcsUnavailable):
            await a.get_cluster()
    finally:
        for process in frozen:
            process.send_signal(signal.SIGCONT)


# --------------------------------------------------------------------------- settings, TLS, auth

SECURE_USER = "root"
SECURE_PASSWORD = "dcs-pw-123"


@pytest.fixture(scope="module")
def etcd_secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One member with TLS and password authentication. (Not with --client-cert-auth too:
    etcd 3.4's JSON gateway then answers HTTP 400 to any client certificate that carries a
    CommonName, "CommonName of client sending a request against gateway will be ignored".)"""
    base = tmp_path_factory.mktemp("etcd-dcs-secure")
    tls = make_tls_files(base / "certs")
    with running_cluster(1, base, tls=tls, auth=(SECURE_USER, SECURE_PASSWORD)) as cluster:
        yield cluster


def secure_settings(etcd: EtcdCluster, tmp_path: Path, name: str, password: str) -> Settings:
    tls = etcd.tls
    assert tls is not None
    return Settings(
        name=name,
        cluster="secure",
        namespace="pgwarden-test",
        run_dir=str(tmp_path / "run"),
        dcs=DcsSettings(
            kind=DcsKind.ETCD,
            etcd=EtcdSettings(
                endpoints=tuple(etcd.endpoints),
                ca_file=str(tls.ca_file),
                cert_file=str(tls.client_cert),
                key_file=str(tls.client_key),
                username=SECURE_USER,
                password=Secret(password),
            ),
        ),
        postgresql=PostgresSettings(data_dir=str(tmp_path / "data")),
        timing=Timing(),  # valid defaults: these tests never wait for an expiry
    )


async def test_a_backend_built_from_settings_works_over_tls_with_a_password(
    etcd_secure: EtcdCluster, tmp_path: Path
) -> None:
    a = EtcdDcs.from_settings(
        secure_settings(etcd_secure, tmp_path, "a", SECURE_PASSWORD), clock=SystemClock()
    )
    b = EtcdDcs.from_settings(
        secure_settings(etcd_secure, tmp_path, "b", SECURE_PASSWORD), clock=SystemClock()
    )
    try:
        await b.get_cluster()
        assert await b.wait_for_change(0.3) is False
        assert await a.acquire_leader()
        await a.publish_member(member("a"))
        assert await b.wait_for_change(3.0) is True
        view = await b.get_cluster()
        assert view.leader is not None and view.leader.name == "a"
        assert view.member("a") is not None
        await a.release_leader()
    finally:
        await a.close()
        await b.close()


async def test_a_wrong_etcd_password_raises_dcs_auth_error_within_the_deadline(
    etcd_secure: EtcdCluster, tmp_path: Path
) -> None:
    settings = secure_settings(etcd_secure, tmp_path, "a", "not-the-password")
    handle = EtcdDcs.from_settings(settings, clock=SystemClock())
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        with pytest.raises(DcsAuthError):
            await handle.get_cluster()
        assert loop.time() - started <= settings.timing.retry_timeout_s
    finally:
        await handle.close()


async def test_at_ttl_6_an_unchanged_member_record_keeps_its_lease_alive_in_time(
    etcd_dcs: EtcdContractCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review E3: a publish keeps the member lease alive when its last keepalive is older than
    the heartbeat interval (2.05 s at ttl 6, loop_wait 2, a 1.35 s request deadline), not half
    the ttl: a keepalive sent at the first cycle past 3 s may land after the lease expired.
    Real etcd; the fake clock only moves the handle's idea of the keepalive's age."""
    clock = FakeClock()
    handle = EtcdDcs(
        endpoints=etcd_dcs.endpoints,
        namespace=etcd_dcs.namespace,
        cluster=etcd_dcs.cluster,
        member_name="a",
        ttl_s=6.0,
        timeout_s=1.35,
        loop_wait_s=2.0,
        clock=clock,
    )
    etcd_dcs.handles.append(handle)
    await handle.publish_member(member("a"))  # grants the lease
    keepalives = count_calls(monkeypatch, handle, "lease_keepalive")
    clock.advance(1.5)
    await handle.publish_member(member("a"))
    assert keepalives == []  # fresh enough: nothing sent
    clock.advance(1.0)  # 2.5 s: past the 2.05 s interval, short of half the ttl
    await handle.publish_member(member("a"))
    assert keepalives == ["lease_keepalive"]
