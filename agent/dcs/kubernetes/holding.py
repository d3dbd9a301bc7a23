"""This handle's side of one lock object: take, renew and release it, each write conditional
on the resourceVersion read or last written (DESIGN.md invariant 1), and what it last wrote.

The backend holds one `LockHolder` per lock object of its `LockKind`: one, or two during a
migration from the Endpoints lock to the Lease lock (`endpoints-and-lease`, where leadership
means holding both). Expiry is judged on the handle's own clock (`expiry.ObservedExpiry`,
under this holder's `key`), never from the times written into the object.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import StrEnum

import structlog

from agent.dcs import keys
from agent.dcs.kubernetes.api import KubeApi, expect
from agent.dcs.kubernetes.expiry import ObservedExpiry
from agent.dcs.kubernetes.locks import LockObject
from agent.dcs.kubernetes.objects import (
    RECORD_BEHIND_ANNOTATION,
    THROTTLED_ANNOTATION,
    KubeObject,
    annotations_of,
    micro_time,
    resource_version,
    to_bytes,
    vouched_record,
)

_RELEASE_ATTEMPTS = 5  # conflicts on the lock object caused by others' annotations
_RENEW_ATTEMPTS = 2

# Builds the object `lock` must be after a write over `current` (None: create) that names
# `holder` (None: releases).
Body = Callable[[KubeObject | None, str | None, LockObject], KubeObject]


class Renewal(StrEnum):
    RENEWED = "renewed"
    LOST = "lost"  # the object names someone else, or is gone
    CONFLICT = "conflict"  # still ours, but changed behind our back on every attempt


def expiry_key(lock: LockObject) -> str:
    """The key under which a handle times the leader record of `lock` (one per object)."""
    return f"{keys.LEADER}@{lock.name}"


class LockHolder:
    """Takes, renews and releases one lock object for the member `member`."""

    def __init__(
        self,
        api: KubeApi,
        lock: LockObject,
        *,
        member: str,
        expiry: ObservedExpiry,
        own: Callable[[int], None],
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._api = api
        self.lock = lock
        self.key = expiry_key(lock)
        self._member = member
        self._expiry = expiry
        self._own = own  # told the resourceVersion of each of our writes
        self._log = log.bind(lock_object=lock.name)
        self.obj: KubeObject | None = None  # as returned by our last write while holding

    async def take(self, body: Body, *read: KubeObject | None, sent: float, now: float) -> bool:
        """Take the lock if it is free, ours, or expired on our clock; `sent` is when the
        operation began; `read`: the object as just read from the server (None: there was
        none), not read again unless it shows a live holder (the write is conditional on
        it: a change since is a 409)."""
        current = read[0] if read else await self._api.get(self.lock.path())
        if current is None:
            created = await self._api.call(
                "POST", self.lock.path(named=False), body=body(None, self._member, self.lock)
            )
            if created.status == 409:
                return False
            expect(created, 201, 200)
            self._took(created.obj, now)
            return True
        holder, rv = self.lock.holder(current), resource_version(current)
        if holder:
            self._expiry.note(self.key, str(rv), rv, sent, vouches=vouched_record(current, holder))
        expired = self._expiry.is_expired(self.key, rv, now)
        if holder and holder != self._member and not expired:
            # Held, as read before the call: read again, it may have been released since.
            return bool(read) and await self.take(body, sent=sent, now=now)
        written = body(current, self._member, self.lock)
        put = await self._api.call("PUT", self.lock.path(), body=written)
        if put.status in (404, 409):
            return False  # someone else wrote it first
        expect(put, 200)
        self._took(put.obj, now)
        if holder != self._member:
            self._log.info("dcs_leader_acquired", previous=holder or None)
        return True

    async def renew(self, body: Body, *, now: float, send_by: float | None = None) -> Renewal:
        """Write the lock again over what we last wrote; on a conflict, re-read it and
        retry once if it still names us. `send_by`: the last moment the write can be sent
        and answered before our fencing deadline (a 429 is sent again by it, api.py)."""
        current = self.obj
        if current is None:
            return Renewal.LOST
        for _ in range(_RENEW_ATTEMPTS):
            # Built again for each send: one sent again after a 429 says we were refused.
            written = functools.partial(body, current, self._member, self.lock)
            put = await self._api.call("PUT", self.lock.path(), body=written, send_by=send_by)
            if put.status == 200:
                self._took(put.obj, now)
                return Renewal.RENEWED
            if put.status not in (404, 409):
                expect(put, 200)
            # Changed behind our back: still ours (an annotation by someone else)?
            fresh = await self._api.get(self.lock.path())
            if fresh is None or self.lock.holder(fresh) != self._member:
                self.obj = None
                return Renewal.LOST
            current = fresh
        return Renewal.CONFLICT

    async def release(self, body: Body) -> None:
        """Empty the lock if it still names us (it may already name someone else)."""
        for _ in range(_RELEASE_ATTEMPTS):
            current = await self._api.get(self.lock.path())
            if current is None or self.lock.holder(current) != self._member:
                self.obj = None
                return
            put = await self._api.call("PUT", self.lock.path(), body=body(current, None, self.lock))
            if put.status == 409:
                continue
            self.obj = None
            if put.status == 404:
                return
            expect(put, 200)
            self._own(rv := resource_version(put.obj))
            self._expiry.forget(self.key, rv=rv)
            self._log.info("dcs_leader_released")
            return

    def _took(self, obj: KubeObject, now: float) -> None:
        rv = resource_version(obj)
        self._own(rv)
        self.obj = obj
        self._expiry.note(self.key, str(rv), rv, now, vouches=vouched_record(obj, self._member))


def leader_items(
    lock: LockObject, key: str, obj: KubeObject | None, expiry: ObservedExpiry, now: float
) -> list[tuple[str, bytes, str]]:
    """The leader record `obj` holds, unless it names nobody or is expired on our clock
    (which this observation restarts when the record changed, and with it the clock of the
    holder's member record: expiry.py)."""
    if obj is None:
        return []
    holder, rv = lock.holder(obj), resource_version(obj)
    if not holder:
        expiry.forget(key, rv=rv)
        return []
    if not expiry.note(key, str(rv), rv, now, vouches=vouched_record(obj, holder)):
        return []
    return [(keys.LEADER, to_bytes(holder), str(rv))]


def lock_body(
    wall: float,
    ip: str | None,
    throttled: Callable[[], bool] = lambda: False,
    behind: Callable[[], bool] = lambda: False,
) -> Body:
    """The lock objects' writer for one operation at wall-clock time `wall` (`ip`: ours,
    where they route; `throttled()`: we got a 429 lately, said to our replicas, throttle.py,
    asked at each build: a write refused with a 429 is sent again saying so; `behind()`: our
    last member record write failed, said so that the renewal vouches for no record)."""
    now = micro_time(wall)

    def body(current: KubeObject | None, holder: str | None, lock: LockObject) -> KubeObject:
        written = lock.body(current, holder=holder, ip=ip if holder else None, now=now)
        meta = written.setdefault("metadata", {})
        notes = dict(meta.get("annotations") or {})
        notes.pop(THROTTLED_ANNOTATION, None)
        notes.pop(RECORD_BEHIND_ANNOTATION, None)
        if holder and throttled():
            notes[THROTTLED_ANNOTATION] = "true"
        if holder and behind():
            notes[RECORD_BEHIND_ANNOTATION] = "true"
        meta["annotations"] = notes
        return written

    return body


def says_throttled(locks: list[KubeObject | None]) -> bool:
    """Whether a lock object's holder says it got a 429 lately (throttle.py `told`)."""
    return any(THROTTLED_ANNOTATION in annotations_of(obj) for obj in locks if obj is not None)


def view_leader_items(
    holders: tuple[LockHolder, ...],
    locks: list[KubeObject | None],
    expiry: ObservedExpiry,
    now: float,
    log: structlog.typing.FilteringBoundLogger,
) -> list[tuple[str, bytes, str]]:
    """The leader record: the holder named by the lock objects (one, or during a migration
    two, which name the same member unless an agent of the old kind took the Endpoints
    alone; then the Endpoints' holder is the leader the old agents follow)."""
    found: list[tuple[str, bytes, str]] = []
    for holder, obj in zip(holders, locks, strict=True):
        found += leader_items(holder.lock, holder.key, obj, expiry, now)
    names = {value for _, value, _ in found}
    if len(names) > 1:
        log.warning("dcs_lock_objects_disagree", holders=sorted(n.decode() for n in names))
    return found[:1]
