"""The only code that starts, stops, signals or promotes the postmaster.

The postmaster is started directly (`postgres -D <data> -c ...`), as a child of the agent in a
session of its own: its process group id is its pid, so a SIGKILL of the agent does not reach
it and a fencer can `killpg` exactly that group. When the agent runs as root, PostgreSQL and its
tools run as `settings.os_user`. A `Postmaster` adopts a postmaster that already runs on its
data directory (an agent restart), recognised by postmaster.pid, /proc/<pid>/cwd and cmdline.

File layout (see replication.py): the agent's pg_hba.conf, pg_ident.conf and the server log
live in `<run_dir>/postgres/` (owned by the OS user, mode 0700), outside the data directory,
so pg_rewind and pg_basebackup cannot replace them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg

from agent.config import PostgresSettings
from agent.model import PgConfig
from agent.postgres import conffile, failover_slots, replication
from agent.postgres.osfiles import (
    PostgresError,
    RunAs,
    agent_os_users,
    ensure_dir,
    run_as,
    write_file,
)
from agent.postgres.tls import install_server_files
from agent.proctree import kill_postmaster_tree, pid_alive, process_state

_POLL_S = 0.01
_KILL_WAIT_S = 2.0
_TAIL_CHARS = 1500


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


@dataclass(frozen=True, slots=True, kw_only=True)
class StandbyConfig:
    """Where a replica streams from. `application_name` is the replica's member name."""

    primary_host: str
    primary_port: int
    slot_name: str | None
    application_name: str


def tool_env(who: RunAs, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for PostgreSQL and its tools (C messages, no inherited PG* vars)."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": who.home,
        "USER": who.name,
        "LOGNAME": who.name,
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
    }
    if extra:
        env.update(extra)
    return env


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _TAIL_CHARS else "..." + text[-_TAIL_CHARS:]


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolResult:
    """A finished tool: its exit code and decoded output."""

    returncode: int
    stdout: str
    stderr: str


async def run_tool(
    settings: PostgresSettings,
    args: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    what: str,
) -> str:
    """Run a PostgreSQL tool as the OS user; return its stdout.

    Raises PostgresError (with stderr's tail) on a non-zero exit or after `timeout_s`; a
    timed-out or cancelled tool is killed with its whole process group.
    """
    result = await run_tool_result(settings, args, timeout_s=timeout_s, env=env, what=what)
    if result.returncode != 0:
        message = _tail(result.stderr) or _tail(result.stdout)
        raise PostgresError(f"{what} failed (exit {result.returncode}): {message}")
    return result.stdout


async def run_tool_result(
    settings: PostgresSettings,
    args: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    what: str,
) -> ToolResult:
    """Like `run_tool`, but a non-zero exit is a result, not an error (for tools such as
    pg_waldump whose normal end is an error message). Raises PostgresError only after
    `timeout_s` (the tool is then killed with its process group)."""
    who = run_as(settings)
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd="/",
        env=tool_env(who, env),
        user=who.user,
        group=who.group,
        extra_groups=who.extra_groups,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_KILL_WAIT_S):
                await proc.wait()
        if isinstance(exc, TimeoutError):
            raise PostgresError(f"{what} timed out after {timeout_s:.1f} s") from None
        raise
    return ToolResult(
        returncode=proc.returncode if proc.returncode is not None else -1,
        stdout=out.decode(errors="replace"),
        stderr=err.decode(errors="replace"),
    )


# --------------------------------------------------------------------------- data directory


def is_initialized(settings: PostgresSettings) -> bool:
    return os.path.isfile(os.path.join(settings.data_dir, "PG_VERSION"))


def _is_standby_dir(settings: PostgresSettings) -> bool:
    return os.path.exists(os.path.join(settings.data_dir, "standby.signal"))


def configure_standby(
    settings: PostgresSettings, standby: StandbyConfig | None, *, run_dir: str
) -> None:
    """While stopped: make the data directory start as a standby of `standby`, or as a primary.

    A standby gets standby.signal and its own primary_conninfo/primary_slot_name lines in
    postgresql.auto.conf (the rest of the file is kept); a primary loses standby.signal.
    The conninfo names the password file `write_client_files` writes into `run_dir`.
    """
    who = run_as(settings)
    signal_path = os.path.join(settings.data_dir, "standby.signal")
    if standby is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(signal_path)
        return
    auto_path = os.path.join(settings.data_dir, "postgresql.auto.conf")
    try:
        with open(auto_path, encoding="utf-8") as handle:
            existing = handle.read()
    except FileNotFoundError:
        existing = ""
    text = replication.render_auto_conf(
        existing,
        conninfo=standby_conninfo(settings, standby, run_dir=run_dir),
        slot_name=standby.slot_name,
    )
    write_file(auto_path, text, who)
    write_file(signal_path, "", who)


