"""Making a data directory: initdb, pg_basebackup (clone), pg_rewind; roles and slots.

Every tool runs as the unprivileged OS user (process.run_tool). Passwords reach the tools
through the agent's libpq password file (named by `passfile` in their conninfo) or a private
--pwfile, never on a command line or in their environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import Collection

import asyncpg

from agent.config import PostgresSettings
from agent.model import Lsn, parse_lsn
from agent.postgres import conffile, replication
from agent.postgres.datadir import (
    StandbyConfig,
    configure_standby,
    copy_marker,
    is_initialized,
    kill_copy_tools,
    passfile_for,
    write_client_files,
)
from agent.postgres.osfiles import PostgresError, ensure_dir, run_as, write_file
from agent.postgres.process import Postmaster
from agent.postgres.tls import client_ssl_context
from agent.postgres.tools import run_tool, run_tool_result

_SQL_TIMEOUT_S = 5.0


def _tool(settings: PostgresSettings, name: str) -> str:
    return os.path.join(settings.bin_dir, name)


def is_empty_dir(path: str) -> bool:
    return not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path))


async def initdb(settings: PostgresSettings, *, run_dir: str, timeout_s: float = 60.0) -> None:
    """Create a new cluster in `settings.data_dir` (created if missing, mode 0700).

    Data checksums are on (pg_rewind needs them or wal_log_hints); the superuser gets its
    password from a private --pwfile. Raises PostgresError if the directory is not empty.
    """
    who = run_as(settings)
    discard_interrupted_copy(settings, run_dir)
    if not is_empty_dir(settings.data_dir):
        raise PostgresError(f"initdb: data directory {settings.data_dir} is not empty")
    ensure_dir(settings.data_dir, who)
    ensure_dir(replication.conf_dir(run_dir), who)
    args = [
        _tool(settings, "initdb"),
        "-D",
        settings.data_dir,
        "--data-checksums",
        "--encoding=UTF8",
        "--locale=C.UTF-8",
        f"--username={settings.superuser.username}",
        # The agent's own hba_file replaces initdb's; these only make the unused file safe
        # (initdb refuses a password method without a password).
        "--auth-local=peer",
    ]
    pwfile = os.path.join(replication.conf_dir(run_dir), "initdb.pw")
    password = settings.superuser.password
    args.append("--auth-host=scram-sha-256" if password is not None else "--auth-host=reject")
    try:
        if password is not None:
            write_file(pwfile, password.reveal() + "\n", who)
            args.append(f"--pwfile={pwfile}")
        await run_tool(settings, args, timeout_s=timeout_s, what="initdb")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pwfile)


async def create_roles(postmaster: Postmaster, settings: PostgresSettings) -> None:
    """On a primary: the replication role (LOGIN REPLICATION) with its password, and the
    superuser's password. Idempotent: an existing role is altered to match."""
    repl = settings.replication
    name = replication.quote_ident(repl.username)
    password = (
        f"PASSWORD {replication.quote_literal(repl.password.reveal())}"
        if repl.password is not None
        else "PASSWORD NULL"
    )
    exists = await postmaster.fetch(
        "SELECT 1 FROM pg_roles WHERE rolname = $1", repl.username, timeout_s=_SQL_TIMEOUT_S
    )
    verb = "ALTER" if exists else "CREATE"
    await postmaster.execute(
        f"{verb} ROLE {name} WITH LOGIN REPLICATION {password}", timeout_s=_SQL_TIMEOUT_S
    )
    if settings.superuser.password is not None:
        superuser = replication.quote_ident(settings.superuser.username)
        secret = replication.quote_literal(settings.superuser.password.reveal())
        await postmaster.execute(
            f"ALTER ROLE {superuser} WITH PASSWORD {secret}", timeout_s=_SQL_TIMEOUT_S
        )


async def ensure_slots(postmaster: Postmaster, wanted: Collection[str]) -> None:
    """On a primary: create the missing physical slots among `wanted` (reserving WAL at once).
    Slots not named are left alone."""
    if not wanted:
        return
    await postmaster.execute(
        "SELECT pg_create_physical_replication_slot(name, true)"
        " FROM unnest($1::text[]) AS name"
        " WHERE name NOT IN (SELECT slot_name FROM pg_replication_slots)",
        sorted(wanted),
        timeout_s=_SQL_TIMEOUT_S,
    )


async def drop_slots(postmaster: Postmaster, unwanted: Collection[str]) -> None:
    """Drop the physical slots named in `unwanted` that exist and are not in use; a slot a
    walsender still uses is left for a later call."""
    if not unwanted:
        return
    await postmaster.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
        " WHERE slot_name = ANY($1::text[]) AND slot_type = 'physical' AND NOT active",
        sorted(unwanted),
        timeout_s=_SQL_TIMEOUT_S,
    )


