"""PostgreSQL settings from the DCS, pure: where they stand, how they are checked, and the
order in which the hot-standby minimums change.

Precedence, highest first (the agent renders one configuration file in this order, the last
occurrence of a name wins; agent/postgres/conffile.py):
1. settings the agent owns (`AGENT_OWNED`: port, listen_addresses, the hba and ident files,
   cluster_name, hot_standby, wal_log_hints, ...): also on the postmaster's command line;
2. this member's configuration file (`postgresql.parameters`): a member may differ on purpose
   (a bigger machine, a reporting replica);
3. the cluster's DCS `config` record (`postgresql.parameters`, PATCH /config,
   `pgwarden ctl edit-config`): what every member shares;
4. pgwarden's defaults (wal_level, max_wal_senders, ... and the replication timeouts derived
   from the ttl), then the data directory's own postgresql.conf (initdb's).
ALTER SYSTEM (postgresql.auto.conf) is read after that file and wins over 2-4; the agent
itself writes only primary_conninfo, primary_slot_name and synchronous_standby_names there.

Hot-standby minimums (`HOT_STANDBY`): a standby refuses to start, or pauses replay, while it
runs with a lower value than its primary. So a replica never renders a DCS value below what
the leader runs (an increase reaches the replicas first, a decrease waits for the primary),
and the leader never renders a DCS value above what every running replica runs (a decrease
reaches it first, an increase waits for the replicas): `dynamic_for`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Final

from agent.model import ClusterView, DynamicConfig, LocalState, PgConfig, PgState, Role, SyncMode
from agent.postgres_settings import SERVER_TLS_PARAMETERS
from agent.settings import Settings
from agent.value_rules import GUC_NAME, HBA_TYPES, WAL_LEVELS

HOT_STANDBY: Final = (
    "max_connections",
    "max_locks_per_transaction",
    "max_prepared_transactions",
    "max_wal_senders",
    "max_worker_processes",
)
"""Settings a hot standby must run at least as high as its primary."""

AGENT_OWNED: Final = {
    "port": "use postgresql.port",
    "listen_addresses": "use postgresql.listen_host",
    "unix_socket_directories": "use postgresql.socket_dir",
    "data_directory": "use postgresql.data_dir",
    "config_file": "it is fixed by postgresql.data_dir",
    "hba_file": "add lines with postgresql.pg_hba",
    "ident_file": "pgwarden writes its own",
    "cluster_name": "it is the cluster setting",
    "hot_standby": "replicas must serve reads for health checks",
    "wal_log_hints": "pg_rewind needs it on",
    "logging_collector": "PostgreSQL's output goes to the agent's log",
    "primary_conninfo": "it follows the leader",
    "primary_slot_name": "it follows the leader",
    "synchronous_standby_names": "use ha.synchronous_mode (the leader manages it)",
}
"""Parameters the agent sets itself, refused in `postgresql.parameters` (file or DCS)."""


# --------------------------------------------------------------------------- what to run


def _int_value(value: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        return None


def _running(values: tuple[tuple[str, int], ...], name: str) -> int | None:
    return dict(values).get(name)


def dynamic_for(view: ClusterView, settings: Settings, local: LocalState) -> PgConfig:
    """The DCS `postgresql` section as this member renders it now: the record's, with the
    hot-standby minimums held back as the module docstring says."""
    wanted = view.config.postgresql
    i_lead = view.leader is not None and view.leader.name == settings.name
    leader = view.leader_member if not i_lead else None
    replicas = [
        m
        for m in view.members
        if m.name != settings.name
        and m.role is Role.REPLICA
        and m.state in (PgState.RUNNING, PgState.STREAMING)
    ]
    params = []
    for name, wanted_value in wanted.parameters:
        value = wanted_value
        number = _int_value(value)
        if name.lower() in HOT_STANDBY and number is not None:
            mine = _running(local.hot_standby, name.lower())
            if i_lead:
                known = [v for m in replicas if (v := _running(m.hot_standby, name.lower()))]
                if known and mine is not None and number > mine:
                    # An increase waits until every running replica runs at least as high.
                    number = max(mine, min(number, *known))
            else:
                floor = _running(leader.hot_standby, name.lower()) if leader else mine
                if floor is not None:
                    number = max(number, floor)
            value = str(number)
        params.append((name, value))
    return replace(wanted, parameters=tuple(params))


def hot_standby_decrease(local: LocalState, dynamic: PgConfig) -> bool:
    """Whether a hot-standby minimum this member renders is below what it runs: the leader
    must then restart in place (a switchover would leave its replicas above the new value,
    and itself, as a replica, refusing to start below them)."""
    running = dict(local.hot_standby)
    for name, value in dynamic.parameters:
        number = _int_value(value)
        mine = running.get(name.lower())
        if number is not None and mine is not None and number < mine:
            return True
    return False


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True, slots=True, kw_only=True)
class SettingInfo:
    """One row of the server's pg_settings, what validation needs of it."""

    name: str
    vartype: str  # bool, integer, real, string, enum
    context: str  # internal, postmaster, sighup, superuser-backend, backend, superuser, user
    unit: str | None = None  # the base unit: 8kB, kB, MB, B, ms, s, min, us
    min_val: str | None = None
    max_val: str | None = None
    enumvals: tuple[str, ...] = ()


