"""Killing a PostgreSQL server for good: the postmaster and every one of its children; and
the identities of a process and a directory that a fencer in another container checks.

Stdlib only: the fencer process (agent/fencer.py) imports it too. Each child of a PostgreSQL
postmaster calls setsid() when it starts, so killing the postmaster's process group alone
leaves its backends running until they next check for the postmaster's death (a busy query
only when it ends, and it may then still commit).
"""

from __future__ import annotations

# `signal`'s C core (ints, no enum classes): the fencer imports this module and stays small.
import _signal  # type: ignore[import-not-found]  # no stub
import os


def process_state(pid: int) -> str | None:
    """The state letter of `pid` in /proc (R, S, D, T, Z, ...); None when it has no entry or
    /proc cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            # The state follows the parenthesised command name, which may hold spaces and ')'.
            return handle.read().rsplit(b")", 1)[1].split()[0].decode("ascii", "replace")
    except (OSError, IndexError):
        return None


def start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (/proc/PID/stat field 22): with the pid,
    the identity of a process, the same in every pid namespace of the host. None when it has
    no entry here (it exited, or it runs in a pid namespace this process cannot see)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def dir_id(path: str) -> str:
    """`dev:ino` of a directory (the same in every mount namespace of the host), or `-`:
    with start_ticks, what a fencer in another container checks that it shares with its
    agent."""
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_dev}:{st.st_ino}"


def pid_alive(pid: int) -> bool:
    """Process `pid` exists and has not exited. A zombie (exited, not yet reaped by its
    parent) counts as exited: a postmaster whose parent, the agent, is frozen or dead stays
    one, and `os.kill(pid, 0)` would call it alive.
    """
    state = process_state(pid)
    if state is not None:
        return state not in ("Z", "X")
    if not os.path.exists("/proc/self/stat"):
        return _signalable(pid)  # no /proc to read: cannot tell a zombie apart
    return False  # no entry: gone


def _signalable(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def children(pid: int) -> list[int]:
    """The pids of `pid`'s children (from /proc; [] when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return [int(word) for word in handle.read().split()]
    except (OSError, ValueError):
        return _children_by_scan(pid)


def _children_by_scan(pid: int) -> list[int]:
    """The slow way, for kernels without /proc/<pid>/task/<pid>/children: every process's
    parent pid from /proc/<n>/stat."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(pid).encode():
            found.append(int(entry))
    return found


def has_child_of_type(postmaster: int, backend_type: str) -> bool:
    """Whether a child of `postmaster` is a `backend_type` process ("startup", ...), read from
    its process title ("postgres: [cluster_name: ]startup recovering ..."). True when /proc
    cannot be read at all (nothing can be told: assume it is there)."""
    if not os.path.exists("/proc/self/stat"):
        return True
    for child in children(postmaster):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as handle:
                title = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        parts = [part.strip() for part in title.split(": ")[1:]]
        if any(part == backend_type or part.startswith(backend_type + " ") for part in parts):
            return True
    return False


def kill_postmaster_tree(pid: int) -> None:
    """SIGKILL the postmaster `pid`, each of its children, and their process groups.

    The postmaster is stopped first: it then neither forks nor reaps, so the children read
    from /proc are exactly its children, and none of their pids can be reused meanwhile.
    """
    try:
        os.kill(pid, _signal.SIGSTOP)
    except ProcessLookupError:
        return
    for target in (*children(pid), pid):
        try:
            # Each child leads its own group (setsid); an adopted postmaster started
            # otherwise may not lead one.
            if os.getpgid(target) == target:
                os.killpg(target, _signal.SIGKILL)
            else:
                os.kill(target, _signal.SIGKILL)
        except ProcessLookupError:
            pass


def raise_nice(pid: int, nice: int) -> int:
    """Raise the postmaster `pid` and each of its children to nice value `nice` (each thread:
    Linux keeps a nice value per thread); a process already at `nice` or above is left as it
    is (lowering one needs CAP_SYS_NICE, and would undo an operator's own renice). Children
    forked later inherit the postmaster's. Returns how many threads could not be set (gone,
    or not ours); never raises."""
    failed = 0
    for target in (pid, *children(pid)):
        try:
            tasks = [int(task) for task in os.listdir(f"/proc/{target}/task")]
        except (OSError, ValueError):
            tasks = [target]
        for task in tasks:
            try:
                if os.getpriority(os.PRIO_PROCESS, task) < nice:
                    os.setpriority(os.PRIO_PROCESS, task, nice)
            except OSError:
                failed += 1
    return failed
