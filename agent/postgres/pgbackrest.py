"""pgBackRest: its configuration file, the archive settings PostgreSQL runs with, and its
commands (stanza-create, backup, restore as a standby, restore for a new cluster).

The agent owns `<run_dir>/pgbackrest/pgbackrest.conf` (rewritten before every command: it
follows this member's settings only), with the stanza's `pg1-*` options naming this member's
data directory, port and socket, and its logs and locks under `<run_dir>/pgbackrest/`. Every
command runs as PostgreSQL's OS user, like the server's own `archive_command`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from agent.archiving import BackupPg
from agent.backup_settings import PgBackRestSettings
from agent.postgres import replication
from agent.postgres.osfiles import PostgresError, ensure_dir, run_as, write_file
from agent.postgres.tools import run_tool
from agent.postgres_settings import PostgresSettings
from agent.settings import Settings


class BackupType(StrEnum):
    FULL = "full"
    INCR = "incr"
    DIFF = "diff"


def conf_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "pgbackrest")


def conf_path(run_dir: str) -> str:
    return os.path.join(conf_dir(run_dir), "pgbackrest.conf")


def stanza_of(settings: Settings) -> str:
    backrest = settings.pgbackrest
    return (backrest.stanza if backrest is not None else None) or settings.cluster


def standby_conf_path(run_dir: str) -> str:
    """The configuration of a backup from this standby (the primary as pg2); archive-push
    and archive-get keep reading pgbackrest.conf."""
    return os.path.join(conf_dir(run_dir), "backup-standby.conf")


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryPg:
    """The primary, for a backup from a standby: its BackupPg and port (its member record)."""

    pg: BackupPg
    port: int


def backup_pg(settings: Settings) -> BackupPg | None:
    """Where pgBackRest finds our PostgreSQL on this host (only with pgBackRest configured)."""
    if settings.pgbackrest is None:
        return None
    pg = settings.postgresql
    return BackupPg(
        path=pg.data_dir, socket_path=replication.socket_dir(pg), user=pg.superuser.username
    )


def render_conf(
    backrest: PgBackRestSettings,
    pg: PostgresSettings,
    *,
    stanza: str,
    run_dir: str,
    primary: PrimaryPg | None = None,
) -> str:
    """pgbackrest.conf: the repository and the user's options in [global], this member's
    PostgreSQL in [<stanza>]; with `primary`, a backup from this standby: `backup-standby`
    and the primary as pg2 (on this host: pgBackRest reaches it by its path and socket).
    Pure."""
    base = conf_dir(run_dir)
    lines = [
        "# Written by pgwarden before every pgBackRest command; edits are lost.",
        "[global]",
        f"repo1-path={backrest.repo_path}",
        f"repo1-type={backrest.repo_type}",
        f"lock-path={os.path.join(base, 'lock')}",
        f"log-path={os.path.join(base, 'log')}",
        "log-level-console=warn",
        "log-level-stderr=off",
        "start-fast=y",
    ]
    lines += [f"{name}={value}" for name, value in backrest.options]
    lines += [
        "",
        f"[{stanza}]",
        f"pg1-path={pg.data_dir}",
        f"pg1-port={pg.port}",
        f"pg1-socket-path={replication.socket_dir(pg)}",
        f"pg1-user={pg.superuser.username}",
    ]
    if primary is not None:
        lines.insert(lines.index(""), "backup-standby=y")
        lines += [
            f"pg2-path={primary.pg.path}",
            f"pg2-port={primary.port}",
            f"pg2-socket-path={primary.pg.socket_path}",
            f"pg2-user={primary.pg.user}",
        ]
    return "\n".join(lines) + "\n"


def _base_command(settings: Settings, backrest: PgBackRestSettings) -> list[str]:
    return [backrest.command, f"--config={conf_path(settings.run_dir)}",
            f"--stanza={stanza_of(settings)}"]  # fmt: skip


def archive_settings(settings: Settings) -> list[tuple[str, str]]:
    """archive_mode, archive_command and restore_command for every member (none without
    pgBackRest). Every standby can then fetch WAL its upstream no longer keeps."""
    backrest = settings.pgbackrest
    if backrest is None:
        return []
    command = " ".join(_base_command(settings, backrest))
    return [
        ("archive_mode", backrest.archive_mode.value),
        ("archive_command", f"{command} archive-push %p"),
        ("restore_command", f'{command} archive-get %f "%p"'),
    ]


def write_conf(settings: Settings) -> PgBackRestSettings:
    """(Re)write pgbackrest.conf and its directories, owned by PostgreSQL's OS user."""
    backrest = settings.pgbackrest
    if backrest is None:
        raise PostgresError("pgbackrest is not configured")
    who = run_as(settings.postgresql)
    base = conf_dir(settings.run_dir)
    for path in (base, os.path.join(base, "lock"), os.path.join(base, "log")):
        ensure_dir(path, who)
    text = render_conf(
        backrest, settings.postgresql, stanza=stanza_of(settings), run_dir=settings.run_dir
    )
    write_file(conf_path(settings.run_dir), text, who)
    return backrest


