"""etcd v3 backend: one lease per agent, compare-and-set transactions, one prefix watch.

Keys live under `/<namespace>/<cluster>/` (layout in `agent.dcs.keys`): `leader` and
`members/<name>` are bound to the agent's lease; `initialize`, `config`, `sync`,
`switchover`, `history` are bound to none. Versions are `str(mod_revision)`.

The lease (ttl = `ttl_s` rounded up) is granted lazily and kept alive only by the calls the
HA loop makes (`renew_leader`, `publish_member`, `acquire_leader`): no background keepalive,
so an agent whose loop stalls loses its lease on time. A lost lease is re-granted by the next
`acquire_leader` / `publish_member`, never by `renew_leader` (which would silently re-create
a leader key that others may already have seen gone).

Every public call runs under one deadline (`timeout_s`) and raises `DcsUnavailable` (or
its subclass `DcsAuthError`) when etcd cannot be reached, refuses us, or does not answer in
time. `wait_for_change` is fed by a long-lived named watch task on the prefix, started by the
first `wait_for_change`; the watch never raises into the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Sequence

import structlog

from agent.config import Settings
from agent.dcs import keys
from agent.dcs.base import DcsError, DcsUnavailable
from agent.dcs.etcd_client import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteOp,
    EtcdClient,
    EtcdCompacted,
    EtcdLeaseNotFound,
    EventType,
    PutOp,
    RangeOp,
    TxnOp,
    WatchEvent,
)
from agent.model import ClusterView, Member, RecordKind

# The HA loop bounds each DCS call by `retry_timeout_s`; ours is shorter, so that the loop
# hears `DcsUnavailable` with its reason from us rather than a bare timeout of its own.
_REQUEST_SHARE_OF_RETRY_TIMEOUT = 0.9

_WATCH_BACKOFF_FIRST_S = 0.1
_WATCH_BACKOFF_MAX_S = 2.0
_CLOSE_TIMEOUT_S = 2.0
_OWN_REVISIONS_KEPT = 1024


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
        self._timeout_s = timeout_s
        self._prefix = f"/{namespace.strip('/')}/{cluster.strip('/')}/".encode()
        self._leader_key = self._key(keys.LEADER)
        self._member_key = self._key(keys.member_key(member_name))
        self._lease = 0
        self._lease_lock = asyncio.Lock()
        # Send time (loop clock) of the last keepalive that found the lease alive: a member
        # record published soon after needs no keepalive of its own (idle CPU, requests).
        self._kept_alive_at = -math.inf
        self._published: tuple[bytes, int] | None = None  # (payload, lease) of the last put
        # Change tracking for wait_for_change (base.py, point 8).
        self._read_revision = 0  # header revision of the first get_cluster: the watch start
        self._own: set[int] = set()  # revisions of our own writes
        self._writes_in_flight = 0  # own writes whose revision is not known yet
        self._pending: set[int] = set()  # revisions of changes the watch delivered, not yet told
        self._watched_to = 0  # the watch has delivered every event below this revision
        self._resync = False  # the watch lost events (compaction): wake, the caller re-reads
        self._changed = asyncio.Event()
        self._member_signatures: dict[str, str] = {}  # member key -> last seen signature
        self._watch_task: asyncio.Task[None] | None = None
        self._closed = False
        self._log = structlog.get_logger("pgwarden.dcs").bind(
            backend="etcd", cluster=cluster, member=member_name
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> EtcdDcs:
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
            ca_file=etcd.ca_file,
            cert_file=etcd.cert_file,
            key_file=etcd.key_file,
            username=etcd.username,
            password=etcd.password.reveal() if etcd.password is not None else None,
        )

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    @property
    def prefix(self) -> bytes:
        return self._prefix

    # ------------------------------------------------------------------ the protocol

    async def get_cluster(self) -> ClusterView:
        async with self._request("get_cluster"):
            result = await self._client.range(self._prefix, prefix=True)
        # Deliberately not "consumed" here: the API reads through this handle too, and a read
        # by another task must not swallow a wake meant for the HA loop (base.py, point 8).
        if self._read_revision == 0:
            self._read_revision = result.revision
        mine = next((kv for kv in result.kvs if kv.key == self._member_key), None)
        if mine is None or (mine.value, mine.lease) != self._published:
            # Removed, expired or rewritten behind our back: the next publish puts it again.
            self._published = None
        items = [(self._relative(kv.key), kv.value, str(kv.mod_revision)) for kv in result.kvs]
        return keys.to_view(items, self._log)

    async def acquire_leader(self) -> bool:
        name = self._name.encode()
        async with self._write("acquire_leader"):
            lease = await self._live_lease()
            txn = await self._client.txn(
                [
                    Compare(
                        key=self._leader_key,
                        target=CompareTarget.CREATE,
                        result=CompareResult.EQUAL,
                        value=0,
                    )
                ],
                [PutOp(key=self._leader_key, value=name, lease=lease)],
                [RangeOp(key=self._leader_key)],
            )
            if txn.succeeded:
                self._remember_own(txn.revision)
                return True
            current = txn.ranges[0].kvs[0] if txn.ranges and txn.ranges[0].kvs else None
            if current is None or current.value != name:
                return False
            if current.lease == lease:
                return True  # already ours, on our live lease
            # Our own record from before a restart: bind it to our current lease, unless it
            # changed in between.
            txn = await self._client.txn(
                [
                    Compare(
                        key=self._leader_key,
                        target=CompareTarget.VALUE,
                        result=CompareResult.EQUAL,
                        value=name,
                    ),
                    Compare(
                        key=self._leader_key,
                        target=CompareTarget.MOD,
                        result=CompareResult.EQUAL,
                        value=current.mod_revision,
                    ),
                ],
                [PutOp(key=self._leader_key, value=name, lease=lease)],
            )
            if txn.succeeded:
                self._remember_own(txn.revision)
            return txn.succeeded

    async def renew_leader(self) -> bool:
        async with self._request("renew_leader"):
            lease = self._lease
            if lease == 0:
                return False
            sent_at = asyncio.get_running_loop().time()
            if await self._client.lease_keepalive(lease) <= 0:
                self._lease_lost(lease)
                return False
            self._kept_alive_at = sent_at
            txn = await self._client.txn(
                [
                    Compare(
                        key=self._leader_key,
                        target=CompareTarget.VALUE,
                        result=CompareResult.EQUAL,
                        value=self._name.encode(),
                    ),
                    Compare(
                        key=self._leader_key,
                        target=CompareTarget.LEASE,
                        result=CompareResult.EQUAL,
                        value=lease,
                    ),
                ],
                [],
            )
            return txn.succeeded

    async def release_leader(self) -> None:
        async with self._write("release_leader"):
            txn = await self._client.txn(
                [
                    Compare(
                        key=self._leader_key,
                        target=CompareTarget.VALUE,
                        result=CompareResult.EQUAL,
                        value=self._name.encode(),
                    )
                ],
                [DeleteOp(key=self._leader_key)],
            )
            if txn.succeeded:
                self._remember_own(txn.revision)
                self._log.info("dcs_leader_released")

    async def publish_member(self, member: Member) -> None:
        payload = member.to_json().encode()
        async with self._write("publish_member"):
            lease = await self._live_lease(fresh_within_s=self._lease_ttl_s / 4)
            if self._published == (payload, lease):
                return  # unchanged: the keepalive above was all that was needed
            try:
                revision = await self._client.put(self._member_key, payload, lease=lease)
            except EtcdLeaseNotFound:
                # Expired between the keepalive and the put: once more on a fresh lease.
                self._lease_lost(lease)
                lease = await self._live_lease()
                revision = await self._client.put(self._member_key, payload, lease=lease)
            self._remember_own(revision)
            self._published = (payload, lease)

    async def write_record(
        self, kind: RecordKind, value: str | None, *, expected_version: str | None
    ) -> bool:
        key = self._key(keys.record_key(kind))
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
                self._remember_own(txn.revision)
        return txn.succeeded

    async def wait_for_change(self, timeout_s: float) -> bool:
        if self._closed:
            await asyncio.sleep(timeout_s)
            return False
        self._ensure_watch()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            # While one of our writes is in flight, its event may arrive before we learn its
            # revision: judge only when none is (they are bounded by the request deadline).
            if self._resync or (self._pending and self._writes_in_flight == 0):
                foreign = self._pending - self._own
                self._pending.clear()
                self._own = {r for r in self._own if r >= self._watched_to}
                if foreign or self._resync:
                    self._resync = False
                    self._changed.clear()
                    return True
            self._changed.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._changed.wait()
            except TimeoutError:
                return False

    async def close(self) -> None:
        """Stop the watch and close the connections. The lease is not revoked: its keys
        expire after the ttl, as when the agent dies (a clean shutdown releases the leader
        key first, with `release_leader`)."""
        self._closed = True
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await task
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self._client.close()

    # ------------------------------------------------------------------ requests, lease

    @contextlib.asynccontextmanager
    async def _request(self, what: str) -> AsyncIterator[None]:
        """One public call: bounded by the deadline; every failure becomes DcsUnavailable."""
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
        self._writes_in_flight += 1
        try:
            async with self._request(what):
                yield
        finally:
            self._writes_in_flight -= 1
            if self._writes_in_flight == 0 and self._pending:
                self._changed.set()  # let a waiter judge what arrived meanwhile

    def _remember_own(self, revision: int) -> None:
        self._own.add(revision)
        if len(self._own) > _OWN_REVISIONS_KEPT:
            # Only reached without a running watch; a forgotten one costs one spurious wake.
            self._own.discard(min(self._own))

    async def _live_lease(self, *, fresh_within_s: float = 0.0) -> int:
        """Our lease, kept alive now (or by a keepalive sent less than `fresh_within_s` ago);
        a new one if there was none or it was lost."""
        async with self._lease_lock:
            if self._lease != 0:
                now = asyncio.get_running_loop().time()
                if now - self._kept_alive_at < fresh_within_s:
                    return self._lease
                if await self._client.lease_keepalive(self._lease) > 0:
                    self._kept_alive_at = now
                    return self._lease
                self._lease_lost(self._lease)
            granted_at = asyncio.get_running_loop().time()
            lease, granted = await self._client.lease_grant(self._lease_ttl_s)
            self._lease, self._kept_alive_at = lease, granted_at
            self._log.info("dcs_lease_granted", lease=lease, ttl_s=granted)
            return lease

    def _lease_lost(self, lease: int) -> None:
        if self._lease == lease:
            self._log.warning("dcs_lease_lost", lease=lease)
            self._lease = 0
            self._published = None

    # ------------------------------------------------------------------ watch

    def _ensure_watch(self) -> None:
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.create_task(
                self._watch_forever(), name=f"dcs-etcd-watch-{self._name}"
            )

    async def _watch_forever(self) -> None:
        """Feed `_pending` from a watch on the prefix, forever. Every failure is logged and
        followed by a resume; a compacted start wakes the caller to re-read."""
        start = 0
        backoff_s = _WATCH_BACKOFF_FIRST_S
        while True:
            try:
                if start == 0:
                    start = await self._watch_start()
                async for batch in self._client.watch(self._prefix, start_revision=start):
                    backoff_s = _WATCH_BACKOFF_FIRST_S
                    for event in batch.events:
                        start = event.kv.mod_revision + 1
                        self._on_event(event)
                    self._watched_to = start
            except EtcdCompacted as exc:
                # Changes between our start and the compaction are lost: make the caller
                # re-read, and watch on from the oldest revision still kept.
                self._log.warning(
                    "dcs_watch_compacted", start=start, compact_revision=exc.compact_revision
                )
                start = exc.compact_revision
                self._resync = True
                self._changed.set()
            except Exception as exc:  # the watch must outlive any trouble; it is logged
                self._log.warning("dcs_watch_failed", error=repr(exc), resume_at=start)
                await asyncio.sleep(backoff_s)
                backoff_s = min(2 * backoff_s, _WATCH_BACKOFF_MAX_S)

    async def _watch_start(self) -> int:
        if self._read_revision > 0:
            return self._read_revision + 1
        # Never read: nothing to be newer than; start at the store's current revision.
        async with asyncio.timeout(self._timeout_s):
            result = await self._client.range(self._leader_key)
        return result.revision + 1

    def _on_event(self, event: WatchEvent) -> None:
        relative = self._relative(event.kv.key)
        if keys.is_member_key(relative):
            # A heartbeat (new WAL positions only) wakes nobody; a new role, state or
            # address does, and so does a record that appears or goes (base.py, point 8).
            if event.type is EventType.DELETE:
                self._member_signatures.pop(relative, None)
            else:
                signature = keys.member_signature(event.kv.value)
                if self._member_signatures.get(relative) == signature:
                    return
                self._member_signatures[relative] = signature
        self._pending.add(event.kv.mod_revision)
        self._changed.set()

    # ------------------------------------------------------------------ keys

    def _key(self, relative: str) -> bytes:
        return self._prefix + relative.encode()

    def _relative(self, key: bytes) -> str:
        return key[len(self._prefix) :].decode("utf-8", errors="replace")
