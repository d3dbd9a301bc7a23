"""Member records on pods: this member's own (written with a merge patch of its pod: the
record, a heartbeat, the cluster label), and everyone's as read from the cluster's pods,
expired on this handle's clock (see the package docstring).

A record is written when it changed, or unchanged when its heartbeat is due
(`heartbeat.heartbeat_interval`). While the server throttles (throttle.py) only a change a
peer wakes for is written (role, state, address, tags: `keys.member_signature`); a heartbeat
or a record that only moves WAL positions waits until no 429 came for a while (`recent()`:
5 ttls), so that the leaders' renewals get the server's tokens, except the heartbeat of a
member of the synchronous set (`in_sync_set`): its leader chooses synchronous standbys among
the records it sees, and one that expired there would be dropped from the set, weakening
what commits wait for. A refused write is not sent again inside the call: the next cycle
writes the newest record.

The leader does not heartbeat an unchanged record while it renews its lock: its observers
restart the clock of the record the lock names with each renewal they see (expiry.py), so
a renewal sent counts as a heartbeat written then (`renewed`). Only while every other pod's
record was written by an agent that does so (`objects.lets_lock_vouch`: an older agent
would expire the leader's record) and at least one other member's record is live (its
heartbeats are the pod events that keep this handle's pods cache trusted, cache.py; a lone
member heartbeats as before). A record that changed is written at once; once renewals stop
(released, lost, failed) the heartbeat falls due a heartbeat period after the last one.
After a write of the record failed (a webhook, a 5xx, a 429, a timeout) and until one goes
through (`behind`), the leader's renewals say so (objects.py `RECORD_BEHIND_ANNOTATION`) and
vouch for nothing, and count as no heartbeat: the record its pod still shows (an old role or
state) then expires on its observers a ttl after they last saw it renewed or written, as it
did before renewals vouched (review hreview3 finding 3).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from agent.clock import Clock
from agent.dcs import keys
from agent.dcs.base import DcsUnavailable
from agent.dcs.kubernetes.api import KubeApi, expect
from agent.dcs.kubernetes.expiry import ObservedExpiry
from agent.dcs.kubernetes.objects import (
    KubeObject,
    hash_version,
    lets_lock_vouch,
    member_entry,
    member_patch,
    micro_time,
    name_of,
    resource_version,
    to_bytes,
    written_stamp,
)
from agent.dcs.kubernetes.throttle import ThrottleState
from agent.model import Member

Items = list[tuple[str, bytes, str]]


class MemberRecords:
    """This member's record on its pod, and the records its peers' pods carry."""

    def __init__(
        self,
        api: KubeApi,
        *,
        pod_path: str,
        cluster: str,
        member: str,
        expiry: ObservedExpiry,
        heartbeat_s: float,
        clock: Clock,
        own: Callable[[int], None],
        renewed: Callable[[], float] = lambda: float("-inf"),
    ) -> None:
        """`pod_path`: this member's pod; `own`: told the resourceVersion of each write;
        `renewed`: when the last successful write of the lock naming this member was sent
        (monotonic; -inf for never)."""
        self._api = api
        self._pod_path = pod_path
        self._pod = pod_path.rsplit("/", 1)[-1]
        self._cluster = cluster
        self._member = member
        self._expiry = expiry
        self._heartbeat_s = heartbeat_s
        self._clock = clock
        self._own = own
        self._published: tuple[str, float] | None = None  # (payload, monotonic write time)
        self._renewed = renewed
        # From the last `items`: every other record lets the lock vouch (the pods that carry
        # one), and at least one of them is live.
        self._vouched = False
        self.in_sync_set = False  # named in the `sync` record of the last view read
        self.behind = False  # the last write of our record failed (see the module docstring)
        self._instance = secrets.token_hex(4)  # our writes' `written` stamps (expiry.py)

    @property
    def _throttle(self) -> ThrottleState:
        return self._api.throttle

    async def publish(self, member: Member) -> KubeObject | None:
        """Write `member` on our pod unless it may wait (see the module docstring); the pod
        as written, None when nothing was sent."""
        payload = member.to_json()
        now = self._clock.monotonic()
        if self._waits(payload, now):
            return None
        heartbeat = micro_time(self._clock.wall())
        written = (self._instance, self._clock.monotonic())
        self.behind = True  # until this write is known to have gone through
        response = await self._api.call(
            "PATCH",
            self._pod_path,
            body=member_patch(
                self._cluster, self._member, payload, heartbeat=heartbeat, written=written
            ),
            content_type="application/merge-patch+json",
            resend=False,  # a 429: the next cycle sends the newest record
        )
        if response.status == 404:
            raise DcsUnavailable(f"kubernetes: publish_member: pod {self._pod} not found")
        expect(response, 200)
        self._own(resource_version(response.obj))
        self._published = (payload, now)
        self.behind = False
        return response.obj

    def _waits(self, payload: str, now: float) -> bool:
        """Whether this record need not be written now: unchanged and its heartbeat still
        fresh, or, while the server throttles (a 429 lately), nothing in it a peer wakes for
        changed."""
        if self._published is None:
            return False
        written, written_at = self._published
        if written == payload and self._vouched and not self.behind:
            written_at = max(written_at, self._renewed())  # a renewal is a heartbeat
        if written == payload and now - written_at < self._heartbeat_s:
            return True
        if self.in_sync_set and now - written_at >= self._heartbeat_s:
            return False  # its leader must keep seeing it (see the module docstring)
        return self._throttle.recent() and keys.member_signature(
            to_bytes(written)
        ) == keys.member_signature(to_bytes(payload))

    def items(self, pods: list[Any], now: float) -> tuple[Items, set[tuple[str, str]]]:
        """The member records carried by `pods` that are not expired on our clock, and the
        (key, expiry token) of those that are."""
        items: Items = []
        stale: set[tuple[str, str]] = set()
        mine: str | None = None
        present: set[str] = set()
        vouching, live_peers = True, 0
        for pod in pods:
            entry = member_entry(pod)
            if entry is None:
                continue
            name, value, token = entry
            key = keys.member_key(name)
            present.add(key)
            ours = name_of(pod) == self._pod
            if ours:
                mine = value
            else:
                vouching = vouching and lets_lock_vouch(pod)
            rv, written = resource_version(pod), written_stamp(pod)
            fresh = self._expiry.note(key, token, rv, now, source=name_of(pod), written=written)
            if fresh:
                items.append((key, to_bytes(value), hash_version(value)))
                live_peers += not ours
            else:
                stale.add((key, token))
        self._vouched = vouching and live_peers > 0
        # Pods or records that went away: nothing left to expire. The list is complete as of
        # at least its newest pod (a cache that lags forgets nothing it saw written since).
        listed_rv = max((resource_version(p) for p in pods if isinstance(p, dict)), default=0)
        self._expiry.forget_all_but(present, prefix=keys.MEMBERS, rv=listed_rv)
        if mine is None or (self._published is not None and self._published[0] != mine):
            self._published = None  # removed or rewritten behind our back: publish again
        return items, stale