def clear_data_dir(settings: PostgresSettings) -> None:
    """Remove everything inside the data directory, keeping the directory (and its owner).
    For a re-clone after a failed rewind. Never call it while a postmaster runs."""
    data_dir = settings.data_dir
    if not os.path.isdir(data_dir):
        return
    for entry in os.scandir(data_dir):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def discard_interrupted_copy(settings: PostgresSettings, run_dir: str) -> None:
    """Empty the data directory if it holds the remains of an interrupted copy (the marker of
    `copy_marker`), and remove the marker."""
    marker = copy_marker(run_dir)
    if os.path.exists(marker):
        kill_copy_tools(settings)
        clear_data_dir(settings)
        os.unlink(marker)


def prepare_clone(settings: PostgresSettings, run_dir: str) -> str:
    """An empty data directory for pg_basebackup, and the in-progress marker's path."""
    who = run_as(settings)
    ensure_dir(replication.conf_dir(run_dir), who)
    marker = copy_marker(run_dir)
    if os.path.exists(marker):
        # The remains of an interrupted copy: a tool its agent left running goes first.
        kill_copy_tools(settings)
    if not is_empty_dir(settings.data_dir):
        if not os.path.exists(marker):
            raise PostgresError(
                f"clone: data directory {settings.data_dir} is not empty"
                " (clear_data_dir() first to re-clone)"
            )
        clear_data_dir(settings)
    ensure_dir(settings.data_dir, who)
    write_file(marker, "", who)
    return marker


async def clone(
    settings: PostgresSettings, source: StandbyConfig, *, run_dir: str, timeout_s: float
) -> None:
    """Copy `source` into the data directory with pg_basebackup -X stream, then configure it
    as a standby of `source` (standby.signal, primary_conninfo, primary_slot_name).

    The data directory must be empty or hold the remains of an interrupted clone (recognised
    by a marker in `<run_dir>/postgres/`), which is cleared first. Anything else raises
    PostgresError: call clear_data_dir() deliberately to re-clone over a real cluster.
    """
    marker = prepare_clone(settings, run_dir)
    write_client_files(settings, run_dir)
    conninfo = replication.primary_conninfo(
        host=source.primary_host,
        port=source.primary_port,
        user=settings.replication.username,
        passfile=passfile_for(settings, run_dir),
        tls=replication.client_tls(settings, run_dir),
        application_name=f"pgwarden-clone-{source.application_name}",
    )
    await run_tool(
        settings,
        [
            _tool(settings, "pg_basebackup"),
            "-D",
            settings.data_dir,
            "-d",
            conninfo,
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-password",
        ],
        timeout_s=timeout_s,
        what="pg_basebackup",
    )
    os.chmod(settings.data_dir, 0o700)
    configure_standby(settings, source, run_dir=run_dir)
    os.unlink(marker)


class SourceUnreachable(PostgresError):
    """The rewind's source could not be reached for the whole of the rewind's time budget.

    Raised by `rewind()` when every attempt failed to connect to the source: connection
    refused, no route to host, a connection or query timed out, a host name not resolved, the
    connection dropped during the pre-check, or the source not accepting connections yet
    (starting up, shutting down, too many clients). pg_rewind had not started changing the
    target then (it connects before anything else), so the data directory is intact: retry
    the rewind later; this is no reason to re-clone. Any other failure (a wrong password, or
    pg_rewind failing once connected) stays a plain PostgresError.
    """


# Between attempts to reach an unreachable source: doubling from the first pause to the last.
_RETRY_FIRST_PAUSE_S = 0.1
_RETRY_MAX_PAUSE_S = 0.5
# One connection attempt's limit, as pg_rewind's own (the conninfo's connect_timeout): a
# black-holed source must leave time for further attempts.
_CONNECT_TIMEOUT_S = 2.0
# The pre-check's whole attempt (connect, query, CHECKPOINT) at most.
_CHECK_TIMEOUT_S = 60.0

# Failures to reach the server in the pre-check (asyncpg): not an answer from PostgreSQL
# about the request, but no PostgreSQL to ask (yet).
_UNREACHABLE_ERRORS = (
    OSError,  # refused, no route to host (113), reset, name not resolved
    TimeoutError,
    asyncpg.ConnectionDoesNotExistError,  # dropped during the check
    asyncpg.CannotConnectNowError,  # starting up, shutting down, in recovery
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)

