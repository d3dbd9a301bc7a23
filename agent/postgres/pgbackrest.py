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
from enum import StrEnum

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


def render_conf(
    backrest: PgBackRestSettings, pg: PostgresSettings, *, stanza: str, run_dir: str
) -> str:
    """pgbackrest.conf: the repository and the user's options in [global], this member's
    PostgreSQL in [<stanza>]. Pure."""
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


async def backup(settings: Settings, kind: BackupType) -> None:
    """A backup of the local PostgreSQL (a primary) into the repository."""
    backrest = settings.pgbackrest
    timeout_s = backrest.backup_timeout_s if backrest is not None else 60.0
    await run(settings, [f"--type={kind.value}", "backup"], timeout_s=timeout_s,
              what="pgbackrest backup")  # fmt: skip


async def restore_standby(settings: Settings, *, timeout_s: float) -> None:
    """Restore the latest backup into the (empty) data directory as a standby: pgBackRest
    writes standby.signal and restore_command; the caller configures streaming."""
    await run(settings, ["--type=standby", "restore"], timeout_s=timeout_s,
              what="pgbackrest restore")  # fmt: skip
    os.chmod(settings.postgresql.data_dir, 0o700)


async def restore_for_bootstrap(settings: Settings, *, timeout_s: float) -> None:
    """Restore into the (empty) data directory for a new cluster: to the bootstrap target
    (time or LSN, inclusive) or to the end of the archive, promoting once it is reached
    (recovery.signal, the recovery target settings in postgresql.auto.conf)."""
    target = settings.bootstrap.target
    args = ["--target-action=promote"]
    if target is not None:
        args += [f"--type={target[0]}", f"--target={target[1]}"]
    else:
        args = ["--type=default"]
    await run(settings, [*args, "restore"], timeout_s=timeout_s, what="pgbackrest restore")
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
)
"""What a restore for a bootstrap leaves in postgresql.auto.conf and the promoted primary
must forget: as a standby later (after a failover) it would stop replaying at that target."""
