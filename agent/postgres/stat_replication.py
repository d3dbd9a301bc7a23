"""pg_stat_replication rows, from the probe's JSON array (probe.py), into ReplicationRow."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import TypeVar

from agent.model import Lsn, ReplicationRow, StandbySyncState, WalSenderState, parse_lsn

_E = TypeVar("_E", bound=StrEnum)


def _lsn_or_none(value: object) -> Lsn | None:
    if isinstance(value, str) and value:
        try:
            return parse_lsn(value)
        except ValueError:
            return None
    return None


def _seconds_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _enum_or_unknown(kind: type[_E], value: object) -> _E:
    """`kind(value)`, or `kind.UNKNOWN` for a value this agent does not know."""
    try:
        return kind(str(value))
    except ValueError:
        return kind("unknown")


def parse_replication(text: str) -> tuple[ReplicationRow, ...]:
    """pg_stat_replication rows from the probe's JSON array (tolerant of missing fields)."""
    data = json.loads(text)
    if not isinstance(data, list):
        return ()
    rows = []
    for item in data:
        if not isinstance(item, dict):
            continue
        rows.append(
            ReplicationRow(
                application_name=str(item.get("application_name") or ""),
                state=_enum_or_unknown(WalSenderState, item.get("state")),
                sync_state=_enum_or_unknown(StandbySyncState, item.get("sync_state")),
                sent_lsn=_lsn_or_none(item.get("sent_lsn")),
                write_lsn=_lsn_or_none(item.get("write_lsn")),
                flush_lsn=_lsn_or_none(item.get("flush_lsn")),
                replay_lsn=_lsn_or_none(item.get("replay_lsn")),
                flush_lag_s=_seconds_or_none(item.get("flush_lag_s")),
            )
        )
    return tuple(rows)
