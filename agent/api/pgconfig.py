"""PostgreSQL settings and rolling restarts over the API: the `postgresql` part of a PATCH
/config body, the body of POST /rolling-restart, and the seam that checks settings against
the running server (pure, but for that seam's Protocol).

PATCH /config `postgresql`: `parameters` is merged into the record's (a value of null removes
the parameter), `pg_hba`, when given, replaces the record's lines. The result is checked
against this member's running PostgreSQL (agent/postgres/checker.py) before anything is
written: every problem is a 400 naming the parameter or line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from agent.api.errors import ApiError
from agent.model import (
    ClusterView,
    MemberName,
    PgConfig,
    RestartSchedule,
    Role,
    parameter_value,
)
from agent.pgparams import ConfigCheck, ValidationUnavailable
from agent.value_rules import GUC_NAME


class ConfigValidator(Protocol):
    """Checks a `postgresql` section against this member's running server."""

    async def check(self, config: PgConfig, *, timeout_s: float) -> ConfigCheck:
        """The problems and the parameters only a restart applies; raises
        `agent.pgparams.ValidationUnavailable` when the server cannot be asked."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PgPatch:
    """A PATCH /config `postgresql` value: parameters to set (None: remove), pg_hba lines
    (None: left as they are)."""

    parameters: tuple[tuple[str, str | None], ...] = ()
    pg_hba: tuple[str, ...] | None = None


def parse_pg_patch(value: object) -> PgPatch:
    if not isinstance(value, dict):
        raise ApiError(400, "postgresql: expected an object with parameters and/or pg_hba")
    unknown = sorted(set(value) - {"parameters", "pg_hba"})
    if unknown:
        raise ApiError(400, f"postgresql.{unknown[0]}: unknown field (allowed: parameters, pg_hba)")
    params: list[tuple[str, str | None]] = []
    raw = value.get("parameters", {})
    if not isinstance(raw, dict):
        raise ApiError(400, "postgresql.parameters: expected an object of name: value")
    for name, item in raw.items():
        if not GUC_NAME.fullmatch(name):
            raise ApiError(400, f"postgresql.parameters: {name[:80]!r} is not a parameter name")
        try:
            params.append((name, None if item is None else parameter_value(item)))
        except ValueError as exc:
            raise ApiError(400, f"postgresql.parameters.{name}: {exc}") from None
    hba = value.get("pg_hba")
    if hba is not None and (
        not isinstance(hba, list) or not all(isinstance(line, str) for line in hba)
    ):
        raise ApiError(400, "postgresql.pg_hba: expected a list of lines (strings)")
    return PgPatch(parameters=tuple(params), pg_hba=tuple(hba) if hba is not None else None)


def apply_pg_patch(config: PgConfig, patch: PgPatch) -> PgConfig:
    merged = {name.lower(): (name, value) for name, value in config.parameters}
    for name, new in patch.parameters:
        if new is None:
            merged.pop(name.lower(), None)
        else:
            merged[name.lower()] = (name, new)
    return PgConfig(
        parameters=tuple(sorted(merged.values())),
        pg_hba=config.pg_hba if patch.pg_hba is None else patch.pg_hba,
    )


def changed_parameters(old: PgConfig, new: PgConfig) -> list[str]:
    before, after = dict(old.parameters), dict(new.parameters)
    return sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))


async def check_postgresql(
    validator: ConfigValidator | None, before: PgConfig, after: PgConfig, *, timeout_s: float
) -> list[str]:
    """Raises ApiError 400 naming every problem of `after` (503 when it cannot be checked
    here); else the changed parameters that only a restart applies."""
    if validator is None:
        raise ApiError(503, "postgresql: this member cannot check PostgreSQL settings")
    try:
        check = await validator.check(after, timeout_s=timeout_s)
    except ValidationUnavailable as exc:
        raise ApiError(503, f"postgresql: cannot check the settings here: {exc}") from None
    if check.problems:
        raise ApiError(400, "postgresql: " + "; ".join(check.problems))
    changed = set(changed_parameters(before, after))
    return sorted(n for n in check.restart if n in changed)


# ----------------------------------------------------------------------------- rolling restart

_ROLES = ("any", "primary", "replica")


def _flag(body: Mapping[str, object], field: str) -> bool:
    value = body.get(field, False)
    if not isinstance(value, bool):
        raise ApiError(400, f"{field}: expected true or false")
    return value


def plan_restart(
    body: Mapping[str, object], view: ClusterView, *, scheduled_at: float
) -> RestartSchedule:
    """The `restart` record for a POST /rolling-restart body (members, role, pending,
    in_place; scheduled_at parsed by the caller); raises ApiError (400/409) otherwise."""
    names = body.get("members")
    if names is not None and (
        not isinstance(names, list) or not all(isinstance(n, str) and n for n in names)
    ):
        raise ApiError(400, "members: expected a list of member names")
    role = body.get("role", "any")
    if role not in _ROLES:
        raise ApiError(400, f"role: expected one of {', '.join(_ROLES)}, got {role!r}")
    known = {m.name: m for m in view.members}
    for name in names or ():
        if name not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise ApiError(400, f"members: no member named {name!r} (members: {listed})")
    leader = view.leader.name if view.leader is not None else None
    chosen = [
        MemberName(n)
        for n in (names if names is not None else sorted(known))
        if role == "any" or (role == "primary") == (n == leader or known[n].role is Role.PRIMARY)
    ]
    if not chosen:
        raise ApiError(409, "members: no member matches (role, members)")
    if view.restart is not None and view.restart.members:
        raise ApiError(
            409, "restart: a rolling restart is already scheduled or under way; cancel it first"
        )
    return RestartSchedule(
        members=tuple(chosen),
        scheduled_at=scheduled_at,
        pending=_flag(body, "pending"),
        in_place=_flag(body, "in_place"),
    )
