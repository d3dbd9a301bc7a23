"""Operator requests: parse a request body, check it against a fresh DCS view (pure).

Status codes, one rule each (docs/api.md repeats them):
- 400: the body itself is wrong (malformed JSON, not an object, unknown field, wrong type, bad
  or past timestamp) or names a member the DCS does not know.
- 409: the body is well formed but the cluster's present state refuses it (no leader, leader
  mismatch, ineligible candidate, a request already pending).
Every message names the field it is about. Nothing here writes anything: the server writes
the returned SwitchoverRequest only after every check passed.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from agent.api.errors import ApiError
from agent.api.pgconfig import PgPatch, apply_pg_patch, parse_pg_patch
from agent.model import (
    ClusterView,
    DynamicConfig,
    Member,
    MemberName,
    PgState,
    Role,
    SwitchoverRequest,
    SyncMode,
)
from agent.pgparams import sync_commit_problem
from agent.slot_config import PermanentSlot, parse_slots

_V = TypeVar("_V")
_ELIGIBLE_STATES = frozenset({PgState.RUNNING, PgState.STREAMING})


def reject_unknown_fields(body: Mapping[str, object], allowed: Set[str]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError(400, f"{unknown[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")


def optional_name(body: Mapping[str, object], field: str) -> MemberName | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{field}: expected a member name (a non-empty string)")
    return MemberName(value.strip())


def required_bool(body: Mapping[str, object], field: str) -> bool:
    if field not in body:
        raise ApiError(400, f"{field}: required")
    value = body[field]
    if not isinstance(value, bool):
        raise ApiError(400, f"{field}: expected true or false")
    return value


def parse_timestamp(value: object, *, field: str, now_wall: float) -> float:
    """An ISO-8601 timestamp with a time zone, strictly in the future, as an epoch."""
    if not isinstance(value, str):
        raise ApiError(400, f"{field}: expected an ISO-8601 timestamp string")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ApiError(400, f"{field}: not an ISO-8601 timestamp: {value!r}") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ApiError(400, f"{field}: the timestamp needs a time zone (e.g. +00:00 or Z)")
    try:
        # Answers and views give times in UTC: one that is not a UTC date (after 9999-12-31
        # once the zone is removed) would be accepted here and then fail every view.
        moment.astimezone(UTC)
    except OverflowError:
        raise ApiError(400, f"{field}: {value} is out of range in UTC") from None
    epoch = moment.timestamp()
    if epoch <= now_wall:
        raise ApiError(400, f"{field}: {value} is not in the future")
    return epoch


@dataclass(frozen=True, slots=True, kw_only=True)
class SwitchoverBody:
    leader: MemberName | None
    candidate: MemberName | None
    scheduled_at: float | None


def parse_switchover_body(body: Mapping[str, object], *, now_wall: float) -> SwitchoverBody:
    reject_unknown_fields(body, {"leader", "candidate", "scheduled_at"})
    leader = optional_name(body, "leader")
    candidate = optional_name(body, "candidate")
    at = body.get("scheduled_at")
    scheduled_at = (
        None if at is None else parse_timestamp(at, field="scheduled_at", now_wall=now_wall)
    )
    return SwitchoverBody(leader=leader, candidate=candidate, scheduled_at=scheduled_at)


def parse_failover_body(body: Mapping[str, object]) -> MemberName:
    reject_unknown_fields(body, {"candidate"})
    candidate = optional_name(body, "candidate")
    if candidate is None:
        raise ApiError(400, "candidate: required")
    return candidate


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigPatch:
    """The fields a PATCH /config body sets (None: left as they are)."""

    paused: bool | None = None
    synchronous_mode: SyncMode | None = None
    synchronous_node_count: int | None = None
    synchronous_mode_strict: bool | None = None
    maximum_lag_on_syncnode_bytes: int | None = None
    failsafe_mode: bool | None = None
    postgresql: PgPatch | None = None
    slots: tuple[PermanentSlot, ...] | None = None  # the whole set (agent/slot_config.py)


_CONFIG_FIELDS = frozenset(
    {
        "postgresql",
        "slots",
        "paused",
        "synchronous_mode",
        "synchronous_node_count",
        "synchronous_mode_strict",
        "maximum_lag_on_syncnode_bytes",
        "failsafe_mode",
    }
)


def _optional_bool(body: Mapping[str, object], field: str) -> bool | None:
    if field not in body:
        return None
    value = body[field]
    if not isinstance(value, bool):
        raise ApiError(400, f"{field}: expected true or false")
    return value


def _optional_int(body: Mapping[str, object], field: str, *, minimum: int, rule: str) -> int | None:
    if field not in body:
        return None
    value = body[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ApiError(400, f"{field}: expected an integer {rule}, got {value!r}")
    return value


def parse_config_patch(body: Mapping[str, object]) -> ConfigPatch:
    """A PATCH /config body: at least one known field, each of its type and range."""
    reject_unknown_fields(body, _CONFIG_FIELDS)
    if not body:
        raise ApiError(400, f"body: name at least one of {', '.join(sorted(_CONFIG_FIELDS))}")
    mode = None
    if "synchronous_mode" in body:
        raw = body["synchronous_mode"]
        # JSON has no YAML-style `on`, but a client may well send true/false for it.
        if raw is True:
            raw = "on"
        elif raw is False:
            raw = "off"
        if not isinstance(raw, str) or raw not in {m.value for m in SyncMode}:
            raise ApiError(400, f"synchronous_mode: expected off, on or quorum, got {raw!r}")
        mode = SyncMode(raw)
    return ConfigPatch(
        paused=_optional_bool(body, "paused"),
        synchronous_mode=mode,
        synchronous_node_count=_optional_int(
            body, "synchronous_node_count", minimum=1, rule=">= 1"
        ),
        synchronous_mode_strict=_optional_bool(body, "synchronous_mode_strict"),
        maximum_lag_on_syncnode_bytes=_optional_int(
            body, "maximum_lag_on_syncnode_bytes", minimum=-1, rule=">= -1 (-1: no limit)"
        ),
        failsafe_mode=_optional_bool(body, "failsafe_mode"),
        postgresql=parse_pg_patch(body["postgresql"]) if "postgresql" in body else None,
        slots=_optional_slots(body),
    )


def _optional_slots(body: Mapping[str, object]) -> tuple[PermanentSlot, ...] | None:
    if "slots" not in body:
        return None
    try:
        return parse_slots(body["slots"])
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def apply_config_patch(config: DynamicConfig, patch: ConfigPatch) -> DynamicConfig:
    """The record after `patch`; ApiError 400 when it would break synchronous mode's promise
    (agent.pgparams.sync_commit_problem), whichever of the two fields the patch changes."""

    def pick(new: _V | None, old: _V) -> _V:
        return old if new is None else new

    patched = DynamicConfig(
        paused=pick(patch.paused, config.paused),
        synchronous_mode=pick(patch.synchronous_mode, config.synchronous_mode),
        synchronous_node_count=pick(patch.synchronous_node_count, config.synchronous_node_count),
        synchronous_mode_strict=pick(patch.synchronous_mode_strict, config.synchronous_mode_strict),
        maximum_lag_on_syncnode_bytes=pick(
            patch.maximum_lag_on_syncnode_bytes, config.maximum_lag_on_syncnode_bytes
        ),
        failsafe_mode=pick(patch.failsafe_mode, config.failsafe_mode),
        postgresql=(
            apply_pg_patch(config.postgresql, patch.postgresql)
            if patch.postgresql is not None
            else config.postgresql
        ),
        slots=pick(patch.slots, config.slots),
        version=config.version,
    )
    problem = sync_commit_problem(patched)
    if problem is not None and problem != sync_commit_problem(config):
        raise ApiError(400, problem)
    return patched


def sync_ineligibility(member: Member, view: ClusterView) -> str | None:
    """In synchronous mode (a `sync` record with a quorum) only its members may take over."""
    record = view.sync
    if record is None or record.quorum <= 0 or member.name in record.members:
        return None
    return (
        f"{member.name} is not a synchronous standby "
        f"(synchronous set: {', '.join(record.members) or 'none'})"
    )


def lag_bytes(member: Member, leader: Member) -> int | None:
    if member.wal_lsn is None or leader.wal_lsn is None:
        return None
    return max(0, leader.wal_lsn - member.wal_lsn)


def switchover_ineligibility(
    member: Member, view: ClusterView, *, max_lag_bytes: int
) -> str | None:
    """Why `member` may not take over in a switchover, or None if it may."""
    leader = view.leader_member
    if view.leader is not None and member.name == view.leader.name:
        return f"{member.name} is the current leader"
    if member.tags.nofailover:
        return f"{member.name} is tagged nofailover"
    if member.role is not Role.REPLICA or member.state not in _ELIGIBLE_STATES:
        return f"{member.name} is not a running replica (role {member.role}, state {member.state})"
    if leader is None:
        return f"the leader's WAL position is unknown, so {member.name}'s lag is unknown"
    lag = lag_bytes(member, leader)
    if lag is None:
        return f"{member.name}'s lag is unknown (no WAL position published)"
    if lag > max_lag_bytes:
        return f"{member.name} is {lag} bytes behind the leader (limit {max_lag_bytes})"
    return sync_ineligibility(member, view)


def _known_member(view: ClusterView, name: MemberName, field: str) -> Member:
    member = view.member(name)
    if member is None:
        known = ", ".join(sorted(m.name for m in view.members)) or "none"
        raise ApiError(400, f"{field}: no member named {name!r} (members: {known})")
    return member


def _reject_pending(view: ClusterView) -> None:
    if view.switchover is not None:
        pending = view.switchover
        raise ApiError(
            409,
            f"switchover: another request is pending ({pending.leader} -> "
            f"{pending.candidate or 'any'}); cancel it first with DELETE /switchover",
        )


def plan_switchover(
    body: SwitchoverBody, view: ClusterView, *, max_lag_bytes: int
) -> SwitchoverRequest:
    """The request to write for a checked switchover; raises ApiError (400/409) otherwise."""
    if body.leader is not None:
        _known_member(view, body.leader, "leader")
    if body.candidate is not None:
        _known_member(view, body.candidate, "candidate")
    if view.leader is None:
        raise ApiError(409, "leader: the cluster has no leader; use POST /failover")
    if body.leader is not None and body.leader != view.leader.name:
        raise ApiError(
            409, f"leader: {body.leader} is not the current leader ({view.leader.name} is)"
        )
    _reject_pending(view)
    if body.candidate is not None:
        candidate = _known_member(view, body.candidate, "candidate")
        why = switchover_ineligibility(candidate, view, max_lag_bytes=max_lag_bytes)
        if why is not None:
            raise ApiError(409, f"candidate: {why}")
    else:
        reasons = [
            why
            for m in view.members
            if (why := switchover_ineligibility(m, view, max_lag_bytes=max_lag_bytes)) is not None
        ]
        if len(reasons) == len(view.members):
            raise ApiError(
                409, "candidate: no member is eligible to take over: " + "; ".join(reasons)
            )
    return SwitchoverRequest(
        leader=view.leader.name, candidate=body.candidate, scheduled_at=body.scheduled_at
    )


def plan_failover(candidate_name: MemberName, view: ClusterView) -> SwitchoverRequest:
    """A failover names its candidate and skips the leader and lag checks (the leader may be
    gone), but the candidate must be a running replica that is allowed to fail over."""
    candidate = _known_member(view, candidate_name, "candidate")
    _reject_pending(view)
    if view.leader is not None and candidate.name == view.leader.name:
        raise ApiError(409, f"candidate: {candidate.name} is the current leader")
    if candidate.tags.nofailover:
        raise ApiError(409, f"candidate: {candidate.name} is tagged nofailover")
    if candidate.role is not Role.REPLICA or candidate.state not in _ELIGIBLE_STATES:
        raise ApiError(
            409,
            f"candidate: {candidate.name} is not a running replica "
            f"(role {candidate.role}, state {candidate.state})",
        )
    if (why := sync_ineligibility(candidate, view)) is not None:
        raise ApiError(409, f"candidate: {why}")
    leader = view.leader.name if view.leader is not None else None
    return SwitchoverRequest(leader=leader, candidate=candidate.name)