# How libpq (PostgreSQL 15; "could not connect to server" before 14) reports that it did not
# get a session: pg_rewind then exits before it touches the target.
_LIBPQ_CONNECT_FAILED = re.compile(
    r"^(?:connection to server (?:at|on socket) .*? failed: (?P<reason>.*)"
    r"|could not connect to server: (?P<old_reason>.*)"
    r"|could not translate host name .*)$"
)
# Of the server's own refusals (FATAL) only these are transient: SQLSTATE 57P03 and 53300.
_TRANSIENT_REFUSALS = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "sorry, too many clients already",
)


def could_not_connect(stderr: str) -> bool:
    """Whether a libpq tool's stderr says it failed to open its connection for a transient
    reason (the network, or a server not accepting connections yet), as opposed to an
    authentication failure or an error after connecting. Decides on the first error line:
    a tool that failed later has already reported something else first."""
    for line in stderr.splitlines():
        _, marker, message = line.partition(": error: ")
        if not marker:
            _, marker, message = line.partition(": fatal: ")  # PostgreSQL 13's wording
        if not marker:
            continue
        match = _LIBPQ_CONNECT_FAILED.match(message.strip())
        if match is None:
            return False
        reason = match.group("reason") or match.group("old_reason") or ""
        if "FATAL:" not in reason:
            return True  # refused, timeout expired, no route, closed unexpectedly, DNS
        return any(refusal in reason for refusal in _TRANSIENT_REFUSALS)
    return False


def _tail(text: str, chars: int = 1500) -> str:
    text = text.strip()
    return text if len(text) <= chars else "..." + text[-chars:]


# The source's timeline per its control file, and its current one (NULL on a standby).
_SOURCE_TIMELINES_SQL = """
SELECT (SELECT timeline_id FROM pg_control_checkpoint()),
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END
"""


async def _checkpoint_if_control_is_stale(
    settings: PostgresSettings, source: StandbyConfig, *, timeout_s: float
) -> None:
    """CHECKPOINT a freshly promoted source whose control file still shows the old timeline.

    pg_rewind reads the source's timeline from its control file, which a promotion updates
    only when the checkpoint it requests completes; before that pg_rewind sees one timeline,
    says "no rewind required" and leaves the divergent WAL in place (seen here ~100 ms after
    a promotion). The PostgreSQL documentation asks for this CHECKPOINT.
    Raises SourceUnreachable when the source cannot be reached within `timeout_s` (one
    attempt), PostgresError when it answers with an error.
    """
    password = settings.superuser.password
    try:
        async with asyncio.timeout(timeout_s):
            conn = await asyncpg.connect(
                host=source.primary_host,
                port=source.primary_port,
                user=settings.superuser.username,
                password=password.reveal() if password is not None else None,
                database="postgres",
                ssl=client_ssl_context(settings),
                timeout=min(timeout_s, _CONNECT_TIMEOUT_S),
                statement_cache_size=0,
                server_settings={"application_name": "pgwarden-rewind"},
            )
            try:
                checkpoint_tli, current_tli = await conn.fetchrow(_SOURCE_TIMELINES_SQL)
                if current_tli is not None and checkpoint_tli < current_tli:
                    await conn.execute("CHECKPOINT")
            finally:
                await conn.close()
    except _UNREACHABLE_ERRORS as exc:
        raise SourceUnreachable(f"rewind: cannot reach the source: {exc!r}") from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise PostgresError(f"rewind: cannot check the source's timeline: {exc!r}") from exc


def _rewind_command(settings: PostgresSettings, source_conninfo: str, run_dir: str) -> list[str]:
    command = [
        _tool(settings, "pg_rewind"),
        f"--target-pgdata={settings.data_dir}",
        f"--source-server={source_conninfo}",
    ]
    config_file = conffile.conf_path(run_dir)
    if os.path.exists(config_file):
        # pg_rewind's crash recovery of a target that was not shut down cleanly reads this
        # file (PostgreSQL 15+), the one the server ran with. With the data directory's
        # alone it runs with wal_level = replica, and a target holding a logical slot
        # refuses to start ("logical replication slot ... exists, but wal_level <
        # logical"): the member was cloned anew instead.
        command.append(f"--config-file={config_file}")
    return command


