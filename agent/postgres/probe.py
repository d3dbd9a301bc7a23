"""SQL (or pg_controldata, when the server is down) -> one immutable LocalState per probe.

The probe keeps one asyncpg connection over the unix socket and asks everything in a single
round trip. It never raises for a server that is down, starting or broken: that is what it
reports. Only cancellation propagates.

A standby's `wal_lsn` is the largest of its receive and replay positions and, while it does
not stream and its startup process still replays, of the end of the valid WAL in its pg_wal
(one pg_waldump scan per postmaster; see walend.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
from typing import Any

import asyncpg

from agent.archiving import ARCHIVER_SQL, parse_archiver
from agent.config import PostgresSettings
from agent.model import (
    ControlData,
    LocalState,
    Lsn,
    SyncStandbys,
    parse_lsn,
)
from agent.pgparams import HOT_STANDBY
from agent.postgres.datadir import (
    bootstrap_incomplete,
    copy_incomplete,
    has_backup_label,
    is_initialized,
)
from agent.postgres.osfiles import PostgresError
from agent.postgres.replication import parse_synchronous_standby_names
from agent.postgres.sqlconn import connect_local
from agent.postgres.stat_replication import parse_replication
from agent.postgres.tools import run_tool
from agent.postgres.version import binaries_major
from agent.postgres.walend import local_wal_end, position_timeline, replay_settled
from agent.proctree import has_child_of_type
from agent.slot_config import parse_slot_states

# One round trip. `r` is evaluated once (a volatile subquery is not flattened), and once a
# server is out of recovery it never goes back, so the primary-only functions are only called
# on a primary. On a primary the timeline comes from the current WAL file name:
# pg_control_checkpoint() lags until the next checkpoint after a promotion.
_PROBE_SQL = (
    """
SELECT
  s.r AS in_recovery,
  (SELECT system_identifier FROM pg_control_system())::text AS system_id,
  CASE WHEN s.r THEN NULL ELSE pg_current_wal_lsn() END AS write_lsn,
  CASE WHEN s.r THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END AS walfile,
  CASE WHEN s.r THEN NULL ELSE pg_current_wal_insert_lsn() END AS insert_lsn,
  CASE WHEN s.r THEN NULL ELSE pg_current_wal_flush_lsn() END AS flush_lsn,
  CASE WHEN s.r THEN pg_last_wal_receive_lsn() END AS receive_lsn,
  CASE WHEN s.r THEN pg_last_wal_replay_lsn() END AS replay_lsn,
  (SELECT timeline_id FROM pg_control_checkpoint()) AS checkpoint_tli,
  (SELECT min_recovery_end_timeline FROM pg_control_recovery()) AS min_recovery_tli,
  w.status AS receiver_status,
  w.received_tli AS received_tli,
  w.sender_host AS sender_host,
  w.sender_port AS sender_port,
  current_setting('synchronous_standby_names') AS synchronous_standby_names,
  current_setting('listen_addresses') = '' AS socket_only,
  (SELECT setting FROM pg_file_settings WHERE name = 'synchronous_standby_names' AND applied
   ORDER BY seqno DESC LIMIT 1) AS synchronous_standby_names_file,
  CASE WHEN s.r THEN (SELECT wait_event FROM pg_stat_activity
                      WHERE backend_type = 'startup' LIMIT 1) END AS startup_wait,
  CASE WHEN s.r THEN (SELECT bytes_per_wal_segment FROM pg_control_init()) END AS wal_segment_size,
  CASE WHEN s.r THEN (SELECT wal_block_size FROM pg_control_init()) END AS wal_block_size,
  (SELECT json_build_object('pending', coalesce(json_agg(name) FILTER (WHERE pending_restart),
      '[]'), 'hot', json_object_agg(name, setting) FILTER (WHERE name = ANY($1::text[])))
   FROM pg_settings)::text AS settings,
  (SELECT coalesce(json_agg(json_build_object(
      'application_name', application_name, 'state', state, 'sync_state', sync_state,
      'sent_lsn', sent_lsn::text, 'write_lsn', write_lsn::text,
      'flush_lsn', flush_lsn::text, 'replay_lsn', replay_lsn::text,
      'flush_lag_s', extract(epoch FROM flush_lag))
      ORDER BY application_name), '[]'::json)::text
   FROM pg_stat_replication) AS replication,
  (SELECT coalesce(json_agg(json_build_object(
      'name', slot_name, 'type', slot_type, 'active', active, 'wal_status', wal_status,
      'retained_bytes', CASE WHEN s.r OR restart_lsn IS NULL THEN NULL
                             ELSE pg_current_wal_lsn() - restart_lsn END,
      -- the column exists from 17 on: read through to_jsonb so that 15 and 16 answer too
      'synced', coalesce((to_jsonb(rs) ->> 'synced')::boolean, false))
      ORDER BY slot_name), '[]'::json)::text
   FROM pg_replication_slots AS rs) AS slots,
  """
    + ARCHIVER_SQL
    + """ AS archiver