class ValidationUnavailable(Exception):
    """The running server needed to check a change cannot be asked (not running here)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigCheck:
    """The verdict on a DCS `postgresql` section: every problem (each naming its parameter
    or pg_hba line; none: it may be written) and the parameters only a restart applies."""

    problems: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()


RESTART_CONTEXTS: Final = frozenset({"postmaster"})
"""Settings a reload does not change: the member is then pending restart."""

_BOOL_WORDS: Final = ("true", "false", "yes", "no")
_MEMORY_UNITS: Final = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_TIME_UNITS: Final = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "min": 60000.0, "h": 3600000.0,
                      "d": 86400000.0}  # fmt: skip
_NUMBER: Final = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*")


def is_bool(value: str) -> bool:
    """PostgreSQL's parse_bool: on/off, 1/0, and any prefix of true/false/yes/no."""
    text = value.strip().lower()
    if text in ("on", "off", "of", "1", "0"):
        return True
    return bool(text) and any(word.startswith(text) for word in _BOOL_WORDS)


def _base_unit(unit: str | None) -> tuple[dict[str, float], float] | None:
    """The unit family of a pg_settings unit and its size in that family ("8kB" -> 8192)."""
    if not unit:
        return None
    match = re.fullmatch(r"(\d*)\s*([A-Za-z]+)", unit)
    if match is None:
        return None
    count = int(match.group(1) or "1")
    for family in (_MEMORY_UNITS, _TIME_UNITS):
        if match.group(2) in family:
            return {k: float(v) for k, v in family.items()}, count * family[match.group(2)]
    return None


def _number_problem(info: SettingInfo, value: str) -> str | None:
    match = _NUMBER.fullmatch(value)
    if match is None:
        return f"expected {'an integer' if info.vartype == 'integer' else 'a number'}"
    number, unit = float(match.group(1)), match.group(2)
    if info.vartype == "integer" and not unit and not number.is_integer():
        return "expected an integer"
    base = _base_unit(info.unit)
    if unit:
        if base is None or unit not in base[0]:
            valid = ", ".join(base[0]) if base is not None else "none (a plain number)"
            return f"unit {unit!r} is not valid here (valid units: {valid})"
        number = number * base[0][unit] / base[1]
    if info.vartype == "integer":
        number = float(round(number))
    low = float(info.min_val) if info.min_val is not None else -math.inf
    high = float(info.max_val) if info.max_val is not None else math.inf
    if not low <= number <= high:
        shown = f" {info.unit}" if info.unit else ""
        return f"{value} is out of range ({info.min_val} .. {info.max_val}{shown})"
    return None


def value_problem(info: SettingInfo, value: str) -> str | None:
    """Why PostgreSQL would refuse `value` for the setting `info`, or None."""
    if info.context == "internal":
        return "cannot be set (a read-only, compiled-in setting)"
    if "\n" in value or "\r" in value or "\0" in value:
        return "must be a single line"
    match info.vartype:
        case "bool":
            return None if is_bool(value) else "expected a boolean (on, off, true, false, ...)"
        case "integer" | "real":
            return _number_problem(info, value)
        case "enum":
            if value.strip().lower() in {v.lower() for v in info.enumvals}:
                return None
            return f"{value!r} is not one of {', '.join(info.enumvals)}"
        case _:
            return None


def parameter_problems(
    parameters: Mapping[str, str], catalog: Mapping[str, SettingInfo], settings: Settings
) -> Iterator[str]:
    """Every problem of DCS `parameters` against the server's pg_settings (`catalog`, keyed
    by lower-case name), each naming the parameter. Names with a dot (`auto_explain.x`)
    belong to extensions that may not be loaded: only their spelling is checked."""
    for name, value in sorted(parameters.items()):
        key = name.lower()
        if not GUC_NAME.fullmatch(name):
            yield f"{name[:80]!r}: not a PostgreSQL parameter name"
        elif key in AGENT_OWNED:
            yield f"{name}: set by pgwarden ({AGENT_OWNED[key]})"
        elif settings.postgresql.tls is not None and key in SERVER_TLS_PARAMETERS:
            yield f"{name}: set by pgwarden (use postgresql.tls)"
        elif key == "wal_level" and value.strip().lower() not in WAL_LEVELS:
            yield f"{name}: must be replica or logical (replicas stream WAL)"
        elif key in catalog:
            problem = value_problem(catalog[key], value)
            if problem is not None:
                yield f"{name}: {problem}"
        elif "." not in name:
            yield f"{name}: unknown parameter"


_COMMIT_BEFORE_STANDBY: Final = frozenset({"off", "false", "no", "0", "local"})
"""synchronous_commit values that acknowledge a commit before any synchronous standby has it."""


