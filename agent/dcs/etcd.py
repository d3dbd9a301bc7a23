"""etcd v3 backend: one lease per agent, compare-and-set transactions, one prefix watch.

Keys live under `/<namespace>/<cluster>/` (layout in `agent.dcs.keys`): `leader` and
`members/<name>` are bound to the agent's lease; `initialize`, `config`, `sync`,
`switchover`, `history` are bound to none. Versions are `str(mod_revision)`.

The lease (ttl = `ttl_s` rounded up) is granted lazily and kept alive only by the calls the
HA loop makes (`renew_leader`, `publish_member`, `acquire_leader`): no background keepalive,
so an agent whose loop stalls loses its lease on time. A lost lease is re-granted by the next
`acquire_leader` / `publish_member`, never by `renew_leader` (which would silently re-create
a leader key that others may already have seen gone). When a keepalive was last sent is
timed on the injected `Clock`.

Once the watch runs, `get_cluster` answers from the mirror of the prefix that the watch keeps
(agent/dcs/etcd_mirror.py: the last read plus the events after it) while that is current, and
a leader's renewal is a keepalive alone, the mirror saying whether the leader key is still
ours; otherwise they read and compare in etcd. An idle member then sends only keepalives.

Every public call runs under one deadline (`timeout_s`) and raises `DcsUnavailable` (or
its subclass `DcsAuthError`) when etcd cannot be reached, refuses us, or does not answer in
time. `wait_for_change` is fed by a long-lived named watch task on the prefix, started by the
first `wait_for_change` (agent/dcs/etcd_watch.py); the watch never raises into the caller.
Own writes and member heartbeats are told apart by `changes.ChangeTracker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Sequence

import structlog

from agent.clock import Clock, SystemClock
from agent.config import Settings
from agent.dcs import keys
from agent.dcs.base import DcsError, DcsUnavailable
from agent.dcs.changes import ChangeTracker
from agent.dcs.etcd_client import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteOp,
    EtcdClient,
    EtcdLeaseNotFound,
    KeyValue,
    PutOp,
    RangeOp,
    TxnOp,
)
from agent.dcs.etcd_mirror import Mirror
from agent.dcs.etcd_watch import EtcdWatch, relative_key
from agent.dcs.heartbeat import heartbeat_interval
from agent.model import ClusterView, Member, RecordKind

# A leader's renewal trusts the mirror's copy of its key at most this many times in a row,
# then asks etcd's compare once more (review hreview2 E1). While our keepalives succeed only
# someone else's hand (`etcdctl del` or `put`) can change our key, and the mirror sees that
# through the watch alone: a watch connection that died silently, or whose etcd member lags,
# would hide it until the stream is re-created (30 s) while another member promotes. With
# this, for at most two cycles; the price is one compare every other cycle (~0.25 requests/s
# for the leader, ~0.08 per member of a 3-member cluster).
COMPARE_EVERY_RENEWALS = 2

# The HA loop bounds each DCS call by `retry_timeout_s`; ours is shorter, so that the loop
# hears `DcsUnavailable` with its reason from us rather than a bare timeout of its own.
_REQUEST_SHARE_OF_RETRY_TIMEOUT = 0.9

_CLOSE_TIMEOUT_S = 2.0


class EtcdDcs:
    """One member's handle on one cluster in etcd. See the module docstring and `base.py`."""

    def __init__(
        self,
        *,
        endpoints: Sequence[str],
        namespace: str,
        cluster: str,
        member_name: str,
        ttl_s: float,
        timeout_s: float,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        username: str | None = None,
        password: str | None = None,
        clock: Clock | None = None,
        loop_wait_s: float | None = None,
    ) -> None:
        if ttl_s <= 0 or timeout_s <= 0:
            raise ValueError("ttl_s and timeout_s must be positive")
        self._client = EtcdClient(
            endpoints,
            timeout_s=timeout_s,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            username=username,
            password=password,
        )
        self._name = member_name
        self._ttl_s = ttl_s
        self._lease_ttl_s = max(1, math.ceil(ttl_s))
        self._mirror_renewals = 0  # renewals since the last compare in etcd
        # A keepalive sent less than this long ago will do for a publish (a leader's renewal
        # has always sent one a round trip ago, and on a slow link, chaos finding 11, a
        # keepalive of our own before every put made each publish miss its deadline). The
        # next one comes at the first cycle past it and may take a request's deadline, which
        # must still land inside the lease: half the ttl was too long at ttl 6 (review E3).
        self._keepalive_fresh_s = (
            heartbeat_interval(self._lease_ttl_s, loop_wait_s, timeout_s)
            if loop_wait_s is not None
            else self._lease_ttl_s / 2
        )
        self._timeout_s = timeout_s
        self._clock: Clock = clock or SystemClock()
        self._prefix = f"/{namespace.strip('/')}/{cluster.strip('/')}/".encode()
        self._leader = _LeaderKey(_full_key(self._prefix, keys.LEADER), member_name)
        self._member_key = _full_key(self._prefix, keys.member_key(member_name))
        self._lease = 0
        self._lease_lock = asyncio.Lock()
        # Send time (monotonic) of the last keepalive that found the lease alive: a member
        # record published soon after needs no keepalive of its own (idle CPU, requests).
        self._kept_alive_at = -math.inf
        self._published: tuple[bytes, int] | None = None  # (payload, lease) of the last put
        # Change tracking for wait_for_change (base.py, point 8); versions are revisions.
        self._changes = ChangeTracker(self._clock)
        self._mirror = Mirror(self._leader.key)  # what get_cluster answers from, when current
        self._closed = False
        self._log = structlog.get_logger("pgwarden.dcs").bind(
            backend="etcd", cluster=cluster, member=member_name
        )
        self._watch = EtcdWatch(
            self._client,
            prefix=self._prefix,
            leader_key=self._leader.key,
            mirror=self._mirror,
            changes=self._changes,
            timeout_s=timeout_s,
            log=self._log,
            member_name=member_name,
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Clock) -> EtcdDcs:
        etcd = settings.dcs.etcd
        if etcd is None:
            raise ValueError("dcs.etcd: required when dcs.kind is etcd")
        return cls(
            endpoints=etcd.endpoints,
            namespace=settings.namespace,
            cluster=settings.cluster,
            member_name=settings.name,
            ttl_s=settings.timing.ttl_s,
            timeout_s=settings.timing.retry_timeout_s * _REQUEST_SHARE_OF_RETRY_TIMEOUT,
            loop_wait_s=settings.timing.loop_wait_s,
            ca_file=etcd.ca_file,
            cert_file=etcd.cert_file,
            key_file=etcd.key_file,
            username=etcd.username,
            password=etcd.password.reveal() if etcd.password is not None else None,
            clock=clock,
        )

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    @property
    def prefix(self) -> bytes:
        return self._prefix

    # ------------------------------------------------------------------ the protocol

    async def get_cluster(self) -> ClusterView:
        # From the mirror while it is current (etcd_mirror.py says when): the watch has
        # applied every change since the last read, so a read would return the same keys.
        if self._mirror.current(self._clock.monotonic(), max_age_s=self._ttl_s):
            return self._view_of(self._mirror.kvs())
        epoch = self._mirror.epoch
        async with self._request("get_cluster"):
            result = await self._client.range(self._prefix, prefix=True)
        # Deliberately not "consumed" here: the API reads through this handle too, and a read
        # by another task must not swallow a wake meant for the HA loop (base.py, point 8).
        self._watch.read_at(result.revision)
        self._mirror.load(result.kvs, result.revision, epoch=epoch)
        return self._view_of(result.kvs)

    def _view_of(self, kvs: tuple[KeyValue, ...]) -> ClusterView:
        mine = next((kv for kv in kvs if kv.key == self._member_key), None)
        if mine is None or (mine.value, mine.lease) != self._published:
            # Removed, expired or rewritten behind our back: the next publish puts it again.
            self._published = None
        items = [(relative_key(self._prefix, kv.key), kv.value, str(kv.mod_revision)) for kv in kvs]
        return keys.to_view(items, self._log)

    async def acquire_leader(self) -> bool:
        name = self._name.encode()
        async with self._write("acquire_leader"):
            lease = await self._live_lease()
            txn = await self._client.txn(
                [self._leader.is_(CompareTarget.CREATE, 0)],
                [PutOp(key=self._leader.key, value=name, lease=lease)],
                [RangeOp(key=self._leader.key)],
            )
            if txn.succeeded:
                self._own(txn.revision)
                self._leader.created = txn.revision  # a new key: created by this put
                return True
            current = txn.ranges[0].kvs[0] if txn.ranges and txn.ranges[0].kvs else None
            if current is None or current.value != name:
                return False
            if current.lease == lease:
                self._leader.created = current.create_revision
                return True  # already ours, on our live lease
            # Our own record from before a restart: bind it to our current lease, unless it
            # changed in between.
            txn = await self._client.txn(
                [
                    self._leader.is_(CompareTarget.VALUE, name),
                    self._leader.is_(CompareTarget.MOD, current.mod_revision),
                ],
                [PutOp(key=self._leader.key, value=name, lease=lease)],
            )
            if txn.succeeded:
                self._own(txn.revision)
                self._leader.created = current.create_revision  # a put keeps the creation
            return txn.succeeded

    async def renew_leader(self) -> bool:
        async with self._request("renew_leader"):
            lease = self._lease
            if lease == 0:
                return False
            sent_at = self._clock.monotonic()
            holding: bool | None = None
            self._mirror_renewals += 1
            if (
                self._mirror.current(sent_at, max_age_s=self._ttl_s)
                and self._mirror_renewals < COMPARE_EVERY_RENEWALS
            ):
                # The keepalive alone, the mirror saying whether the key is still ours; unless
                # another endpoint than the watch's answered (its member may be frozen, the
                # stream silent): then etcd's compare decides (review hreview2 E2).
                ttl = await self._client.lease_keepalive(lease)
                self._mirror.answered(sent_at, self._client.answered_by)
                if ttl > 0 and not self._mirror.current(sent_at, max_age_s=self._ttl_s):
                    holding = (await self._client.txn(self._leader.holding(lease), [])).succeeded
                    self._mirror_renewals = 0
            else:
                # The keepalive and the check that the leader key is still ours are
                # independent (the check writes nothing): sent together, a renewal costs one
                # round trip, not two, so a slow link to etcd (chaos finding 11) fences a
                # healthy primary only at twice the latency it did.
                ttl, txn = await asyncio.gather(
                    self._client.lease_keepalive(lease),
                    self._client.txn(self._leader.holding(lease), []),
                )
                holding = txn.succeeded
                self._mirror_renewals = 0
            if ttl <= 0:
                self._lease_lost(lease)
                return False
            self._kept_alive_at = sent_at
            if holding is not None:
                return holding
            return self._leader.held_in(self._mirror.leader(), lease)

    async def release_leader(self) -> None:
        async with self._write("release_leader"):
            created = self._leader.created
            if created == 0:
                # Not acquired through this handle (a restarted agent releasing the key its
                # predecessor held): learn which incarnation of the key to delete first.
                current = await self._client.range(self._leader.key)
                kv = current.kvs[0] if current.kvs else None
                if kv is None or kv.value != self._name.encode():
                    return
                created = kv.create_revision
            # On the key's creation, not on our name alone: a copy of this request that is
            # applied late (a hedged write, etcd_transport.py) must not delete a key we have
            # acquired again since, with the same name and lease (review R6).
            txn = await self._client.txn(
                [
                    self._leader.is_(CompareTarget.VALUE, self._name.encode()),
                    self._leader.is_(CompareTarget.CREATE, created),
                ],
                [DeleteOp(key=self._leader.key)],
            )
            self._leader.created = 0
            if txn.succeeded:
                self._own(txn.revision)
                self._log.info("dcs_leader_released")

    async def publish_member(self, member: Member) -> None:
        payload = member.to_json().encode()
        async with self._write("publish_member"):
            # A lease that expired anyway fails the put, which grants a new one.
            lease = await self._live_lease(fresh_within_s=self._keepalive_fresh_s)
            if self._published == (payload, lease):
                return  # unchanged: the keepalive above was all that was needed
            try:
                revision = await self._client.put(self._member_key, payload, lease=lease)
            except EtcdLeaseNotFound:
                # Expired between the keepalive and the put: once more on a fresh lease.
                self._lease_lost(lease)
                lease = await self._live_lease()
                revision = await self._client.put(self._member_key, payload, lease=lease)
            self._own(revision)
            self._published = (payload, lease)

    async def write_record(
        self, kind: RecordKind, value: str | None, *, expected_version: str | None
    ) -> bool:
        key = _full_key(self._prefix, keys.record_key(kind))
        expected = keys.expected_version(expected_version)
        if expected is None:
            compare = Compare(
                key=key, target=CompareTarget.CREATE, result=CompareResult.EQUAL, value=0
            )
        else:
            try:
                mod_revision = int(expected)
            except ValueError:
                return False  # not a version this backend produced: it cannot match
            if mod_revision <= 0:
                return False
            compare = Compare(
                key=key, target=CompareTarget.MOD, result=CompareResult.EQUAL, value=mod_revision
            )
        op: TxnOp = DeleteOp(key=key) if value is None else PutOp(key=key, value=value.encode())
        async with self._write("write_record"):
            txn = await self._client.txn([compare], [op])
            if txn.succeeded:
                self._own(txn.revision)
        return txn.succeeded

    async def wait_for_change(self, timeout_s: float) -> bool:
        if self._closed:
            await asyncio.sleep(timeout_s)
            return False
        self._watch.ensure()
        return await self._changes.wait(timeout_s)

    async def close(self) -> None:
        """Stop the watch and close the connections. The lease is not revoked: its keys
        expire after the ttl, as when the agent dies (a clean shutdown releases the leader
        key first, with `release_leader`)."""
        self._closed = True
        await self._watch.stop(_CLOSE_TIMEOUT_S)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self._client.close()

    # ------------------------------------------------------------------ requests, lease

    @contextlib.asynccontextmanager
    async def _request(self, what: str) -> AsyncIterator[None]:
        """One public call: bounded by the deadline; every failure becomes DcsUnavailable.
        Its outcome tells the mirror whether etcd answers (etcd_mirror.py)."""
        sent_at, answers = self._clock.monotonic(), self._client.answers
        try:
            async with self._bounded(what):
                yield
        except BaseException:
            self._mirror.failed()
            raise
        # Only if etcd answered: a publish of an unchanged record may send nothing at all.
        # (An answer to another task's call made meanwhile counts too: sent at most one
        # deadline before ours.)
        if self._client.answers != answers:
            self._mirror.answered(sent_at, self._client.answered_by)

    @contextlib.asynccontextmanager
    async def _bounded(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout_s):
                yield
        except DcsUnavailable:
            raise
        except EtcdLeaseNotFound as exc:
            # Our lease expired under a write: the next call grants a new one.
            self._lease_lost(self._lease)
            raise DcsUnavailable(f"etcd: {what}: {exc}") from exc
        except TimeoutError:
            raise DcsUnavailable(f"etcd: {what}: no answer within {self._timeout_s:g} s") from None
        except (DcsError, OSError) as exc:
            raise DcsUnavailable(f"etcd: {what}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _write(self, what: str) -> AsyncIterator[None]:
        """A public call that may write: its revision is ours, not a change to wake on."""
        with self._changes.writing():
            async with self._request(what):
                yield

    async def _live_lease(self, *, fresh_within_s: float = 0.0) -> int:
        """Our lease, kept alive now (or by a keepalive sent less than `fresh_within_s` ago);
        a new one if there was none or it was lost."""
        async with self._lease_lock:
            if self._lease != 0:
                now = self._clock.monotonic()
                if now - self._kept_alive_at < fresh_within_s:
                    return self._lease
                if await self._client.lease_keepalive(self._lease) > 0:
                    self._kept_alive_at = now
                    return self._lease
                self._lease_lost(self._lease)
            granted_at = self._clock.monotonic()
            lease, granted = await self._client.lease_grant(self._lease_ttl_s)
            self._lease, self._kept_alive_at = lease, granted_at
            self._log.info("dcs_lease_granted", lease=lease, ttl_s=granted)
            return lease

    def _own(self, revision: int) -> None:
        """A write of ours produced `revision`: not a change to wake on, and the mirror is
        not current until the watch has brought it back."""
        self._changes.own(revision)
        self._mirror.own(revision)

    def _lease_lost(self, lease: int) -> None:
        if self._lease == lease:
            self._log.warning("dcs_lease_lost", lease=lease)
            self._lease = 0
            self._published = None


def _full_key(prefix: bytes, relative: str) -> bytes:
    return prefix + relative.encode()


class _LeaderKey:
    """The leader key as this handle compares on it: which incarnation of it we hold, and
    the compares that say it is still ours."""

    def __init__(self, key: bytes, member_name: str) -> None:
        self.key = key
        self._name = member_name.encode()
        # create_revision of the leader key we hold (0: none known). A release and a renewal
        # compare on it, not on our name alone: a late copy of a release (a hedged write
        # applied after we gave up on it) must not delete a key we acquired again since.
        self.created = 0

    def is_(self, target: CompareTarget, value: int | bytes) -> Compare:
        return Compare(key=self.key, target=target, result=CompareResult.EQUAL, value=value)

    def holding(self, lease: int) -> list[Compare]:
        """The leader key names us, on `lease`, and (when known) is the incarnation we
        acquired: one released and taken again since is a new key of ours, not this one."""
        compares = [
            self.is_(CompareTarget.VALUE, self._name),
            self.is_(CompareTarget.LEASE, lease),
        ]
        if self.created != 0:
            compares.append(self.is_(CompareTarget.CREATE, self.created))
        return compares

    def held_in(self, kv: KeyValue | None, lease: int) -> bool:
        """`holding`, judged on a copy of the leader key (the mirror's)."""
        return (
            kv is not None
            and kv.value == self._name
            and kv.lease == lease
            and self.created in (0, kv.create_revision)
        )