FROM (SELECT pg_is_in_recovery() AS r) AS s
LEFT JOIN pg_stat_wal_receiver AS w ON true
"""
)


# The commit heartbeat (Prober._can_commit): simple protocol, one round trip.
# A transactional logical message is a WAL record (any wal_level), so the commit must flush
# WAL; a transaction that only took an xid (txid_current()) commits without a flush.
_HEARTBEAT_SQL = (
    "BEGIN READ WRITE; SET LOCAL synchronous_commit = local; "
    "SELECT pg_logical_emit_message(true, 'pgwarden', 'heartbeat'); COMMIT"
)


def _ssn(text: str | None) -> SyncStandbys:
    """synchronous_standby_names as read; a value the agent cannot read is FIRST 1 ("*")."""
    parsed = parse_synchronous_standby_names(text or "")
    return parsed if parsed is not None else SyncStandbys(quorum=False, count=1, names=("*",))


def _ssn_pending(running: str | None, in_files: str | None) -> SyncStandbys | None:
    """The value the files hold for the next reload, when it differs from the running one
    (an ALTER SYSTEM whose reload failed, perhaps before this agent started)."""
    if in_files is None or in_files == running:
        return None
    pending = _ssn(in_files)
    return None if pending == _ssn(running) else pending


def parse_settings(text: str | None) -> dict[str, Any]:
    """pending_restart and hot_standby (LocalState) from the probe's pg_settings JSON."""
    data = json.loads(text or "{}")
    hot = data.get("hot") or {}
    return {
        "pending_restart": tuple(sorted(str(n) for n in data.get("pending") or ())),
        "hot_standby": tuple(sorted((str(k), int(v)) for k, v in hot.items())),
    }


def parse_controldata(text: str) -> ControlData | None:
    """The fields the agent needs from `pg_controldata` output (run with LC_ALL=C)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        min_recovery = parse_lsn(fields["Minimum recovery ending location"])
        return ControlData(
            system_id=fields["Database system identifier"],
            cluster_state=fields["Database cluster state"],
            timeline=int(fields["Latest checkpoint's TimeLineID"]),
            checkpoint_lsn=parse_lsn(fields["Latest checkpoint location"]),
            min_recovery_end_lsn=min_recovery or None,
            min_recovery_end_timeline=(
                int(fields.get("Min recovery ending loc's timeline") or 0) or None
                if min_recovery
                else None
            ),
        )
    except (KeyError, ValueError):
        return None


async def read_controldata(
    settings: PostgresSettings, *, timeout_s: float = 5.0
) -> ControlData | None:
    """pg_controldata of the data directory; None when it is not initialized or unreadable."""
    if not is_initialized(settings):
        return None
    try:
        out = await run_tool(
            settings,
            [os.path.join(settings.bin_dir, "pg_controldata"), "-D", settings.data_dir],
            timeout_s=timeout_s,
            what="pg_controldata",
        )
    except Exception:  # a broken data directory reads as "no control data"
        return None
    return parse_controldata(out)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FlushSeen:
    """A primary's WAL flush and insert positions as one probe read them."""

    postmaster_pid: int | None
    flush: Lsn | None
    insert: Lsn | None


