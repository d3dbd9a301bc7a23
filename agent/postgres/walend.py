"""The end of the valid WAL in a standby's pg_wal (pg_waldump from the replay position).

A standby restarted after a crash accepts connections as soon as it is consistent, while
its startup process still replays the WAL it had received into pg_wal before the crash.
Until then pg_last_wal_replay_lsn() is below what the standby holds, and there is no
receive position (no WAL receiver ran since the start). Reported as the member's position,
that would let a peer that holds less win a failover race and lose a commit only this
standby has. So a standby that does not stream and is not yet waiting for WAL reports the
end of the valid WAL in its pg_wal, found by pg_waldump from the replay position.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable

from agent.config import PostgresSettings
from agent.model import Lsn, format_lsn, parse_lsn
from agent.postgres.osfiles import PostgresError
from agent.postgres.tools import run_tool_result

_WAITING_FOR_WAL = frozenset({"RecoveryRetrieveRetryInterval", "RecoveryWalStream"})
"""Startup-process wait events that mean "every local WAL record is replayed" (the same names
on PostgreSQL 15 and 18: tests/integration/postgres/test_standby_position.py runs on both)."""

_SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_LSN_RE = re.compile(r"\b([0-9A-F]{1,8}/[0-9A-F]{1,8})\b")
_RECORD_LEN_RE = re.compile(r"len \(rec/tot\):\s*\d+/\s*(\d+),.*?lsn: ([0-9A-F]+/[0-9A-F]+)")
_SHORT_PAGE_HEADER = 24  # SizeOfXLogShortPHD
_LONG_PAGE_HEADER = 40  # SizeOfXLogLongPHD, on a segment's first page
_MAXALIGN = 8


def replay_settled(startup_wait: str | None) -> bool:
    """The startup process waits for new WAL: it has replayed all it could read locally."""
    return startup_wait in _WAITING_FOR_WAL


def segment_timelines(file_names: Iterable[str], segno: int, segment_size: int) -> list[int]:
    """Timelines of the WAL segment files named in `file_names` that hold segment `segno`,
    highest first (`.partial`, `.history` and other names are ignored)."""
    per_id = 0x1_0000_0000 // segment_size
    found = []
    for name in file_names:
        match = _SEGMENT_RE.match(name)
        if match is None:
            continue
        tli, log, seg = (int(part, 16) for part in match.groups())
        if log * per_id + seg == segno:
            found.append(tli)
    return sorted(found, reverse=True)


def position_timeline(wal_dir: str, lsn: Lsn, segment_size: int) -> int | None:
    """The highest timeline with a segment file in `wal_dir` holding `lsn` (the timeline a
    standby received that WAL on); None when there is none or the directory cannot be read."""
    try:
        names = os.listdir(wal_dir)
    except OSError:
        return None
    timelines = segment_timelines(names, lsn // segment_size, segment_size)
    return timelines[0] if timelines else None


def record_end(start: Lsn, total_len: int, *, block_size: int, segment_size: int) -> Lsn:
    """Where the record of `total_len` bytes starting at `start` ends, as replay positions
    count it (xlogreader's EndRecPtr): its bytes plus the page headers of every page it
    continues on, rounded up to MAXALIGN."""
    pos, remaining = start, total_len
    while remaining > block_size - pos % block_size:
        remaining -= block_size - pos % block_size
        pos += block_size - pos % block_size
        pos += _LONG_PAGE_HEADER if pos % segment_size == 0 else _SHORT_PAGE_HEADER
    pos += remaining
    return (pos + _MAXALIGN - 1) // _MAXALIGN * _MAXALIGN


def parse_last_good_record(stderr: str) -> tuple[Lsn | None, bool]:
    """From the error pg_waldump stops with: (start of the last record it read, whether it
    read none). `error in WAL record at A: ...` names the last good record A, whatever broke
    after it; `could not find a valid record after B`: none at or after the start. Other
    errors (a missing segment file) tell nothing: (None, False)."""
    for line in reversed(stderr.splitlines()):
        _, sep, rest = line.partition("error in WAL record at ")
        if sep:
            positions = _LSN_RE.findall(rest.partition(":")[0])
            return (parse_lsn(positions[0]) if positions else None), False
        if "could not find a valid record after" in line:
            return None, True
    return None, False


def parse_record_line(stdout: str) -> tuple[Lsn, int] | None:
    """(lsn, total length) of the first record line of pg_waldump's output."""
    for line in stdout.splitlines():
        match = _RECORD_LEN_RE.search(line)
        if match is not None:
            return parse_lsn(match.group(2)), int(match.group(1))
    return None


async def local_wal_end(
    settings: PostgresSettings,
    *,
    start: Lsn,
    timeline: int | None,
    block_size: int,
    segment_size: int,
    timeout_s: float,
) -> Lsn | None:
    """The end of the valid WAL in pg_wal from `start` on (pg_waldump, within `timeout_s`).

    Reads the highest timeline that has a segment file holding `start` (the timeline the
    startup process follows), else `timeline`. None when it cannot be told (no such file, a
    tool error or timeout): the caller then knows no more than the replay position.
    """
    wal_dir = os.path.join(settings.data_dir, "pg_wal")
    tli = position_timeline(wal_dir, start, segment_size) or timeline
    if tli is None:
        return None
    base = [
        os.path.join(settings.bin_dir, "pg_waldump"),
        "--path",
        wal_dir,
        "--timeline",
        str(tli),
    ]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        # Pass 1, silent: read every record from `start` until the first that is not valid.
        scan = await run_tool_result(
            settings,
            [*base, "--quiet", "--start", format_lsn(start)],
            timeout_s=timeout_s,
            what="pg_waldump",
        )
        last, none_valid = parse_last_good_record(scan.stderr)
        if none_valid:
            return start
        if last is None:
            return None
        # Pass 2: the length of that last record, hence where it ends.
        one = await run_tool_result(
            settings,
            [*base, "--start", format_lsn(last), "--limit", "1"],
            timeout_s=max(deadline - loop.time(), 0.1),
            what="pg_waldump",
        )
    except (PostgresError, OSError, ValueError):
        return None
    record = parse_record_line(one.stdout)
    if record is None or record[0] != last:
        return None
    return record_end(last, record[1], block_size=block_size, segment_size=segment_size)
