"""The DCS protocol: the few operations the HA loop needs, and the contract every backend keeps.

A backend is built for one member of one cluster (it knows its own member name and, where it
matters, its own address). Every method is bounded by the backend's request deadline: when
the store cannot be reached it raises `DcsUnavailable` within that deadline and never hangs.
A backend can be constructed while the store is down; nothing is sent before the first call.

Contract (tests/contract/dcs_contract.py checks each line against every backend):

1. `get_cluster()` returns one consistent snapshot (parsed by `model.parse_cluster`); records
   that fail to parse are logged and read as absent.
2. `acquire_leader()` succeeds only if there is no leader record, or the record already
   names this member (a restarted agent takes its own lease back). Atomic: of concurrent
   callers, at most one gets True.
3. `renew_leader()` extends this member's lease and returns True only if the leader record
   still names this member. The lease then stays valid for at least `ttl_s` after the moment
   the call was *sent* (the caller records that moment; see DESIGN.md section 3).
4. `release_leader()` deletes the leader record only if it names this member; otherwise it
   does nothing. After it returns, other members' `wait_for_change` wakes.
5. A leader that stops renewing loses the record `ttl_s` after its last renewal (judged by
   the store, or by each observer's own clock from when it last saw the record change).
6. `publish_member(member)` writes this member's record; it disappears when this member's
   lease expires (etcd) or stays with a stale heartbeat (Kubernetes pods go away themselves).
   Publishing an unchanged record again may skip the write (its version stays) but still
   keeps this member's lease alive.
7. `write_record(kind, value, expected_version)` is a compare-and-set: with
   `expected_version=None` (or "", what `ClusterView` reports for an absent record) it
   succeeds only if the record is absent; with a version, only if the record still has that
   version (a version this backend never produced never matches); `value=None` deletes.
   Returns False on a lost race.
8. `wait_for_change(timeout_s)` returns True as soon as something under the cluster changed
   since it last returned True (for the first call: since the handle's first
   `get_cluster()`, or since the call), False on timeout. Each change wakes it at most once,
   and may do so even if a `get_cluster()` already returned it: reads do not consume
   changes, because other tasks (the API) read through the same handle and must not swallow
   a wake meant for the HA loop. What counts: a change made by another member or by the
   store itself (a lease expiring) to the leader record, to any `RecordKind` record, a
   member record that appears or disappears, or one whose role, state, address or tags
   change. Not counted: this handle's own writes (its callers know of them), and other
   members re-publishing their records with only new WAL positions (a heartbeat written
   every cycle under write load: waking on it would make members wake each other in a
   ring), nor writes of the quiet records (`model.QUIET_RECORDS`: the leader's `position`).
   It never raises for a dropped watch stream: it resumes, and on a compacted
   revision wakes so the caller re-reads.
9. Records (point 7) are bound to no lease: the `position` record the leader writes stays
   after the leader's lease, its member record and its agent are gone, so that a member
   whose agent restarted after the leader died still knows how far the leader was.

Versions are opaque strings; compare them only for equality.
"""

from __future__ import annotations

from typing import Protocol

from agent.model import ClusterView, Member, RecordKind


class DcsError(Exception):
    """Base of all DCS errors."""


class DcsUnavailable(DcsError):
    """The store could not be reached, or did not answer within the deadline."""


class DcsAuthError(DcsUnavailable):
    """The store refused our credentials (also unavailable, for the HA loop)."""


class DcsThrottled(DcsUnavailable):
    """The store refused the request for now, to shed load (Kubernetes: 429 Too Many
    Requests); `retry_after_s`: how long to wait before sending it again, when it said (the
    caller waits that long rather than retrying at once)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Dcs(Protocol):
    """One member's handle on the cluster's records. See the module docstring for the contract."""

    @property
    def ttl_s(self) -> float: ...

    async def get_cluster(self) -> ClusterView: ...

    async def acquire_leader(self) -> bool: ...

    async def renew_leader(self) -> bool: ...

    async def release_leader(self) -> None: ...

    async def publish_member(self, member: Member) -> None: ...

    async def write_record(
        self, kind: RecordKind, value: str | None, *, expected_version: str | None
    ) -> bool: ...

    async def wait_for_change(self, timeout_s: float) -> bool: ...

    async def close(self) -> None: ...
