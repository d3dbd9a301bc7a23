"""Permanent slots on the primary, and PostgreSQL's failover slots (17+) on every member.

Failover slots are on when the data directory is of PostgreSQL 17 or later and the member
runs with `wal_level = logical` (`postgresql.parameters`; logical slots need it anyway). Then:
- every logical permanent slot is created with `failover = true`;
- the standbys run the slot sync worker (`sync_replication_slots = on`,
  `hot_standby_feedback = on`), which connects to the primary as the replication user to
  database `postgres` (`dbname` in primary_conninfo, and a pg_hba line for it);
- the primary names the physical slots of its streaming standbys in
  `synchronized_standby_slots`, so that no logical consumer receives a change before those
  standbys have it (the leader keeps the list: agent/decide/leader.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from agent.config import PostgresSettings
from agent.slot_config import FAILOVER_SLOTS_MAJOR, effective_wal_level

SLOT_SYNC_DATABASE = "postgres"


def data_major(settings: PostgresSettings) -> int | None:
    """The major version of the data directory (its PG_VERSION file); None without one."""
    try:
        with open(os.path.join(settings.data_dir, "PG_VERSION"), encoding="ascii") as handle:
            return int(handle.read().strip().split(".")[0])
    except (OSError, ValueError):
        return None


def failover_slots_on(settings: PostgresSettings, dynamic: Iterable[tuple[str, str]] = ()) -> bool:
    """PostgreSQL 17+ data and `wal_level = logical` as the server runs it (the DCS's
    `dynamic` parameters, then the member's own: agent/pgparams.py's order)."""
    major = data_major(settings)
    logical = effective_wal_level(settings.parameters, dynamic) == "logical"
    return major is not None and major >= FAILOVER_SLOTS_MAJOR and logical


def conninfo_dbname(settings: PostgresSettings) -> str | None:
    """`dbname` of primary_conninfo on 17+ (the slot sync worker connects to a database with
    it; streaming replication ignores it)."""
    major = data_major(settings)
    return SLOT_SYNC_DATABASE if major is not None and major >= FAILOVER_SLOTS_MAJOR else None


def failover_slot_options(
    settings: PostgresSettings, dynamic: Iterable[tuple[str, str]] = ()
) -> list[str]:
    """`-c` options of the slot sync worker, lowest precedence first (the parameters may
    turn them off)."""
    if not failover_slots_on(settings, dynamic):
        return []
    return ["-c", "sync_replication_slots=on", "-c", "hot_standby_feedback=on"]


def slot_sync_hba(settings: PostgresSettings, dynamic: Iterable[tuple[str, str]] = ()) -> list[str]:
    """The pg_hba lines that let the slot sync worker of a standby in: the replication user,
    an ordinary connection to SLOT_SYNC_DATABASE (same method as its replication line)."""
    if not failover_slots_on(settings, dynamic):
        return []
    kind = "hostssl" if settings.tls is not None else "host"
    user = settings.replication.username
    if settings.replication.password is not None:
        networks, method = ("0.0.0.0/0", "::0/0"), "scram-sha-256"
    else:
        networks, method = ("127.0.0.0/8", "::1/128"), "trust"
    return [f"{kind} {SLOT_SYNC_DATABASE} {user} {net} {method}" for net in networks]
