"""Health probes as pure functions of the published AgentStatus and the current time.

Every role-based probe also requires a fresh status: one published within `ttl_s` of now. A
stalled HA loop keeps publishing nothing, and what it last said (say, "primary, lease held")
may no longer be true, so a load balancer must stop trusting it. `/primary` is stricter still:
the fencing deadline, carried forward from when the status was published, must lie ahead.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import assert_never

from agent.model import AgentStatus, PgState, Role, SyncRole


class Probe(StrEnum):
    HEALTH = "health"
    LIVENESS = "liveness"
    READINESS = "readiness"
    PRIMARY = "primary"
    REPLICA = "replica"
    READ_ONLY = "read-only"
    SYNC = "sync"
    QUORUM = "quorum"
    ASYNC = "async"


_RUNNING = frozenset({PgState.RUNNING, PgState.STREAMING})

_LAG_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
_LAG_RE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


def parse_lag(text: str) -> int:
    """A byte count in PostgreSQL's notation: `1048576`, `16kB`, `1MB`, `2GB` (units of 1024,
    case-insensitive). Raises ValueError on anything else, negative numbers included."""
    match = _LAG_RE.match(text)
    if match is None or match.group(2).lower() not in _LAG_UNITS:
        raise ValueError(f"not a byte count: {text!r} (use e.g. 1048576, 16kB, 1MB)")
    return int(match.group(1)) * _LAG_UNITS[match.group(2).lower()]


def status_age_s(status: AgentStatus, now: float) -> float:
    """Seconds since the HA loop published `status` (monotonic clock)."""
    return max(0.0, now - status.observed_at)


def is_fresh(status: AgentStatus, *, now: float, ttl_s: float) -> bool:
    """The loop published this status less than one lease ttl ago."""
    return status_age_s(status, now) <= ttl_s


def holds_lease_now(status: AgentStatus, *, now: float) -> bool:
    """The status said the lease was held, and its fencing deadline has not passed since."""
    if not status.lease_held:
        return False
    if status.fence_remaining_s is None:
        return True
    return status.fence_remaining_s - status_age_s(status, now) > 0


def _is_writable_primary(status: AgentStatus, now: float) -> bool:
    return (
        status.role is Role.PRIMARY
        and status.state in _RUNNING
        and holds_lease_now(status, now=now)
    )


def _is_streaming_replica(status: AgentStatus, max_lag_bytes: int | None) -> bool:
    if status.role is not Role.REPLICA or status.state is not PgState.STREAMING:
        return False
    if max_lag_bytes is None:
        return True
    return status.lag_bytes is not None and status.lag_bytes <= max_lag_bytes


def probe_ok(
    probe: Probe,
    status: AgentStatus,
    *,
    now: float,
    ttl_s: float,
    max_lag_bytes: int | None = None,
) -> bool:
    """Whether `probe` answers 200 (True) or 503 (False).

    - liveness: the status is fresh (the HA loop completed a cycle within ttl_s).
    - health: fresh, and PostgreSQL is running (state running or streaming).
    - readiness: fresh, and a primary holding the lease, or a streaming replica.
    - primary: fresh, role primary, running, lease held and its fencing deadline ahead.
    - replica: fresh, role replica, streaming; lag (when a limit is given) known and within it.
    - read-only: primary as above, or replica as above.
    - a member tagged `noloadbalance` fails `replica`, and `read-only` unless it is primary.
    - sync: replica as above, and a synchronous standby (FIRST k) or quorum member (ANY k):
      the leader's PostgreSQL reports it so and it is in the DCS `sync` record.
    - quorum: as sync, but only a member of an ANY-k quorum.
    - async: replica as above, not synchronous.
    A lag limit with an unknown lag fails: the probe cannot vouch for what it does not know.
    """
    if probe is Probe.LIVENESS:
        return is_fresh(status, now=now, ttl_s=ttl_s)
    if not is_fresh(status, now=now, ttl_s=ttl_s):
        return False
    match probe:
        case Probe.HEALTH:
            return status.state in _RUNNING
        case Probe.READINESS:
            return _is_writable_primary(status, now) or _is_streaming_replica(status, None)
        case Probe.PRIMARY:
            return _is_writable_primary(status, now)
        case Probe.REPLICA:
            return not status.noloadbalance and _is_streaming_replica(status, max_lag_bytes)
        case Probe.READ_ONLY:
            return _is_writable_primary(status, now) or (
                not status.noloadbalance and _is_streaming_replica(status, max_lag_bytes)
            )
        case Probe.SYNC:
            return _is_streaming_replica(status, max_lag_bytes) and status.sync_role in (
                SyncRole.SYNC,
                SyncRole.QUORUM,
            )
        case Probe.QUORUM:
            return (
                _is_streaming_replica(status, max_lag_bytes) and status.sync_role is SyncRole.QUORUM
            )
        case Probe.ASYNC:
            return (
                _is_streaming_replica(status, max_lag_bytes) and status.sync_role is SyncRole.ASYNC
            )
        case Probe.LIVENESS:  # answered above, before the freshness check
            return True
        case _:
            assert_never(probe)
