"""Finding a live postmaster from its postmaster.pid, and waiting for a process to exit.

Nothing here starts or signals a process: process.py owns the postmaster.
"""

from __future__ import annotations

import asyncio
import os

from agent.proctree import pid_alive

_POLL_S = 0.01


def read_pidfile(data_dir: str) -> list[str] | None:
    """postmaster.pid's lines, or None when there is none (or it cannot be read)."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid"), encoding="utf-8") as handle:
            return handle.read().splitlines()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None


def pidfile_ready(lines: list[str] | None, pid: int) -> bool:
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
    lines = read_pidfile(data_dir)
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
