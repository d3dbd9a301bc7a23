"""Key layout and read-side helpers shared by the key-value backends (memory, etcd).

Keys are relative to the cluster's prefix (`/<namespace>/<cluster>/` in etcd): `leader`,
`members/<name>`, and one key per `RecordKind` value. Turning what a backend read into a
`ClusterView` happens here once, so both backends read corrupt values the same way: every
problem is logged as event `dcs_record_corrupt` with field `problem`, and the record reads
as absent (DESIGN.md section 3, invariant 6).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable

import structlog

from agent.model import (
    QUIET_RECORDS,
    ClusterView,
    LeaderRecord,
    RawCluster,
    RawRecord,
    RecordKind,
    parse_cluster,
)

LEADER = "leader"
MEMBERS = "members/"

_RECORD_KINDS = {kind.value: kind for kind in RecordKind}


def member_key(name: str) -> str:
    return MEMBERS + name


def record_key(kind: RecordKind) -> str:
    return kind.value


def is_quiet_key(key: str) -> bool:
    """A record whose writes and deletions wake nobody (base.py, point 8): a heartbeat that
    only matters once the leader is gone (the leader's `position`)."""
    return key in _QUIET_KEYS


_QUIET_KEYS = frozenset(kind.value for kind in QUIET_RECORDS)


def is_member_key(key: str) -> bool:
    return key.startswith(MEMBERS)


@functools.lru_cache(maxsize=64)
def member_signature(value: bytes) -> str:
    """What of a member record is worth waking other members for: everything but the WAL
    positions, which change with every write (see base.py, point 8). A record that does not
    parse has its raw bytes as signature, so any change to it counts. Remembered: the same
    records come by again and again (each heartbeat event of an unchanged record)."""
    try:
        data = json.loads(value)
    except ValueError:
        return value.decode("utf-8", errors="replace")
    if not isinstance(data, dict):
        return value.decode("utf-8", errors="replace")
    return json.dumps({k: v for k, v in data.items() if k not in _HEARTBEAT_FIELDS}, sort_keys=True)


_HEARTBEAT_FIELDS = frozenset({"wal_lsn", "replay_lsn"})


def expected_version(version: str | None) -> str | None:
    """Normalise a caller's expected version: "" (what `ClusterView` reports for an absent
    record) means absent, like None."""
    return version or None


def to_view(
    items: Iterable[tuple[str, bytes, str]], log: structlog.typing.FilteringBoundLogger
) -> ClusterView:
    """Parse `(relative key, value, version)` triples into a view; log and drop what is corrupt.

    Keys that are not ours (unknown names under the prefix) are ignored without a word: a
    newer agent may keep more records there.
    """
    problems: list[str] = []
    leader: RawRecord | None = None
    members: dict[str, RawRecord] = {}
    records: dict[RecordKind, RawRecord] = {}
    for key, value, version in items:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{key}: value is not UTF-8")
            continue
        record = RawRecord(value=text, version=version)
        if key == LEADER:
            leader = record
        elif is_member_key(key):
            name = key[len(MEMBERS) :]
            if name and "/" not in name:
                members[name] = record
        elif (kind := _RECORD_KINDS.get(key)) is not None:
            records[kind] = record
    view, parse_problems = parse_cluster(
        RawCluster(leader=leader, members=members, records=records)
    )
    for problem in (*problems, *parse_problems):
        log.warning("dcs_record_corrupt", problem=problem)
    return view


class ViewCache:
    """`to_view` for one handle, parsing again only when the records differ from the last
    call's: an idle agent reads the same records every cycle (from a watch's cache, without
    a request), and parsing them was most of what such a read cost. A corrupt record is
    then logged when it is read changed, not at every read."""

    def __init__(self, log: structlog.typing.FilteringBoundLogger) -> None:
        self._log = log
        self._last: tuple[tuple[tuple[str, bytes, str], ...], ClusterView] | None = None

    def view(self, items: Iterable[tuple[str, bytes, str]]) -> ClusterView:
        records = tuple(items)
        # The leader record's version moves with every renewal (each cycle): compared apart.
        key = tuple((k, value, "" if k == LEADER else v) for k, value, v in records)
        leader_version = next((v for k, _, v in records if k == LEADER), "")
        if self._last is not None and self._last[0] == key:
            view = self._last[1]
            if view.leader is not None and view.leader.version != leader_version:
                leader = LeaderRecord(name=view.leader.name, version=leader_version)
                view = dataclasses.replace(view, leader=leader)
                self._last = (key, view)
            return view
        view = to_view(records, self._log)
        self._last = (key, view)
        return view