def sync_commit_problem(config: DynamicConfig) -> str | None:
    """Why the DCS `config` record would break synchronous mode's promise (no acknowledged
    commit lost on failover, docs/ha.md): a cluster-wide synchronous_commit that acknowledges
    commits no synchronous standby holds yet. None when it keeps it (or the mode is off)."""
    if config.synchronous_mode is SyncMode.OFF:
        return None
    for name, value in config.postgresql.parameters:
        if name.lower() == "synchronous_commit" and value.strip().lower() in _COMMIT_BEFORE_STANDBY:
            return (
                f"postgresql.parameters.{name}: {value!r} acknowledges a commit before any "
                f"synchronous standby holds it, so with synchronous_mode "
                f"{config.synchronous_mode.value} a failover could lose acknowledged commits; "
                "use on, remote_apply or remote_write, or set synchronous_mode off"
            )
    return None


def needs_restart(names: Mapping[str, str], catalog: Mapping[str, SettingInfo]) -> list[str]:
    """The names among `names` that only a restart applies (context postmaster)."""
    return sorted(n for n in names if (i := catalog.get(n.lower())) and i.context == "postmaster")


def _covers(field: str, name: str) -> bool:
    """A pg_hba database or user field (comma list) covers `name` (or may: a +group)."""
    items = [item.strip().strip('"') for item in field.split(",")]
    return any(item in ("all", name) or item.startswith(("+", "@")) for item in items)


def _hba_method(words: list[str]) -> str | None:
    """The auth method of a pg_hba line split in words (None: too short to have one). A
    host line's address is one word (CIDR, host name, all, samehost, samenet) or two (an IP
    address and its mask)."""
    if words[0] == "local":
        return words[3] if len(words) > 3 else None
    index = 4
    if len(words) > 3:
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(words[3])
            index = 5
    return words[index] if len(words) > index else None


def hba_problems(lines: tuple[str, ...], settings: Settings) -> Iterator[str]:
    """The checks that need no server: one line each, a connection type first, and no line
    that would catch the agent's own connections before its lines and refuse them (the DCS
    lines come before the agent's: first match wins). The server checks the rest
    (agent/postgres/conffile.py: a trial file and pg_hba_file_rules)."""
    pg = settings.postgresql
    for i, line in enumerate(lines):
        words = line.split()
        if "\n" in line or "\r" in line:
            yield f"pg_hba[{i}]: must be a single line"
            continue
        if not words or words[0] not in HBA_TYPES:
            yield f"pg_hba[{i}]: must start with a connection type: " + ", ".join(sorted(HBA_TYPES))
            continue
        if words[0].startswith("include"):
            yield f"pg_hba[{i}]: include directives are not accepted from the DCS"
            continue
        method = _hba_method(words)
        if method is None:
            continue
        if (
            words[0] == "local"
            and _covers(words[1], "postgres")
            and _covers(words[2], pg.superuser.username)
            and method != "trust"
        ):
            yield (
                f"pg_hba[{i}]: would lock the agent out: its own connection as "
                f"{pg.superuser.username} over the socket matches this line first "
                f"({method}), before pgwarden's peer line"
            )
        elif (
            words[0] != "local"
            and "replication" in (d.strip() for d in words[1].split(","))
            and _covers(words[2], pg.replication.username)
            and method == "reject"
        ):
            yield (
                f"pg_hba[{i}]: would lock the replicas out: the replication connections of "
                f"{pg.replication.username} match this line first (reject)"
            )


def precedence_comment(settings: Settings) -> str:
    """The precedence of PostgreSQL settings, as YAML comments for `--check-config`."""
    local = ", ".join(name for name, _ in settings.postgresql.parameters) or "none"
    owned = ", ".join(sorted(AGENT_OWNED))
    return (
        "# PostgreSQL parameters, highest precedence first (the last of a name wins):\n"
        f"#   1. set by pgwarden: {owned}\n"
        f"#   2. this file's postgresql.parameters: {local}\n"
        "#   3. the cluster's DCS config record, postgresql.parameters (PATCH /config,\n"
        "#      pgwarden ctl edit-config; pgwarden ctl show-config shows it)\n"
        "#   4. pgwarden's defaults (wal_level, max_wal_senders, max_replication_slots,\n"
        "#      wal_keep_size, replication timeouts), then the data directory's postgresql.conf\n"
        "# ALTER SYSTEM (postgresql.auto.conf) is read after all of these.\n"
        "# pg_hba.conf: this file's postgresql.pg_hba, then the DCS lines, then pgwarden's own.\n"
    )


__all__ = [
    "AGENT_OWNED",
    "HOT_STANDBY",
    "RESTART_CONTEXTS",
    "ConfigCheck",
    "SettingInfo",
    "ValidationUnavailable",
    "dynamic_for",
    "hba_problems",
    "hot_standby_decrease",
    "is_bool",
    "needs_restart",
    "parameter_problems",
    "precedence_comment",
    "sync_commit_problem",
    "value_problem",
]