def standby_conninfo(
    settings: PostgresSettings, standby: StandbyConfig, *, run_dir: str
) -> str | None:
    """primary_conninfo for `standby`; None when it names no primary (an empty host): such a
    standby replays what it has and waits for a later follow(). The password stays in the
    password file (`write_client_files`), TLS as postgresql.tls says."""
    if not standby.primary_host:
        return None
    return replication.primary_conninfo(
        host=standby.primary_host,
        port=standby.primary_port,
        user=settings.replication.username,
        passfile=passfile_for(settings, run_dir),
        tls=replication.client_tls(settings, run_dir),
        application_name=standby.application_name,
        # The slot sync worker (17+) connects with it to a database; streaming ignores it.
        dbname=failover_slots.conninfo_dbname(settings),
    )


def passfile_for(settings: PostgresSettings, run_dir: str) -> str | None:
    """The password file's path when a replication or superuser password is set, else None."""
    if settings.replication.password is None and settings.superuser.password is None:
        return None
    return replication.passfile_path(run_dir)


def write_client_files(settings: PostgresSettings, run_dir: str) -> None:
    """The files PostgreSQL and its tools read as the OS user, in `<run_dir>/postgres/`:

    - the libpq password file (mode 0600; libpq ignores a looser one) with the replication
      and superuser passwords, which conninfo strings name instead of holding the password;
    - with postgresql.tls, copies of its certificate, key and CA in `tls/`
      (`tls.install_server_files`: mode 0600, replaced only by a set that loads). Rewritten
      before every start and reload, so a rotated certificate is used after the next reload
      (`tls.TlsRenewal` reloads when the files change).
    Raises OSError when a source file cannot be read, PostgresError when the TLS files do not
    load together.
    """
    who = run_as(settings)
    ensure_dir(replication.conf_dir(run_dir), who)
    entries = [
        (credentials.username, credentials.password.reveal())
        for credentials in (settings.replication, settings.superuser)
        if credentials.password is not None
    ]
    if entries:
        write_file(replication.passfile_path(run_dir), replication.render_passfile(entries), who)
    if settings.tls is not None:
        install_server_files(settings.tls, run_dir, who)


def _read_pidfile(data_dir: str) -> list[str] | None:
    try:
        with open(os.path.join(data_dir, "postmaster.pid"), encoding="utf-8") as handle:
            return handle.read().splitlines()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None


def _pidfile_ready(lines: list[str] | None, pid: int) -> bool:
    """postmaster.pid says `pid` accepts connections (line 8: "ready" or "standby")."""
    return (
        lines is not None
        and len(lines) >= 8
        and lines[0].strip() == str(pid)
        and lines[7].strip() in ("ready", "standby")
    )


def running_postmaster_pid(data_dir: str) -> int | None:
    """The pid of a live postmaster serving `data_dir`, whoever started it.

    Checked three ways so that a stale postmaster.pid whose pid was reused is not trusted:
    the pid file, the process's working directory (the postmaster chdirs to its data
    directory) and its program name.
    """
    lines = _read_pidfile(data_dir)
    if not lines:
        return None
    try:
        pid = int(lines[0])
    except ValueError:
        return None
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv0 = handle.read().split(b"\0", 1)[0]
    except OSError:
        return None
    if os.path.realpath(cwd) != os.path.realpath(data_dir):
        return None
    if os.path.basename(argv0.decode(errors="replace")) not in ("postgres", "postmaster"):
        return None
    return pid


