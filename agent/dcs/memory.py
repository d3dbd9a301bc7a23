"""In-memory DCS with fault injection: the fake the HA loop's unit tests use.

One `MemoryStore` stands for the store of one test cluster; each member gets its own
`MemoryDcs` handle on it. The store mimics etcd closely enough for the contract suite to hold
unchanged: every key has a create and a mod revision (versions are `str(mod_revision)`), each
handle owns one lease (granted lazily, re-granted when lost), the leader record and the
member record are bound to it, and a lease whose deadline has passed on the store's clock
is revoked with every key bound to it.

Time: leases are judged on the injected `Clock` (a `FakeClock` in tests). Nothing runs in
the background, so after `FakeClock.advance()` call `store.expire_leases()` (the store's
"timer"); every operation of every handle also expires what is due before it acts.

Faults (test controls, mutable on purpose):
- `store.faults` applies to every handle, `handle.faults` to one handle:
  `unavailable` (every call raises `DcsUnavailable` at once), `throttled_s` (every call
  raises `DcsThrottled` at once, asking for that long a wait: an API server's 429 and
  Retry-After), `slow_s` (every call first
  waits that long on the event loop, so the handle's request deadline and callers' own
  timeouts apply), `lose_races` (the next N `acquire_leader` / `write_record` calls lose as
  if another member had won: False, nothing written).
- `store.partition(name)` cuts every handle of that member off (calls raise
  `DcsUnavailable` at once, changes do not wake it) until `store.heal(name)`; changes made
  meanwhile wake it once it is healed. Its lease keeps running down, as across a real
  partition.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import structlog

from agent.clock import Clock
from agent.dcs import keys
from agent.dcs.base import DcsThrottled, DcsUnavailable
from agent.model import ClusterView, Member, RecordKind


@dataclass(slots=True, kw_only=True)
class Faults:
    """Fault switches; tests flip them at any time."""

    unavailable: bool = False
    throttled_s: float | None = None
    slow_s: float = 0.0
    lose_races: int = 0


@dataclass(slots=True, kw_only=True)
class _Entry:
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int  # 0: not bound to a lease


class MemoryStore:
    """The shared store of one test cluster. Keys are relative (`leader`, `members/a`, `config`)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.faults = Faults()
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._leases: dict[int, float] = {}  # lease id -> deadline on the store's clock
        self._lease_ids = itertools.count(1)
        self._revision = 0
        self._handles: list[MemoryDcs] = []
        self._partitioned: set[str] = set()

    # ------------------------------------------------------------------ test controls

    @property
    def clock(self) -> Clock:
        if self._clock is None:
            raise RuntimeError("this store has no clock yet: give one to it or to a handle")
        return self._clock

    @property
    def revision(self) -> int:
        return self._revision

    def partition(self, name: str) -> None:
        self._partitioned.add(name)

    def heal(self, name: str) -> None:
        self._partitioned.discard(name)

    def is_partitioned(self, name: str) -> bool:
        return name in self._partitioned

    def get_raw(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        return entry.value if entry is not None else None

    def put_raw(self, key: str, value: bytes | str) -> None:
        """Write anything (garbage too) under any key, bound to no lease; wakes every handle."""
        data = value.encode() if isinstance(value, str) else value
        self._put(key, data, lease=0, author=None)

    def delete_raw(self, key: str) -> None:
        self._delete(key, author=None)

    def expire_leases(self) -> None:
        """Revoke every lease whose deadline has passed, deleting the keys bound to it."""
        if self._clock is None:
            return
        now = self._clock.monotonic()
        for lease_id in [lid for lid, deadline in self._leases.items() if deadline <= now]:
            del self._leases[lease_id]
            for key in [k for k, e in self._entries.items() if e.lease == lease_id]:
                self._delete(key, author=None)

    # ------------------------------------------------------------------ for handles

    def _attach(self, handle: MemoryDcs, clock: Clock | None) -> None:
        if clock is not None:
            if self._clock is None:
                self._clock = clock
            elif clock is not self._clock:
                raise ValueError("one store, one clock: lease expiry is judged by the store")
        self._handles.append(handle)

    def _detach(self, handle: MemoryDcs) -> None:
        if handle in self._handles:
            self._handles.remove(handle)

    def _entry(self, key: str) -> _Entry | None:
        return self._entries.get(key)

    def _items(self) -> list[tuple[str, bytes, str]]:
        return [(k, e.value, str(e.mod_revision)) for k, e in sorted(self._entries.items())]

    def _grant(self, ttl_s: float) -> int:
        lease_id = next(self._lease_ids)
        self._leases[lease_id] = self.clock.monotonic() + ttl_s
        return lease_id

    def _keepalive(self, lease_id: int, ttl_s: float) -> bool:
        if lease_id not in self._leases:
            return False
        self._leases[lease_id] = self.clock.monotonic() + ttl_s
        return True

    def _put(self, key: str, value: bytes, *, lease: int, author: MemoryDcs | None) -> None:
        self._revision += 1
        old = self._entries.get(key)
        created = old.create_revision if old is not None else self._revision
        self._entries[key] = _Entry(
            value=value, create_revision=created, mod_revision=self._revision, lease=lease
        )
        # A member record is a heartbeat rewritten often: a new WAL position wakes nobody, or
        # members would wake each other in a ring under write load; a new role, state or
        # address does (see base.py, point 8).
        if keys.is_quiet_key(key):
            return  # the leader's position heartbeat wakes nobody either (point 8)
        if (
            not keys.is_member_key(key)
            or old is None
            or (keys.member_signature(old.value) != keys.member_signature(value))
        ):
            self._notify(author)

    def _delete(self, key: str, *, author: MemoryDcs | None) -> None:
        if self._entries.pop(key, None) is None:
            return
        self._revision += 1
        if not keys.is_quiet_key(key):
            self._notify(author)

    def _notify(self, author: MemoryDcs | None) -> None:
        for handle in self._handles:
            if handle is not author:
                handle._on_change()


class MemoryDcs:
    """One member's handle on a `MemoryStore`; keeps the contract in `agent/dcs/base.py`.

    `timeout_s` is the request deadline: a call that cannot complete within it (a slow
    fault) raises `DcsUnavailable` when it passes.
    """

    def __init__(
        self,
        store: MemoryStore,
        member_name: str,
        *,
        ttl_s: float,
        clock: Clock | None = None,
        timeout_s: float = 1.0,
    ) -> None:
        self.faults = Faults()
        self._store = store
        self._name = member_name
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._lease = 0
        self._published: tuple[bytes, int] | None = None  # (payload, lease) of the last put
        self._changed = asyncio.Event()
        self._missed = False  # a change arrived while this member was cut off
        self._closed = False
        self._log = structlog.get_logger("pgwarden.dcs").bind(backend="memory", member=member_name)
        store._attach(self, clock)

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    @property
    def name(self) -> str:
        return self._name

    # ------------------------------------------------------------------ the protocol

    async def get_cluster(self) -> ClusterView:
        await self._enter()
        store = self._store
        mine = store._entry(keys.member_key(self._name))
        if self._published is not None and (mine is None or mine.value != self._published[0]):
            self._published = None  # someone removed or rewrote our record: put it again
        return keys.to_view(store._items(), self._log)

    async def acquire_leader(self) -> bool:
        await self._enter()
        if self._lose_race():
            return False
        lease = self._live_lease()
        leader = self._store._entry(keys.LEADER)
        if leader is not None and leader.value != self._name.encode():
            return False
        if leader is None or leader.lease != lease:
            self._store._put(keys.LEADER, self._name.encode(), lease=lease, author=self)
        return True

    async def renew_leader(self) -> bool:
        await self._enter()
        # An expired lease is never replaced here: that would re-create the leader key
        # after others could already have seen it gone.
        if self._lease == 0 or not self._store._keepalive(self._lease, self._ttl_s):
            self._lease = 0
            return False
        leader = self._store._entry(keys.LEADER)
        return (
            leader is not None
            and leader.value == self._name.encode()
            and leader.lease == self._lease
        )

    async def release_leader(self) -> None:
        await self._enter()
        leader = self._store._entry(keys.LEADER)
        if leader is not None and leader.value == self._name.encode():
            self._store._delete(keys.LEADER, author=self)

    async def publish_member(self, member: Member) -> None:
        await self._enter()
        lease = self._live_lease()
        payload = member.to_json().encode()
        if self._published == (payload, lease):
            return
        self._store._put(keys.member_key(self._name), payload, lease=lease, author=self)
        self._published = (payload, lease)

    async def write_record(
        self, kind: RecordKind, value: str | None, *, expected_version: str | None
    ) -> bool:
        await self._enter()
        if self._lose_race():
            return False
        key = keys.record_key(kind)
        entry = self._store._entry(key)
        expected = keys.expected_version(expected_version)
        if expected is None:
            if entry is not None:
                return False
        elif entry is None or str(entry.mod_revision) != expected:
            return False
        if value is None:
            self._store._delete(key, author=self)
        else:
            self._store._put(key, value.encode(), lease=0, author=self)
        return True

    async def wait_for_change(self, timeout_s: float) -> bool:
        if self._cut_off():
            await asyncio.sleep(timeout_s)  # nothing reaches a cut-off member
            return False
        if self._missed:  # changes made while it was cut off reach it once it is back
            self._missed = False
            self._changed.set()
        try:
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()
        except TimeoutError:
            return False
        self._changed.clear()
        return True

    async def close(self) -> None:
        """Forget this handle (its lease runs out on its own, as an agent's does when it stops)."""
        self._closed = True
        self._store._detach(self)

    # ------------------------------------------------------------------ internals

    def _on_change(self) -> None:
        if self._cut_off():
            self._missed = True
        else:
            self._changed.set()

    def _cut_off(self) -> bool:
        return (
            self._store.faults.unavailable
            or self.faults.unavailable
            or self._store.is_partitioned(self._name)
        )

    async def _enter(self) -> None:
        """Apply the faults, then the store's lease expiry. Always yields once, so that
        concurrent callers interleave as they would over a network."""
        if self._closed:
            raise DcsUnavailable(f"{self._name}: this DCS handle is closed")
        if self._cut_off():
            # A refused connection goes through the event loop too: without this yield, a
            # loop that retried at once spun without ever letting another task (or virtual
            # time, tests/unit/fakes/virtual_time.py) run.
            await asyncio.sleep(0)
            raise DcsUnavailable(f"{self._name}: store unreachable (injected)")
        if (wait_s := self.faults.throttled_s) is not None:
            await asyncio.sleep(0)
            raise DcsThrottled(f"{self._name}: throttled (injected)", retry_after_s=wait_s)
        try:
            async with asyncio.timeout(self._timeout_s):
                await asyncio.sleep(max(self._store.faults.slow_s, self.faults.slow_s))
        except TimeoutError:
            raise DcsUnavailable(
                f"{self._name}: no answer within {self._timeout_s} s (injected)"
            ) from None
        if self._cut_off():
            raise DcsUnavailable(f"{self._name}: store unreachable (injected)")
        self._store.expire_leases()

    def _lose_race(self) -> bool:
        for faults in (self._store.faults, self.faults):
            if faults.lose_races > 0:
                faults.lose_races -= 1
                return True
        return False

    def _live_lease(self) -> int:
        """This handle's lease, kept alive; a new one if it was lost."""
        if self._lease == 0 or not self._store._keepalive(self._lease, self._ttl_s):
            self._lease = self._store._grant(self._ttl_s)
        return self._lease
