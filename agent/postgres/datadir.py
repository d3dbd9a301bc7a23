"""The data directory's role files and the client files PostgreSQL reads as the OS user.

The marker of a bootstrap that has not completed; while the postmaster is stopped:
standby.signal and the standby's primary_conninfo / primary_slot_name lines in
postgresql.auto.conf; before every start and reload: the password file and the TLS copies in
`<run_dir>/postgres/` (see replication.py for the file layout).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass

from agent.config import PostgresSettings
from agent.postgres import failover_slots, replication
from agent.postgres.osfiles import ensure_dir, run_as, write_file
from agent.postgres.tls import install_server_files
from agent.proctree import pid_alive


@dataclass(frozen=True, slots=True, kw_only=True)
class StandbyConfig:
    """Where a replica streams from. `application_name` is the replica's member name."""

    primary_host: str
    primary_port: int
    slot_name: str | None
    application_name: str


def is_initialized(settings: PostgresSettings) -> bool:
    return os.path.isfile(os.path.join(settings.data_dir, "PG_VERSION"))


def has_backup_label(settings: PostgresSettings) -> bool:
    """A base backup whose recovery has not started yet (`LocalState.backup_label`)."""
    return os.path.isfile(os.path.join(settings.data_dir, "backup_label"))


# In the data directory of a new cluster from initdb (or the restore) until its bootstrap
# completed (`unmark_bootstrap`): a member whose PostgreSQL died with it (the whole pod)
# finds it at its next start and discards that cluster (agent/decide/__init__.py).
_BOOTSTRAP_MARKER = "pgwarden-bootstrap-incomplete"


def mark_bootstrap(settings: PostgresSettings) -> None:
    write_file(os.path.join(settings.data_dir, _BOOTSTRAP_MARKER), "", run_as(settings))


def unmark_bootstrap(settings: PostgresSettings) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(settings.data_dir, _BOOTSTRAP_MARKER))


def bootstrap_incomplete(settings: PostgresSettings) -> bool:
    return os.path.exists(os.path.join(settings.data_dir, _BOOTSTRAP_MARKER))


def copy_marker(run_dir: str) -> str:
    """The marker of a copy into the data directory that has not completed: pg_basebackup, a
    restore, or pg_rewind (which rewrites files in place: interrupted, it leaves a mix of both
    systems under a pg_control that PostgreSQL may start from as if whole). Outside the data
    directory (pg_basebackup needs it empty); written before the tool runs, removed once the
    data directory is complete and configured."""
    return os.path.join(replication.conf_dir(run_dir), "clone-in-progress")


# Filesystems whose contents a reboot empties.
_VOLATILE_FS = frozenset({"tmpfs", "ramfs"})


def _fs_type(path: str, mountinfo: str) -> str | None:
    """The type of the filesystem mounted where `path` lies, from /proc/self/mountinfo's text
    (the deepest mount point above it; of several at one point, the last mounted)."""
    best: tuple[int, str] | None = None
    target = os.path.realpath(path)
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields[6:-1]:  # the separator, then the type
            continue
        point = fields[4].replace("\\040", " ")
        fstype = fields[fields.index("-", 6) + 1]
        inside = point in ("/", target) or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), fstype)
    return best[1] if best is not None else None


def volatile_run_dir(run_dir: str, data_dir: str, mountinfo: str | None = None) -> str | None:
    """Why `run_dir` would not outlast a reboot that the data directory outlasts (it holds
    `copy_marker`: lost, a copy or pg_rewind the reboot interrupted leaves a torn data
    directory that is taken as whole), or None. `mountinfo`: /proc/self/mountinfo's text."""
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8") as handle:
                mountinfo = handle.read()
        except OSError:
            return None
    run_fs, data_fs = _fs_type(run_dir, mountinfo), _fs_type(data_dir, mountinfo)
    if run_fs in _VOLATILE_FS and data_fs not in _VOLATILE_FS:
        return f"run_dir {run_dir} is on {run_fs}, the data directory on {data_fs}"
    return None


def copy_incomplete(run_dir: str) -> bool:
    """A copy into the data directory was interrupted (its agent, or its pod, died during it,
    or the tool failed midway): what the data directory holds is not usable."""
    return os.path.exists(copy_marker(run_dir))


# The tools that copy into a data directory; one left running by an agent that died (they run
# in a session of their own) would go on writing into what the next copy makes.
_COPY_TOOLS = frozenset({"pg_basebackup", "pg_rewind", "pgbackrest"})
_TOOL_GONE_WAIT_S = 2.0


def kill_copy_tools(settings: PostgresSettings) -> list[int]:
    """SIGKILL every copy tool (pg_basebackup with its WAL streamer, pg_rewind, pgbackrest)
    whose command line names this data directory (`-D <dir>`, `--target-pgdata=<dir>`,
    `--pg1-path=<dir>`, ...), and wait up to 2 s for them to go; their pids."""
    data_dir = os.path.realpath(settings.data_dir)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                args = [a.decode(errors="replace") for a in handle.read().split(b"\0") if a]
        except OSError:
            continue
        if not args or os.path.basename(args[0]) not in _COPY_TOOLS:
            continue
        paths = {a.split("=", 1)[1] if "=" in a else a for a in args[1:]}
        if any(os.path.realpath(p) == data_dir for p in paths if p.startswith("/")):
            with contextlib.suppress(OSError):
                os.kill(int(entry), signal.SIGKILL)
                found.append(int(entry))
    give_up = time.monotonic() + _TOOL_GONE_WAIT_S
    while found and time.monotonic() < give_up and any(pid_alive(p) for p in found):
        time.sleep(0.01)
    return found


def is_standby_dir(settings: PostgresSettings) -> bool:
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