async def _rewind_once(
    settings: PostgresSettings, source: StandbyConfig, *, run_dir: str, timeout_s: float
) -> None:
    """One attempt: the pre-check, then pg_rewind. SourceUnreachable when either could not
    connect to the source (the target is untouched then), PostgresError on any other failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    await _checkpoint_if_control_is_stale(
        settings, source, timeout_s=min(timeout_s, _CHECK_TIMEOUT_S)
    )
    source_conninfo = replication.primary_conninfo(
        host=source.primary_host,
        port=source.primary_port,
        user=settings.superuser.username,
        passfile=passfile_for(settings, run_dir),
        tls=replication.client_tls(settings, run_dir),
        application_name=f"pgwarden-rewind-{source.application_name}",
        dbname="postgres",
    )
    command = _rewind_command(settings, source_conninfo, run_dir)
    result = await run_tool_result(
        settings,
        command,
        timeout_s=max(deadline - loop.time(), 1.0),
        what="pg_rewind",
    )
    if result.returncode != 0:
        message = f"pg_rewind failed (exit {result.returncode}): {_tail(result.stderr)}"
        if could_not_connect(result.stderr):
            raise SourceUnreachable(message)
        raise PostgresError(message)


async def rewind(
    settings: PostgresSettings,
    source: StandbyConfig,
    *,
    run_dir: str,
    timeout_s: float,
    unreachable_s: float | None = None,
) -> None:
    """pg_rewind the STOPPED data directory onto `source`, then configure it as its standby.

    Connects to the source as the superuser (pg_rewind needs it), and first CHECKPOINTs a
    source promoted so recently that its control file still names the old timeline.
    PostgreSQL 15's pg_rewind finishes crash recovery of a target that was not shut down
    cleanly itself (it runs the target in single-user mode first), so a crashed former
    primary needs no extra step. It copies the source's postgresql.conf and
    postgresql.auto.conf: the standby settings are rewritten afterwards (the agent's other
    settings are on the postmaster's command line).

    A source that cannot be reached (right after a partition heals: no route to host,
    refused while it restarts) is tried again, with pauses, until `timeout_s` is spent, or
    for at most `unreachable_s` when given; then SourceUnreachable is raised: the data
    directory is intact, retry later. Raises a plain
    PostgresError when pg_rewind really fails (then re-clone: clear_data_dir() + clone()).
    """
    if not is_initialized(settings):
        raise PostgresError(f"rewind: data directory {settings.data_dir} is not initialized")
    write_client_files(settings, run_dir)
    # pg_rewind rewrites the data directory in place and updates pg_control last: killed or
    # failed midway, it leaves a mix of both systems that PostgreSQL may start from as if
    # whole. The marker makes that directory count as none (the member clones it again)
    # until the rewind and the standby configuration completed. A source never reached
    # leaves the data directory untouched (pg_rewind connects before anything else).
    marker = copy_marker(run_dir)
    ensure_dir(replication.conf_dir(run_dir), run_as(settings))
    write_file(marker, "", run_as(settings))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    retry_until = min(deadline, loop.time() + unreachable_s) if unreachable_s else deadline
    pause_s = _RETRY_FIRST_PAUSE_S
    attempts = 0
    while True:
        attempts += 1
        try:
            await _rewind_once(
                settings, source, run_dir=run_dir, timeout_s=max(deadline - loop.time(), 0.1)
            )
            break
        except SourceUnreachable as exc:
            # Another attempt only if it would still have time to connect after the pause.
            if retry_until - loop.time() < pause_s + _RETRY_FIRST_PAUSE_S:
                os.unlink(marker)
                raise SourceUnreachable(
                    f"rewind: source {source.primary_host}:{source.primary_port} unreachable"
                    f" for {loop.time() - deadline + timeout_s:.1f} s ({attempts} attempts);"
                    f" last: {exc}"
                ) from exc
        await asyncio.sleep(pause_s)
        pause_s = min(pause_s * 2, _RETRY_MAX_PAUSE_S)
    configure_standby(settings, source, run_dir=run_dir)
    os.unlink(marker)


def parse_timeline_history(text: str) -> tuple[int, Lsn] | None:
    """The last entry of a timeline history file: (the timeline that ended, where it ended).

    Each line is `<parent timeline>\\t<switch point LSN>\\t<reason>`; comments start with #."""
    last: tuple[int, Lsn] | None = None
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or line.lstrip().startswith("#"):
            continue
        try:
            last = (int(fields[0]), parse_lsn(fields[1].strip()))
        except ValueError:
            continue
    return last


async def last_timeline_switch(postmaster: Postmaster) -> tuple[int, Lsn] | None:
    """On a primary: the exact point where the previous timeline ended, from the current
    timeline's history file (a probe taken before the promotion can be behind it)."""
    rows = await postmaster.fetch(
        "SELECT pg_read_file('pg_wal/' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"
        " || '.history')",
        timeout_s=_SQL_TIMEOUT_S,
    )
    text = rows[0][0] if rows else None
    return parse_timeline_history(text) if isinstance(text, str) else None
