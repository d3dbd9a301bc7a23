"""WAL archiving health: PostgreSQL's `pg_stat_archiver`, as a value (issue 17).

The probe reads it with the rest of its round trip (agent/postgres/probe.py); the member
record carries it, so `/cluster` shows every member's; `/health` and the metrics show this
member's, with the age of the last archived segment computed when they are served (the
record keeps instants, which change once per segment, not every cycle).

Also here: `BackupPg`, where pgBackRest finds a member's PostgreSQL (published in its record
for backups from a standby, agent/api/backup.py).

Pure: values and their JSON forms, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiverStats:
    """One reading of pg_stat_archiver (instants are wall-clock seconds since the epoch)."""

    archived_count: int = 0
    last_archived_wal: str | None = None
    last_archived_at: float | None = None
    failed_count: int = 0
    last_failed_wal: str | None = None
    last_failed_at: float | None = None

    @property
    def failing(self) -> bool:
        """The latest attempt failed: a failure after the last success (or none ever)."""
        if self.last_failed_at is None:
            return False
        return self.last_archived_at is None or self.last_failed_at >= self.last_archived_at

    def to_dict(self) -> dict[str, object]:
        return {
            "archived_count": self.archived_count,
            "last_archived_wal": self.last_archived_wal,
            "last_archived_at": self.last_archived_at,
            "failed_count": self.failed_count,
            "last_failed_wal": self.last_failed_wal,
            "last_failed_at": self.last_failed_at,
        }


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def stats_from_dict(data: Mapping[str, object]) -> ArchiverStats:
    """Tolerant: a missing or mistyped field reads as unknown (None, or 0 for counts)."""
    return ArchiverStats(
        archived_count=int(_number(data.get("archived_count")) or 0),
        last_archived_wal=_text(data.get("last_archived_wal")),
        last_archived_at=_number(data.get("last_archived_at")),
        failed_count=int(_number(data.get("failed_count")) or 0),
        last_failed_wal=_text(data.get("last_failed_wal")),
        last_failed_at=_number(data.get("last_failed_at")),
    )


ARCHIVER_SQL = """(SELECT CASE WHEN current_setting('archive_mode') = 'off' THEN NULL
   ELSE json_build_object(
     'archived_count', archived_count, 'last_archived_wal', last_archived_wal,
     'last_archived_at', extract(epoch FROM last_archived_time),
     'failed_count', failed_count, 'last_failed_wal', last_failed_wal,
     'last_failed_at', extract(epoch FROM last_failed_time))::text END
   FROM pg_stat_archiver)"""
"""The probe's column: pg_stat_archiver as JSON, NULL while archive_mode is off."""


def parse_archiver(text: object) -> ArchiverStats | None:
    """The probe's archiver column; None when archiving is off or the text is not JSON."""
    if not isinstance(text, str):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return stats_from_dict(data) if isinstance(data, dict) else None


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    try:
        return datetime.fromtimestamp(epoch, tz=UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return None


def archiving_view(stats: ArchiverStats | None, wall_now: float) -> dict[str, object] | None:
    """The `archiving` object of /health and /cluster: None (null) when archiving is off."""
    if stats is None:
        return None
    age = None
    if stats.last_archived_at is not None:
        age = round(max(wall_now - stats.last_archived_at, 0.0), 3)
    return {
        "failing": stats.failing,
        "archived_count": stats.archived_count,
        "last_archived_wal": stats.last_archived_wal,
        "last_archived_at": _iso(stats.last_archived_at),
        "last_archived_age_s": age,
        "failed_count": stats.failed_count,
        "last_failed_wal": stats.last_failed_wal,
        "last_failed_at": _iso(stats.last_failed_at),
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupPg:
    """Where pgBackRest finds a member's PostgreSQL on that member's host: its data directory,
    socket directory and superuser (the port is the member record's). Published in the member
    record when pgBackRest is configured, so that a standby on the same host can take a
    backup (pgBackRest's backup-standby needs the primary as a second `pg` of its stanza)."""

    path: str
    socket_path: str
    user: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "socket_path": self.socket_path, "user": self.user}

    @classmethod
    def from_dict(cls, data: object) -> BackupPg | None:
        """Tolerant: None for anything but an object of three strings."""
        if not isinstance(data, dict):
            return None
        values = [data.get(key) for key in ("path", "socket_path", "user")]
        if not all(isinstance(v, str) and v for v in values):
            return None
        path, socket_path, user = (str(v) for v in values)
        return cls(path=path, socket_path=socket_path, user=user)