async def wait_pid_exit(pid: int) -> None:
    """Return when process `pid` has exited (a zombie counts as exited). Uses a pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd (kernel < 5.3, seccomp): poll instead
        while True:
            if not pid_alive(pid):
                return
            await asyncio.sleep(_POLL_S * 5)
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await gone
    finally:
        loop.remove_reader(fd)
        os.close(fd)


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
        self._conn: asyncpg.Connection | None = None
        # One statement at a time on the control connection: the loop's short actions, a
        # hand-over's CHECKPOINT in the background and the API share it, and asyncpg refuses
        # a second operation in progress (the refusal used to drop the connection under the
        # first). A waiting caller still keeps its own time limit.
        self._sql_lock = asyncio.Lock()
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

    async def start(self, *, standby: StandbyConfig | None, timeout_s: float) -> None:
        """Start the postmaster (as a primary, or as a standby of `standby`) and return once it
        accepts connections (a primary: writes).

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
            if standby is None and _is_standby_dir(settings):
                promote = True
                standby = StandbyConfig(
                    primary_host="",
                    primary_port=0,
                    slot_name=None,
                    application_name=self._member_name,
                )
            self._prepare_start(who, standby)
            pid = self._spawn(who)
        await self._wait_ready(pid, timeout_s)
        if promote:
            await self.promote(timeout_s=max(deadline - loop.time(), 0.5))

    def _prepare_start(self, who: RunAs, standby: StandbyConfig | None) -> None:
        self.write_auth_files()
        sock_dir = replication.socket_dir(self._settings)
        if not os.path.isdir(sock_dir):
            ensure_dir(sock_dir, who)
        configure_standby(self._settings, standby, run_dir=self._run_dir)

    def _spawn(self, who: RunAs) -> int:
        settings = self._settings
        args = [
            os.path.join(settings.bin_dir, "postgres"),
            "-D",
            settings.data_dir,
            *conffile.command_line(settings, member_name=self._member_name, run_dir=self._run_dir),
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

    def log_tail(self) -> str:
        """The server log written since the last start (its last lines)."""
        try:
            with open(replication.log_path(self._run_dir), "rb") as handle:
                handle.seek(self._log_offset)
                return _tail(handle.read().decode(errors="replace"))
        except OSError:
            return ""

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
            lines = _read_pidfile(self._settings.data_dir)
            if _pidfile_ready(lines, pid):
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
        await self._close_conn()
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
        if not await self._gone_within(pid, _KILL_WAIT_S):
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

    async def _connection(self, timeout_s: float) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = await connect_local(self._settings, timeout_s=timeout_s, purpose="control")
        return self._conn

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def fetch(self, sql: str, *args: object, timeout_s: float) -> list[tuple[object, ...]]:
        """Run a query as the superuser over the unix socket; rows as tuples.

        Raises PostgresError on any failure (SQL error, connection refused, timeout); the
        connection is dropped after a failure of its own and made again on the next call.
        """
        rows = await self._on_connection(sql, timeout_s, lambda conn: conn.fetch(sql, *args))
        return [tuple(row) for row in rows]

    async def execute(self, sql: str, *args: object, timeout_s: float) -> None:
        """Run one statement as the superuser over the unix socket (see `fetch` for errors).

        Without `args` it goes over the simple protocol, so utility statements such as
        ALTER SYSTEM work."""
        await self._on_connection(sql, timeout_s, lambda conn: conn.execute(sql, *args))

    async def _on_connection(
        self,
        sql: str,
        timeout_s: float,
        statement: Callable[[asyncpg.Connection], Awaitable[Any]],
    ) -> Any:
        """`statement` on the control connection, alone on it, within `timeout_s` (waiting
        for the connection included). Only a failure while this caller holds the connection
        drops it: a caller that timed out waiting leaves the running statement alone."""
        try:
            async with asyncio.timeout(timeout_s), self._sql_lock:
                try:
                    conn = await self._connection(timeout_s)
                    return await statement(conn)
                except asyncpg.PostgresError:
                    raise  # an SQL error: the connection is fine
                except BaseException:  # interface error, OSError, our timeout's cancellation
                    await self._close_conn()
                    raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise PostgresError(f"{_first_line(sql)}: {exc!r}") from exc

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
        await self._close_conn()


def _first_line(sql: str) -> str:
    line = sql.strip().splitlines()[0] if sql.strip() else ""
    return line[:80]


async def connect_local(
    settings: PostgresSettings,
    *,
    timeout_s: float,
    purpose: str,
    cache_statements: bool = False,
    database: str = "postgres",
) -> asyncpg.Connection:
    """A superuser connection over the unix socket (peer authentication via the ident map).

    `cache_statements` keeps prepared statements: a repeated query then costs one round trip
    instead of two (parse, then execute); off for ad-hoc control statements."""
    conn: asyncpg.Connection = await asyncpg.connect(
        host=replication.socket_dir(settings),
        port=settings.port,
        user=settings.superuser.username,
        database=database,
        timeout=timeout_s,
        statement_cache_size=100 if cache_statements else 0,
        server_settings={"application_name": f"pgwarden-{purpose}"},
    )
    return conn


__all__ = [
    "PostgresError",
    "Postmaster",
    "RunAs",
    "StandbyConfig",
    "StopMode",
    "ToolResult",
    "configure_standby",
    "connect_local",
    "ensure_dir",
    "is_initialized",
    "passfile_for",
    "replication_timeout_options",
    "run_as",
    "run_tool",
    "run_tool_result",
    "running_postmaster_pid",
    "standby_conninfo",
    "wait_pid_exit",
    "write_client_files",
    "write_file",
]
