"""Who PostgreSQL runs as, and the files the agent writes for that OS user (owned by it,
private): directories, configuration, the password file, TLS copies. Split from process.py
so that tls.py can write its copies without importing the postmaster's owner."""

from __future__ import annotations

import contextlib
import os
import pwd
from dataclasses import dataclass

from agent.config import PostgresSettings


class PostgresError(Exception):
    """A PostgreSQL command or tool failed; the message carries the tool's stderr tail."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunAs:
    """The unprivileged OS user PostgreSQL runs as; `switch` is False when we already are it."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    switch: bool

    @property
    def user(self) -> int | None:
        """For subprocess `user=`: None when no switch is needed."""
        return self.uid if self.switch else None

    @property
    def group(self) -> int | None:
        return self.gid if self.switch else None

    @property
    def extra_groups(self) -> list[int] | None:
        # Always set with a switch: root's supplementary groups must not leak to PostgreSQL.
        return list(self.groups) if self.switch else None


def run_as(settings: PostgresSettings) -> RunAs:
    """Who runs PostgreSQL. Raises PostgresError when that is root or an impossible switch."""
    euid = os.geteuid()
    if settings.os_user is None:
        if euid == 0:
            raise PostgresError("PostgreSQL refuses to run as root: set postgresql.os_user")
        try:
            entry = pwd.getpwuid(euid)
            name, home = entry.pw_name, entry.pw_dir
        except KeyError:  # an arbitrary uid without a passwd entry (some container platforms)
            name, home = str(euid), "/"
        return RunAs(name=name, uid=euid, gid=os.getegid(), groups=(), home=home, switch=False)
    try:
        entry = pwd.getpwnam(settings.os_user)
    except KeyError:
        raise PostgresError(f"postgresql.os_user {settings.os_user!r} does not exist") from None
    if entry.pw_uid == 0:
        raise PostgresError("postgresql.os_user must not be root")
    if euid not in (0, entry.pw_uid):
        raise PostgresError(
            f"the agent runs as uid {euid}: it cannot run PostgreSQL as {settings.os_user!r}"
        )
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return RunAs(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=groups,
        home=entry.pw_dir,
        switch=euid == 0,
    )


def agent_os_users(who: RunAs) -> list[str]:
    """OS users that may connect as the superuser over the socket: the agent's and PostgreSQL's."""
    names = [who.name]
    with contextlib.suppress(KeyError):
        names.insert(0, pwd.getpwuid(os.geteuid()).pw_name)
    return names


def ensure_dir(path: str, who: RunAs, *, mode: int = 0o700) -> None:
    """Create `path` (and missing parents) owned by the OS user. An existing directory is left
    as it is, except that the directory itself gets the owner and mode (it is ours)."""
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    for directory in reversed(missing):
        os.mkdir(directory, mode)
        if who.switch:
            os.chown(directory, who.uid, who.gid)
    if who.switch:
        os.chown(path, who.uid, who.gid)
    os.chmod(path, mode)
    _ensure_traversable(os.path.dirname(os.path.abspath(path)), who)


def _ensure_traversable(path: str, who: RunAs) -> None:
    """Let the OS user pass through `path` (execute only, not list) when it cannot."""
    if not who.switch:
        return
    st = os.stat(path)
    if st.st_uid == who.uid:
        return
    if st.st_gid in who.groups and st.st_mode & 0o010:
        return
    if not st.st_mode & 0o001:
        os.chmod(path, st.st_mode | 0o001)


def write_file(path: str, text: str, who: RunAs, *, mode: int = 0o600) -> None:
    """Atomically replace `path` with `text`, owned by the OS user."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if who.switch:
            os.chown(tmp, who.uid, who.gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
