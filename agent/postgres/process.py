"""The only code that starts, stops, signals or promotes the postmaster.

The postmaster is started directly (`postgres -D <data> -c ...`), as a child of the agent in a
session of its own: its process group id is its pid, so a SIGKILL of the agent does not reach
it and a fencer can `killpg` exactly that group. When the agent runs as root, PostgreSQL and its
tools run as `settings.os_user`. A `Postmaster` adopts a postmaster that already runs on its
data directory (an agent restart), recognised by postmaster.pid, /proc/<pid>/cwd and cmdline.

File layout (see replication.py): the agent's pg_hba.conf, pg_ident.conf and the server log
live in `<run_dir>/postgres/` (owned by the OS user, mode 0700), outside the data directory,
so pg_rewind and pg_basebackup cannot replace them.

Its neighbours: tools.py runs PostgreSQL's tools, datadir.py writes the standby and client
files, pidfile.py finds a running postmaster, sqlconn.py holds the control connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from enum import StrEnum

import structlog

from agent.config import PostgresSettings
from agent.model import PgConfig
from agent.postgres import conffile, failover_slots, replication
from agent.postgres.datadir import (
    StandbyConfig,
    configure_standby,
    is_initialized,
    is_standby_dir,
    standby_conninfo,
    write_client_files,
)
from agent.postgres.osfiles import (
    PostgresError,
    RunAs,
    agent_os_users,
    ensure_dir,
    run_as,
    write_file,
)
from agent.postgres.pidfile import (
    pidfile_ready,
    read_pidfile,
    running_postmaster_pid,
    wait_pid_exit,
)
from agent.postgres.sqlconn import ControlConnection
from agent.postgres.tools import KILL_WAIT_S, tail, tool_env
from agent.proctree import kill_postmaster_tree, process_state, raise_nice

_POLL_S = 0.01
_log = structlog.get_logger(__name__)


class StopMode(StrEnum):
    SMART = "smart"
    FAST = "fast"
    IMMEDIATE = "immediate"
    KILL = "kill"  # SIGKILL the process tree at once: a server that no longer answers


_STOP_SIGNALS = {
    StopMode.SMART: signal.SIGTERM,
    StopMode.FAST: signal.SIGINT,
    StopMode.IMMEDIATE: signal.SIGQUIT,
}

# --------------------------------------------------------------------------- the postmaster


def replication_timeout_options(ttl_s: float) -> list[str]:
    """`-c` options that bound how long a silent replication peer is trusted, from the HA ttl.

    PostgreSQL's defaults (wal_sender_timeout and wal_receiver_timeout 60 s) keep a walsender
    'streaming' to a standby that was cut off without a TCP reset for a minute: a synchronous
    commit waits for it all that time, far longer than the agent takes to notice the standby
    is gone (its member record expires after one ttl) and drop it from the synchronous set.
    So both timeouts are one ttl, and the standby replies at least every ttl/4 (at least 1 s,
    the setting's unit) so that a live one is never mistaken for a silent one.
    A standby whose upstream changed (a failover, a hand-over) retries streaming every
    `wal_retrieve_retry_interval`, 5 s by default: its first attempt usually fails (the new
    primary has not created its slot yet), so it streamed again only after 5-7 s, and a
    leader handing over on SIGTERM waits for that. ttl/20 (at least 100 ms) makes the retry
    quick; the cost is one connection attempt per interval while no upstream is reachable.
    They come before `postgresql.parameters` on the command line: a user's value wins (the
    last `-c` of a name counts).
    """
    timeout_ms = max(int(ttl_s * 1000), 1000)
    interval_s = max(int(ttl_s / 4), 1)
    retry_ms = max(int(ttl_s * 1000 / 20), 100)
    return [
        "-c",
        f"wal_retrieve_retry_interval={retry_ms}ms",
        "-c",
        f"wal_sender_timeout={timeout_ms}ms",
        "-c",
        f"wal_receiver_timeout={timeout_ms}ms",
        "-c",
        f"wal_receiver_status_interval={interval_s}s",
    ]


class Postmaster:
    """Owner of one postmaster (started here or adopted). One task should own each instance."""

    def __init__(
        self,
        settings: PostgresSettings,
        *,
        member_name: str,
        run_dir: str,
        ttl_s: float | None = None,
        archive: Sequence[tuple[str, str]] = (),
    ) -> None:
        """`ttl_s`: the HA lease ttl, from which the replication timeouts are derived
        (`replication_timeout_options`); None leaves PostgreSQL's own defaults. `archive`:
        archive_mode, archive_command, restore_command (agent/postgres/pgbackrest.py)."""
        self._settings = settings
        self._member_name = member_name
        self._run_dir = run_dir
        self._ttl_s = ttl_s
        self._archive = tuple(archive)
        self._child: subprocess.Popen[bytes] | None = None
        self._sql = ControlConnection(settings)
        self._log_offset = 0
        # The DCS `postgresql` section the files are rendered with (agent/pgparams.py), and
        # the lock every write of them and every reload takes (agent/postgres/checker.py
        # writes a trial pg_hba.conf under it).
        self.dynamic = PgConfig()
        self.config_lock = asyncio.Lock()

    def who(self) -> RunAs:
        """The OS user PostgreSQL runs as."""
        return run_as(self._settings)

    # ---------------------------------------------------------------- state

    def pid(self) -> int | None:
        """The live postmaster's pid (our child, or one adopted from postmaster.pid), else None."""
        if self._child is not None:
            if self._child.poll() is None:
                return self._child.pid
            self._child = None
        return running_postmaster_pid(self._settings.data_dir)

    async def wait_for_exit(self) -> None:
        """Return when the postmaster is gone (at once if none runs). No timeout of its own:
        it waits for an event; callers bound it if they must."""
        pid = self.pid()
        if pid is None:
            return
        await wait_pid_exit(pid)
        self._reap()

    def _reap(self) -> None:
        if self._child is not None and self._child.poll() is not None:
            self._child = None

    # ---------------------------------------------------------------- start / stop

    def write_auth_files(self) -> None:
        """(Re)write the agent's postgresql.conf, pg_hba.conf, pg_ident.conf, the password
        file and the TLS files (`write_client_files`) into `<run_dir>/postgres/`."""
        settings = self._settings
        who = run_as(settings)
        os.makedirs(self._run_dir, exist_ok=True)
        ensure_dir(replication.conf_dir(self._run_dir), who)
        hba = conffile.render_hba_for(
            settings,
            (
                *self.dynamic.pg_hba,
                *failover_slots.slot_sync_hba(settings, self.dynamic.parameters),
            ),
        )
        ident = replication.render_ident(
            os_users=agent_os_users(who), superuser=settings.superuser.username
        )
        conf = conffile.render_conf(
            settings,
            self.dynamic,
            member_name=self._member_name,
            run_dir=self._run_dir,
            timeouts=[
                *(replication_timeout_options(self._ttl_s) if self._ttl_s is not None else ()),
                *failover_slots.failover_slot_options(settings, self.dynamic.parameters),
            ],
            archive=self._archive,
        )
        write_file(replication.hba_path(self._run_dir), hba, who)
        write_file(replication.ident_path(self._run_dir), ident, who)
        write_file(conffile.conf_path(self._run_dir), conf, who)
        write_client_files(settings, self._run_dir)

    async def start(
        self, *, standby: StandbyConfig | None, timeout_s: float, socket_only: bool = False
    ) -> None:
        """Start the postmaster (as a primary, or as a standby of `standby`) and return once it
        accepts connections (a primary: writes). `socket_only`: it listens on its Unix socket
        only (`listen_addresses = ''`), so no TCP client can reach it: a new cluster before its
        bootstrap completed (`open_to_clients` then restarts it as configured).

        Writes the auth files, standby.signal and the standby's conninfo/slot first. A data
        directory that was a standby (standby.signal present) and is started as a primary is
        started as a standby without upstream and then promoted: merely removing
        standby.signal would keep it on its old timeline, alongside whichever node continues
        that timeline, and a later pg_rewind between the two could not see the divergence.
        If a postmaster already runs on the data directory (ours or adopted), only waits for
        it to accept connections: its role is not changed.
        Raises PostgresError if the data directory is not initialized, if the server exits
        during start (with the log's tail), or if it is not ready within `timeout_s` (it is
        then left running; stop it if you want it gone).
        """
        settings = self._settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        who = run_as(settings)
        pid = self.pid()
        promote = False
        if pid is None:
            if not is_initialized(settings):
                raise PostgresError(
                    f"data directory {settings.data_dir} is not initialized (no PG_VERSION)"
                )
            if standby is None and is_standby_dir(settings):
                promote = True
                standby = StandbyConfig(
                    primary_host="",
                    primary_port=0,
                    slot_name=None,
                    application_name=self._member_name,
                )
            self._prepare_start(who, standby)
            pid = self._spawn(who, socket_only=socket_only)
        self.renice()
        await self._wait_ready(pid, timeout_s)
        if promote:
            await self.promote(timeout_s=max(deadline - loop.time(), 0.5))

    def _prepare_start(self, who: RunAs, standby: StandbyConfig | None) -> None:
        self.write_auth_files()
        sock_dir = replication.socket_dir(self._settings)
        if not os.path.isdir(sock_dir):
            ensure_dir(sock_dir, who)
        configure_standby(self._settings, standby, run_dir=self._run_dir)

    def _spawn(self, who: RunAs, *, socket_only: bool) -> int:
        settings = self._settings
        args = [
            os.path.join(settings.bin_dir, "postgres"),
            "-D",
            settings.data_dir,
            *conffile.command_line(settings, member_name=self._member_name, run_dir=self._run_dir),
            # The last -c of a name wins: no TCP socket at all.
            *(("-c", "listen_addresses=") if socket_only else ()),
        ]
        log_file = replication.log_path(self._run_dir)
        with open(log_file, "ab") as log:
            self._log_offset = log.tell()
            self._child = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: fencing kills exactly it
                cwd="/",
                env=tool_env(who),
                user=who.user,
                group=who.group,
                extra_groups=who.extra_groups,
            )
        return self._child.pid

    def renice(self) -> None:
        """Run the live postmaster and its children at `settings.nice` (agent/proctree.py
        `raise_nice`; none running: nothing). `start` calls it right after the spawn, before
        the postmaster forks its first child (a child already there is set too); the agent at
        start for a postmaster it adopts."""
        nice = self._settings.nice
        pid = self.pid()
        if pid is None or nice == 0:
            return
        failed = raise_nice(pid, nice)  # threads that could not be set
        if failed:
            _log.warning("postgres_renice_failed", pid=pid, nice=nice, threads=failed)

    def log_tail(self) -> str:
        """The server log written since the last start (its last lines)."""
        try:
            with open(replication.log_path(self._run_dir), "rb") as handle:
                handle.seek(self._log_offset)
                return tail(handle.read().decode(errors="replace"))
        except OSError:
            return ""

    async def open_to_clients(self, *, timeout_s: float) -> bool:
        """A running server that listens on its Unix socket only (started `socket_only`):
        restart it (fast) to listen as configured; True when it did. listen_addresses takes a
        restart; the shutdown checkpoint of a new cluster is short (0.08 s for both, measured
        on a fresh cluster here)."""
        rows = await self.fetch("SELECT current_setting('listen_addresses')", timeout_s=timeout_s)
        if rows[0][0] != "":
            return False
        await self.stop(StopMode.FAST, timeout_s=timeout_s)
        await self.start(standby=None, timeout_s=timeout_s)
        return True

    async def _wait_ready(self, pid: int, timeout_s: float) -> None:
        """Poll postmaster.pid's status line (what `pg_ctl -w` reads) until ready or standby."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            child = self._child
            if self.pid() != pid:
                returncode = child.returncode if child is not None else None
                code = f" with code {returncode}" if returncode is not None else ""
                raise PostgresError(
                    f"postgres (pid {pid}) exited during start{code}: {self.log_tail()}"
                )
            lines = read_pidfile(self._settings.data_dir)
            if pidfile_ready(lines, pid):
                return
            if loop.time() >= deadline:
                raise PostgresError(
                    f"postgres (pid {pid}) did not accept connections within {timeout_s:.1f} s"
                    f" and is left running: {self.log_tail()}"
                )
            await asyncio.sleep(_POLL_S)

    async def stop(self, mode: StopMode, *, timeout_s: float) -> None:
        """Stop the postmaster and wait until it is gone. No error if none runs.

        Sends the mode's signal (smart SIGTERM, fast SIGINT, immediate SIGQUIT). If it is
        still alive after 80% of `timeout_s` (all of it for immediate), escalates to an
        immediate shutdown for the rest, then SIGKILLs its process group; returns at most
        ~2 s after `timeout_s`. KILL sends SIGKILL to the postmaster and every child at once
        (a pending SIGKILL also ends a stopped process, and one in uninterruptible I/O before
        it returns to user space) and waits up to ~2 s for the postmaster to be gone.
        A smart shutdown waits for every session, including a Prober's: close the Prober
        first. Raises PostgresError only if even SIGKILL fails.
        """
        await self._sql.close()
        pid = self.pid()
        if pid is None:
            return
        phases: list[tuple[signal.Signals, float]] = []
        if mode is StopMode.KILL:
            pass  # a hung server: no signal it must handle itself, SIGKILL the tree below
        elif mode is not StopMode.IMMEDIATE:
            phases.append((_STOP_SIGNALS[mode], timeout_s * 0.8))
            phases.append((signal.SIGQUIT, timeout_s * 0.2))
        else:
            phases.append((signal.SIGQUIT, timeout_s))
        for sig, budget in phases:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if await self._gone_within(pid, budget):
                return
        self._kill_group(pid)
        if not await self._gone_within(pid, KILL_WAIT_S):
            if mode is StopMode.KILL and process_state(pid) == "D":
                # Blocked in the kernel (hung storage): it exits as soon as that I/O returns,
                # without reaching user space again, so it can acknowledge nothing more.
                # Waiting for it could take forever; the kill has done its job.
                return
            raise PostgresError(f"postgres (pid {pid}) survived SIGKILL")

    async def _gone_within(self, pid: int, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await wait_pid_exit(pid)
        except TimeoutError:
            return False
        self._reap()
        return True

    def kill(self) -> None:
        """SIGKILL the postmaster and every process it started, now (fencing of last resort)."""
        pid = self.pid()
        if pid is not None:
            self._kill_group(pid)

    @staticmethod
    def _kill_group(pid: int) -> None:
        """SIGKILL the postmaster, its children and their groups (agent/proctree.py)."""
        kill_postmaster_tree(pid)

    # ---------------------------------------------------------------- SQL

    async def fetch(self, sql: str, *args: object, timeout_s: float) -> list[tuple[object, ...]]:
        """Run a query as the superuser over the unix socket; rows as tuples.

        Raises PostgresError on any failure (SQL error, connection refused, timeout); the
        connection is dropped after a failure of its own and made again on the next call.
        """
        return await self._sql.fetch(sql, *args, timeout_s=timeout_s)

    async def execute(self, sql: str, *args: object, timeout_s: float) -> None:
        """Run one statement as the superuser over the unix socket (see `fetch` for errors).

        Without `args` it goes over the simple protocol, so utility statements such as
        ALTER SYSTEM work."""
        await self._sql.execute(sql, *args, timeout_s=timeout_s)

    async def reload(self) -> None:
        """Rewrite the configuration files and make the server re-read them (SIGHUP)."""
        async with self.config_lock:
            pid = self.pid()
            if pid is None:
                raise PostgresError("reload: postgres is not running")
            self.write_auth_files()
            os.kill(pid, signal.SIGHUP)

    async def apply_dynamic(self, dynamic: PgConfig) -> None:
        """Render the files with the DCS settings `dynamic` from now on; a running server
        re-reads them at once (SIGHUP), a stopped one at its next start."""
        async with self.config_lock:
            self.dynamic = dynamic
            self.write_auth_files()
            pid = self.pid()
            if pid is not None:
                os.kill(pid, signal.SIGHUP)

    async def promote(self, *, timeout_s: float) -> None:
        """Promote a running standby and return once it accepts writes.

        `pg_promote(wait => false)` and our own 10 ms poll of pg_is_in_recovery(): quicker
        than wait => true, which polls every 100 ms. A primary is left as it is. Raises
        PostgresError if it is still in recovery after `timeout_s`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if not await self._in_recovery(timeout_s):
            return
        rows = await self.fetch("SELECT pg_promote(wait => false)", timeout_s=timeout_s)
        if rows[0][0] is not True:
            raise PostgresError("pg_promote() could not signal the server")
        while loop.time() < deadline:
            await asyncio.sleep(_POLL_S)
            remaining = max(deadline - loop.time(), 0.05)
            if not await self._in_recovery(remaining):
                return
        raise PostgresError(f"still in recovery {timeout_s:.1f} s after pg_promote()")

    async def _in_recovery(self, timeout_s: float) -> bool:
        rows = await self.fetch("SELECT pg_is_in_recovery()", timeout_s=timeout_s)
        return rows[0][0] is True

    async def follow(self, standby: StandbyConfig, *, timeout_s: float = 5.0) -> None:
        """Point a running standby at another primary without a restart.

        ALTER SYSTEM primary_conninfo / primary_slot_name (kept across restarts in
        postgresql.auto.conf) and pg_reload_conf(): PostgreSQL 13+ restarts only its WAL
        receiver. Each ALTER SYSTEM is its own statement (it refuses a transaction block).
        A `standby` with an empty primary_host (or no slot) resets that setting.
        """
        conninfo = standby_conninfo(self._settings, standby, run_dir=self._run_dir)
        if conninfo is None:
            await self.execute("ALTER SYSTEM RESET primary_conninfo", timeout_s=timeout_s)
        else:
            literal = replication.quote_literal(conninfo)
            await self.execute(
                f"ALTER SYSTEM SET primary_conninfo = {literal}", timeout_s=timeout_s
            )
        if standby.slot_name is None:
            await self.execute("ALTER SYSTEM RESET primary_slot_name", timeout_s=timeout_s)
        else:
            slot = replication.quote_literal(standby.slot_name)
            await self.execute(f"ALTER SYSTEM SET primary_slot_name = {slot}", timeout_s=timeout_s)
        await self.execute("SELECT pg_reload_conf()", timeout_s=timeout_s)

    async def close(self) -> None:
        """Drop the SQL connection. The postmaster keeps running."""
        await self._sql.close()


__all__ = [
    "PostgresError",
    "Postmaster",
    "StandbyConfig",
    "StopMode",
    "replication_timeout_options",
]