def flush_stuck(previous: FlushSeen | None, current: FlushSeen) -> bool:
    """Whether a primary's WAL flush may be stuck or too slow, so that only committing the
    heartbeat can tell: WAL is waiting to be flushed now, and since the previous probe of the
    same postmaster the flush position has not moved, or has not reached what was already
    waiting then. A flush that keeps up (WAL written before the previous probe is durable
    now), or nothing to flush, proves enough. A flush that moves but lags by more than a
    probe interval is slow storage (chaos finding 19: fsyncs of 1 s each moved the position
    at every probe while no commit finished within a second): the heartbeat's commit bound
    decides. Idle servers with a partly filled WAL page nobody needed flushed (hint-bit
    records) land here too; their heartbeat commits at once."""
    flush, insert = current.flush, current.insert
    if flush is None or insert is None or insert <= flush:
        return False
    if previous is None or previous.postmaster_pid != current.postmaster_pid:
        return False
    if previous.flush == flush:
        return True
    return previous.insert is not None and flush < previous.insert


class Prober:
    """Probes the local PostgreSQL; one instance per agent, used by one task at a time."""

    def __init__(self, settings: PostgresSettings, *, run_dir: str, member_name: str) -> None:
        self._settings = settings
        self._run_dir = run_dir
        self._member_name = member_name
        self._conn: asyncpg.Connection | None = None
        # The highest timeline a standby's WAL receiver reported, per postmaster: once the
        # upstream is gone pg_stat_wal_receiver is empty, and the checkpoint's timeline lags
        # until the next restartpoint (a standby would then look behind a timeline switch it
        # already followed, and be rewound for nothing).
        self._seen_tli: tuple[int | None, int] | None = None
        # The end of the local WAL found for (postmaster pid, timeline): nothing but a WAL
        # receiver (or restore_command) adds WAL to pg_wal, so one scan per start suffices
        # while the standby does not stream. Dropped when it streams (the receiver may
        # overwrite what the scan saw).
        self._wal_end: tuple[int | None, int | None, Lsn] | None = None
        # A primary's WAL flush and insert positions at the previous probe, per postmaster.
        self._flush_seen: FlushSeen | None = None
        # The postmaster whose last heartbeat did not commit in time: its next probes commit
        # the heartbeat whatever the flush position did, until one commits in time.
        self._heartbeat_failed: int | None = None
        self._pg_major: int | None = None  # of the binaries; asked until known

    async def probe(
        self, *, running: bool, postmaster_pid: int | None, timeout_s: float
    ) -> LocalState:
        """`_probe`, stamped with the binaries' major version (asked once, when known)."""
        if self._pg_major is None:
            with contextlib.suppress(PostgresError, ValueError):
                self._pg_major = await binaries_major(self._settings, timeout_s=timeout_s / 2)
        state = await self._probe(
            running=running, postmaster_pid=postmaster_pid, timeout_s=timeout_s
        )
        if copy_incomplete(self._run_dir):
            # Nothing usable: neither its system id nor its position may count anywhere.
            return LocalState(
                data_dir_initialized=False,
                running=state.running,
                postmaster_pid=state.postmaster_pid,
                copy_incomplete=True,
                pg_major=self._pg_major,
            )
        incomplete = state.data_dir_initialized and bootstrap_incomplete(self._settings)
        return dataclasses.replace(state, pg_major=self._pg_major, bootstrap_incomplete=incomplete)

    async def _probe(
        self, *, running: bool, postmaster_pid: int | None, timeout_s: float
    ) -> LocalState:
        """One snapshot of the local PostgreSQL, within `timeout_s`.

        `running`/`postmaster_pid` say whether a postmaster process exists (from
        Postmaster.pid()). If it does and answers, the state comes from one SQL round trip
        (reconnecting once if the kept connection was lost); otherwise, or if the query
        fails, `running=False` with ControlData from pg_controldata. Never raises but
        asyncio.CancelledError.
        """
        initialized = is_initialized(self._settings)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        unresponsive = refused = False
        if running and initialized:
            try:
                # 70% for SQL, the rest for pg_controldata if SQL fails (a frozen server).
                async with asyncio.timeout(timeout_s * 0.7):
                    row = await self._query()
                    state = self._state_from_row(row, initialized, postmaster_pid)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a down or broken server is a state to report
                await self.close()
                unresponsive = isinstance(exc, TimeoutError)
                refused = not unresponsive
            else:
                stuck = self._flush_stuck(row, postmaster_pid)
                retry = postmaster_pid is not None and self._heartbeat_failed == postmaster_pid
                if not state.in_recovery and (stuck or retry):
                    budget = max(deadline - loop.time() - timeout_s * 0.3, 0.1)
                    committed = await self._can_commit(budget)
                    self._heartbeat_failed = None if committed else postmaster_pid
                    if not committed:
                        state = dataclasses.replace(state, commit_stalled=True)
                # The server answered: whatever the scan does, it reports a running server.
                try:
                    return await self._with_local_wal(
                        state, row, timeout_s=max(deadline - loop.time(), 0.1)
                    )
                except asyncio.CancelledError:
                    raise
                except Exception:  # no better than the replay position, still a state
                    return state
        else:
            await self.close()
        control = await read_controldata(self._settings, timeout_s=max(deadline - loop.time(), 0.1))
        return LocalState(
            data_dir_initialized=initialized,
            running=False,
            postmaster_pid=postmaster_pid,
            backup_label=has_backup_label(self._settings),
            unresponsive=unresponsive and postmaster_pid is not None,
            postmaster_idle=refused
            and postmaster_pid is not None
            and not has_child_of_type(postmaster_pid, "startup"),
            control=control,
        )

    def _flush_stuck(self, row: asyncpg.Record, postmaster_pid: int | None) -> bool:
        """`flush_stuck` against the previous probe of this postmaster (then remembered)."""
        current = FlushSeen(
            postmaster_pid=postmaster_pid, flush=row["flush_lsn"], insert=row["insert_lsn"]
        )
        previous, self._flush_seen = self._flush_seen, current
        return flush_stuck(previous, current)

    async def _can_commit(self, timeout_s: float) -> bool:
        """A primary proves it can commit: one transaction that writes a WAL record (a
        logical message, ignored by physical standbys), so that its commit flushes WAL to
        local storage, within `timeout_s`.
        `synchronous_commit = local`: a standby that does not answer must not look like a
        broken primary (that is the synchronous set's business, not liveness). Answering
        reads proves nothing when the storage under pg_wal hangs: commits block in fsync
        while every catalog query is served from memory (the "zombie primary").
        Costs one transaction id, about 100 bytes of WAL and one WAL flush, and runs only
        when `flush_stuck` cannot tell, or after a heartbeat that did not commit in time
        until one does (so an idle primary does not write WAL every cycle, which would
        archive a segment per archive_timeout, and a slow flush that happens to move between
        two probes does not clear a stall no commit has disproved). False: timed out or failed (the
        connection is dropped; its backend may stay blocked in the kernel)."""
        conn = self._conn
        if conn is None:
            return False
        try:
            async with asyncio.timeout(timeout_s):
                await conn.execute(_HEARTBEAT_SQL)
        except asyncio.CancelledError:
            raise
        except Exception:
            await self.close()
            return False
        return True

    async def _query(self) -> asyncpg.Record:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            try:
                row: asyncpg.Record = await conn.fetchrow(_PROBE_SQL, list(HOT_STANDBY))
                return row
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                # Lost since the last probe (a restart, an admin shutdown): reconnect once.
                await self.close()
        conn = await connect_local(
            self._settings, timeout_s=5.0, purpose="probe", cache_statements=True
        )
        self._conn = conn
        row = await conn.fetchrow(_PROBE_SQL, list(HOT_STANDBY))
        return row

    async def _with_local_wal(
        self, state: LocalState, row: asyncpg.Record, *, timeout_s: float
    ) -> LocalState:
        """`state` with `wal_lsn` raised to the end of the valid WAL in pg_wal, for a standby
        that does not stream and has not replayed all of it yet (see `local_wal_end`)."""
        if not state.in_recovery:
            return state
        if state.streaming:
            self._wal_end = None
            return state
        replay = state.replay_lsn
        if replay_settled(row["startup_wait"]) or replay is None:
            return state
        key = (state.postmaster_pid, state.timeline)
        cached = self._wal_end
        if cached is not None and cached[:2] == key and cached[2] >= replay:
            end: Lsn | None = cached[2]
        else:
            end = await local_wal_end(
                self._settings,
                start=replay,
                timeline=state.timeline,
                block_size=int(row["wal_block_size"]),
                segment_size=int(row["wal_segment_size"]),
                timeout_s=timeout_s,
            )
            if end is not None:
                self._wal_end = (*key, end)
        if end is None or (state.wal_lsn is not None and end <= state.wal_lsn):
            return state
        return dataclasses.replace(state, wal_lsn=end)

    def _state_from_row(
        self, row: asyncpg.Record, initialized: bool, postmaster_pid: int | None
    ) -> LocalState:
        in_recovery = bool(row["in_recovery"])
        receive_lsn: Lsn | None = row["receive_lsn"]
        replay_lsn: Lsn | None = row["replay_lsn"]
        streaming = row["receiver_status"] == "streaming"
        upstream = None
        if row["sender_host"] is not None:
            upstream = f"{row['sender_host']}:{row['sender_port']}"
        if in_recovery:
            wal_lsn = max(
                (lsn for lsn in (receive_lsn, replay_lsn) if lsn is not None), default=None
            )
            known = [
                t
                for t in (row["received_tli"], row["checkpoint_tli"], row["min_recovery_tli"])
                if t
            ]
            if self._seen_tli is not None and self._seen_tli[0] == postmaster_pid:
                known.append(self._seen_tli[1])
            if not row["received_tli"] and wal_lsn is not None:
                # No receiver to ask (its upstream died) and an agent that just started never
                # saw one: the segment file holding the last byte it has names the timeline it
                # received it on (a restarted agent rewound its standby for nothing, onto a
                # leader that had just died, and stayed stuck retrying it: docs/chaos.md).
                wal_dir = os.path.join(self._settings.data_dir, "pg_wal")
                last = max(wal_lsn - 1, 0)
                found = position_timeline(wal_dir, Lsn(last), int(row["wal_segment_size"]))
                if found:
                    known.append(found)
            timeline = max(known) if known else None
            if timeline is not None:
                self._seen_tli = (postmaster_pid, timeline)
        else:
            wal_lsn = row["write_lsn"]
            timeline = int(row["walfile"][:8], 16)
        return LocalState(
            data_dir_initialized=initialized,
            running=True,
            postmaster_pid=postmaster_pid,
            in_recovery=in_recovery,
            system_id=row["system_id"],
            timeline=timeline,
            wal_lsn=wal_lsn,
            receive_lsn=receive_lsn,
            replay_lsn=replay_lsn,
            streaming=streaming,
            upstream=upstream,
            replication=parse_replication(row["replication"]),
            slots=parse_slot_states(row["slots"]),
            **parse_settings(row["settings"]),
            archiver=parse_archiver(row["archiver"]),
            socket_only=row["socket_only"] is True,
            sync_standbys=_ssn(row["synchronous_standby_names"]),
            sync_standbys_pending=_ssn_pending(
                row["synchronous_standby_names"], row["synchronous_standby_names_file"]
            ),
        )

    async def close(self) -> None:
        """Drop the kept connection (a smart shutdown waits for it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()