async def run(settings: Settings, args: Sequence[str], *, timeout_s: float, what: str) -> str:
    """`pgbackrest --config=... --stanza=... <args>` as the OS user; its stdout. Raises
    PostgresError (with pgBackRest's message) on failure or after `timeout_s`."""
    backrest = write_conf(settings)
    return await run_tool(
        settings.postgresql,
        [*_base_command(settings, backrest), *args],
        timeout_s=timeout_s,
        what=what,
    )


async def stanza_create(settings: Settings, *, timeout_s: float = 60.0) -> None:
    """Create the stanza in the repository (idempotent for the same system); a repository
    that holds the stanza of another system fails."""
    await run(settings, ["stanza-create"], timeout_s=timeout_s, what="pgbackrest stanza-create")


async def backup(settings: Settings, kind: BackupType, primary: PrimaryPg | None = None) -> None:
    """A backup into the repository: of the local PostgreSQL when it is the primary (None);
    from it, a standby, with `primary` (most files are copied from here, the backup starts
    and stops on the primary)."""
    backrest = write_conf(settings)
    command = _base_command(settings, backrest)
    if primary is not None:
        path = standby_conf_path(settings.run_dir)
        text = render_conf(
            backrest,
            settings.postgresql,
            stanza=stanza_of(settings),
            run_dir=settings.run_dir,
            primary=primary,
        )
        write_file(path, text, run_as(settings.postgresql))
        command[1] = f"--config={path}"
    await run_tool(settings.postgresql, [*command, f"--type={kind.value}", "backup"],
                   timeout_s=backrest.backup_timeout_s, what="pgbackrest backup")  # fmt: skip


async def restore_standby(settings: Settings, *, timeout_s: float) -> None:
    """Restore the latest backup into the (empty) data directory as a standby: pgBackRest
    writes standby.signal and restore_command; the caller configures streaming."""
    await run(settings, ["--type=standby", "restore"], timeout_s=timeout_s,
              what="pgbackrest restore")  # fmt: skip
    os.chmod(settings.postgresql.data_dir, 0o700)


def source_conf_path(run_dir: str) -> str:
    """The configuration of a bootstrap's restore: the source's stanza (`bootstrap.stanza`)."""
    return os.path.join(conf_dir(run_dir), "bootstrap-source.conf")


async def restore_for_bootstrap(settings: Settings, *, timeout_s: float) -> None:
    """Restore into the (empty) data directory for a new cluster, from the source's stanza
    (`bootstrap.stanza`): to the bootstrap target (time or LSN, inclusive) or to the end of
    the archive, promoting once it is reached (recovery.signal, the recovery target settings
    and a restore_command reading the source's archive in postgresql.auto.conf)."""
    target = settings.bootstrap.target
    args = ["--target-action=promote"]
    if target is not None:
        args += [f"--type={target[0]}", f"--target={target[1]}"]
    else:
        args = ["--type=default"]
    backrest = write_conf(settings)
    source = settings.bootstrap.stanza or stanza_of(settings)
    path = source_conf_path(settings.run_dir)
    text = render_conf(backrest, settings.postgresql, stanza=source, run_dir=settings.run_dir)
    write_file(path, text, run_as(settings.postgresql))
    command = [backrest.command, f"--config={path}", f"--stanza={source}", *args, "restore"]
    await run_tool(settings.postgresql, command, timeout_s=timeout_s, what="pgbackrest restore")
    os.chmod(settings.postgresql.data_dir, 0o700)


RECOVERY_TARGET_SETTINGS = (
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_name",
    "recovery_target_inclusive",
    "recovery_target_action",
    "recovery_target_timeline",
    "restore_command",
)
"""What a restore for a bootstrap leaves in postgresql.auto.conf and the promoted primary
must forget: as a standby later (after a failover) it would stop replaying at that target,
and fetch WAL from the source's stanza instead of its own (the agent's configuration file
sets restore_command, which postgresql.auto.conf would override)."""
