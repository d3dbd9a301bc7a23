"""Failsafe mode (DESIGN.md section 3, DCS unreachable; the safety rule is in the package
docstring). The leader's side: the `failsafe` record naming the members it consults, and
whether its PostgreSQL stays primary on their confirmation alone. The members' side: whether
to accept a primary's POST /failsafe (`answer_failsafe` records the promise in Memory) and,
while promised, not racing for the lease (`failsafe_hold`).
"""

from __future__ import annotations

from dataclasses import replace

from agent.actions import (
    Action,
    SetFailsafeRecord,
)
from agent.decide.state import SLOT_GRACE_S, Memory, Observation
from agent.model import (
    ClusterView,
    FailsafeRecord,
    LocalState,
    MemberName,
)
from agent.settings import Settings


def failsafe_active(memory: Memory, now: float, settings: Settings) -> bool:
    """Our PostgreSQL stays primary on the members' confirmation alone (the failsafe deadline
    is later than the lease's)."""
    if memory.failsafe_sent_at is None:
        return False
    fs = settings.timing.fence_deadline(memory.failsafe_sent_at)
    lease = (
        settings.timing.fence_deadline(memory.lease_sent_at)
        if memory.lease_sent_at is not None
        else float("-inf")
    )
    return now < fs and fs > lease


def failsafe_hold(obs: Observation, memory: Memory, settings: Settings) -> str | None:
    """Why this member may not take over because of failsafe mode, or None if it may."""
    view = obs.cluster
    assert view is not None
    until = memory.promised_until
    if until is not None and obs.now < until:
        return (
            f"promised {memory.promised_to} (primary in failsafe) not to race for "
            f"{until - obs.now:.1f} s more"
        )
    record = view.failsafe
    if (
        record is not None
        and settings.name != record.leader
        and settings.name not in record.names()
    ):
        return f"not named in the failsafe record of {record.leader}: it never consulted us"
    in_use = view.config.failsafe_mode or record is not None
    if in_use and obs.now < obs.started_at + settings.timing.ttl_s:
        return "failsafe mode: an agent that just started waits one ttl (promises it gave are lost)"
    return None


def answer_failsafe(
    leader: str,
    *,
    settings: Settings,
    local: LocalState | None,
    racing: bool,
    memory: Memory,
    view: ClusterView | None,
    dcs_ok: bool,
    now: float,
) -> tuple[str | None, Memory]:
    """Answer `leader`, a primary in failsafe mode that asks over POST /failsafe to be
    confirmed: why this member refuses, with Memory unchanged; or None: it accepts, and Memory
    records the promise not to race for the lease for ttl_s from `now` (its monotonic clock;
    `failsafe_hold`). `racing`: the decision being executed races for the lease; `view`: the
    last cluster view read, `dcs_ok`: whether the last read succeeded."""
    leading = racing or memory.lease_sent_at is not None
    refusal = failsafe_refusal(
        leader, me=settings.name, local=local, leading=leading, view=view if dcs_ok else None
    )
    if refusal is not None:
        return refusal, memory
    until = now + settings.timing.ttl_s
    return None, replace(memory, promised_to=MemberName(leader), promised_until=until)


def plan_failsafe(
    view: ClusterView, memory: Memory, now: float, settings: Settings
) -> tuple[Action | None, Memory]:
    """Leader: keep the `failsafe` record naming every other member (with its API address)
    while failsafe mode is on; delete it when the mode is off. Failsafe is usable once the
    record naming us was read back; we then consult its members and those we are adding.

    A member whose DCS record went away (its agent down for a ttl) stays named for
    SLOT_GRACE_S: only named members may take over while a record stands, so dropping it
    would leave nobody able to replace us if we died next (and while it is named but
    unreachable, a DCS outage stops us at the fence deadline, as without failsafe)."""
    me = MemberName(settings.name)
    record = view.failsafe
    version = view.failsafe_version or None
    if not view.config.failsafe_mode:
        memory = replace(memory, failsafe_peers=None, failsafe_absent_since=())
        if record is not None or view.failsafe_version:
            return SetFailsafeRecord(record=None, expected_version=version), memory
        return None, memory
    present = {m.name: m.api_url for m in view.members if m.name != me}
    recorded = {n: url for n, url in (record.members if record is not None else ()) if n != me}
    since = dict(memory.failsafe_absent_since)
    kept: dict[MemberName, str] = {}
    for name, url in recorded.items():
        if name not in present:
            gone = since.setdefault(name, now)
            if now - gone < SLOT_GRACE_S:
                kept[name] = url
    memory = replace(
        memory, failsafe_absent_since=tuple(sorted((n, t) for n, t in since.items() if n in kept))
    )
    desired = tuple(sorted({**kept, **present}.items()))
    if record is not None and record.leader == me:
        peers = tuple(sorted(set(desired) | set(record.members)))
        memory = replace(memory, failsafe_peers=peers)
    else:
        memory = replace(memory, failsafe_peers=None)
    if record is None or record.leader != me or record.members != desired:
        wanted = FailsafeRecord(leader=me, members=desired)
        return SetFailsafeRecord(record=wanted, expected_version=version), memory
    return None, memory


def failsafe_refusal(
    leader: str, *, me: str, local: LocalState | None, leading: bool, view: ClusterView | None
) -> str | None:
    """Why member `me` refuses to confirm `leader` (None: it accepts). `leading`: it holds or
    is taking the lease; `view`: the cluster as last read, None when that read failed."""
    if leader == me:
        return "the request names this member itself"
    if local is not None and local.is_primary:
        return "this member runs a primary"
    if leading:
        return "this member holds or is taking the leader lease"
    if view is not None and view.leader is not None and view.leader.name != leader:
        return f"{view.leader.name} holds the leader lease"
    return None
