"""SQL (or pg_controldata, when the server is down) -> one immutable LocalState per probe.

The probe keeps one asyncpg connection over the unix socket and asks everything in a single
round trip. It never raises for a server that is down, starting or broken: that is what it
reports. Only cancellation propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os

import asyncpg

from agent.config import PostgresSettings
from agent.model import ControlData, LocalState, Lsn, ReplicationRow, SyncStandbys, parse_lsn
from agent.postgres.process import connect_local, is_initialized, run_tool
from agent.postgres.replication import parse_synchronous_standby_names

# One round trip. `r` is evaluated once (a volatile subquery is not flattened), and once a
# server is out of recovery it never goes back, so the primary-only functions are only called
# on a primary. On a primary the timeline comes from the current WAL file name:
# pg_control_checkpoint() lags until the next checkpoint after a promotion.
_PROBE_SQL = """
SELECT
  s.r AS in_recovery,
  (SELECT system_identifier FROM pg_control_system())::text AS system_id,
  CASE WHEN s.r THEN NULL ELSE pg_current_wal_lsn() END AS write_lsn,
  CASE WHEN s.r THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END AS walfile,
  CASE WHEN s.r THEN pg_last_wal_receive_lsn() END AS receive_lsn,
  CASE WHEN s.r THEN pg_last_wal_replay_lsn() END AS replay_lsn,
  (SELECT timeline_id FROM pg_control_checkpoint()) AS checkpoint_tli,
  (SELECT min_recovery_end_timeline FROM pg_control_recovery()) AS min_recovery_tli,
  w.status AS receiver_status,
  w.received_tli AS received_tli,
  w.sender_host AS sender_host,
  w.sender_port AS sender_port,
  current_setting('synchronous_standby_names') AS synchronous_standby_names,
  (SELECT coalesce(json_agg(json_build_object(
      'application_name', application_name, 'state', state, 'sync_state', sync_state,
      'sent_lsn', sent_lsn::text, 'write_lsn', write_lsn::text,
      'flush_lsn', flush_lsn::text, 'replay_lsn', replay_lsn::text)
      ORDER BY application_name), '[]'::json)::text
   FROM pg_stat_replication) AS replication
FROM (SELECT pg_is_in_recovery() AS r) AS s
LEFT JOIN pg_stat_wal_receiver AS w ON true
"""


def _lsn_or_none(value: object) -> Lsn | None:
    if isinstance(value, str) and value:
        try:
            return parse_lsn(value)
        except ValueError:
            return None
    return None


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
                state=str(item.get("state") or ""),
                sync_state=str(item.get("sync_state") or ""),
                sent_lsn=_lsn_or_none(item.get("sent_lsn")),
                write_lsn=_lsn_or_none(item.get("write_lsn")),
                flush_lsn=_lsn_or_none(item.get("flush_lsn")),
                replay_lsn=_lsn_or_none(item.get("replay_lsn")),
            )
        )
    return tuple(rows)


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

    async def probe(
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
        if running and initialized:
            try:
                # 70% for SQL, the rest for pg_controldata if SQL fails (a frozen server).
                async with asyncio.timeout(timeout_s * 0.7):
                    state = await self._query(initialized, postmaster_pid)
                return state
            except asyncio.CancelledError:
                raise
            except Exception:  # a down or broken server is a state to report, not an error
                await self.close()
        else:
            await self.close()
        control = await read_controldata(self._settings, timeout_s=max(deadline - loop.time(), 0.1))
        return LocalState(
            data_dir_initialized=initialized,
            running=False,
            postmaster_pid=postmaster_pid,
            control=control,
        )

    async def _query(self, initialized: bool, postmaster_pid: int | None) -> LocalState:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            try:
                row = await conn.fetchrow(_PROBE_SQL)
                return self._state_from_row(row, initialized, postmaster_pid)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                # Lost since the last probe (a restart, an admin shutdown): reconnect once.
                await self.close()
        conn = await connect_local(
            self._settings, timeout_s=5.0, purpose="probe", cache_statements=True
        )
        self._conn = conn
        row = await conn.fetchrow(_PROBE_SQL)
        return self._state_from_row(row, initialized, postmaster_pid)

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
            sync_standbys=parse_synchronous_standby_names(row["synchronous_standby_names"] or "")
            or SyncStandbys(quorum=False, count=1, names=("*",)),
        )

    async def close(self) -> None:
        """Drop the kept connection (a smart shutdown waits for it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()
