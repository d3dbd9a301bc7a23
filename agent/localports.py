"""Loopback ports for the servers a local cluster starts (the demo, the tests, the benchmarks).

A server stopped and started again on its port (a restarted PostgreSQL, etcd member or agent)
must find the port free. Two rules make sure nothing else took it meanwhile:

1. The ports lie outside the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
   Every bind to port 0 (each server a test starts on "any free port") and the local port of
   every outgoing connection are drawn from that range, so a port picked there by bind-and-close
   can be taken by any of them while its server is down.
2. A port is reserved for the life of the process that was handed it, across processes: a lock
   file per port under one shared directory, held with `flock` (the kernel drops the lock when
   the process exits, however it dies). A port free at the moment it was picked was otherwise
   handed to two processes (two pytest-xdist workers; the demo beside the tests): whichever
   started its server second failed, and an agent that retries its PostgreSQL start took the
   port the moment the other server restarted ("Address already in use", a fresh-clone CI run).
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import socket
import tempfile
from pathlib import Path

RESERVATIONS = Path(tempfile.gettempdir()) / "pgwarden-ports"
SPAN = 12000  # how many ports below the ephemeral range (above it if there is no room below)
_MIN_SPAN = 1000
_held: dict[int, int] = {}  # port -> the open lock file that reserves it for this process


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range, both ends included (Linux's default if unreadable)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def port_span() -> range:
    """The ports handed out: up to `SPAN` just below the ephemeral range, else just above it."""
    low, high = ephemeral_range()
    if low - 1024 >= _MIN_SPAN:
        return range(max(1024, low - SPAN), low)
    if 65535 - high >= _MIN_SPAN:
        return range(high + 1, min(65536, high + 1 + SPAN))
    raise RuntimeError(
        f"no room for test and demo ports outside the ephemeral port range {low}-{high} "
        "(net.ipv4.ip_local_port_range): leave at least 1000 ports below or above it"
    )


def free_port(host: str = "127.0.0.1", span: range | None = None) -> int:
    """A port nothing listens on, outside the ephemeral range, that no other live process was
    handed (nor this one before): it stays this process's until the process exits."""
    ports = port_span() if span is None else span
    start = random.randrange(len(ports))
    for step in range(len(ports)):
        port = ports[(start + step) % len(ports)]
        if port in _held:
            continue
        lock = _reserve(port)
        if lock is None:
            continue
        if not _bindable(host, port):
            os.close(lock)
            continue
        _held[port] = lock
        return port
    raise RuntimeError(
        f"every port in {ports.start}-{ports.stop - 1} is in use or reserved by a live process "
        f"(lock files in {RESERVATIONS})"
    )


def _reserve(port: int) -> int | None:
    """The lock file of `port`, locked for this process; None if another process holds it."""
    RESERVATIONS.mkdir(mode=0o1777, exist_ok=True)
    if RESERVATIONS.stat().st_uid == os.geteuid():
        os.chmod(RESERVATIONS, 0o1777)  # whoever runs next (root or not) may add lock files
    path = RESERVATIONS / str(port)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except PermissionError:  # another user's file in a sticky directory (protected_regular)
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def _bindable(host: str, port: int) -> bool:
    """Nothing holds `port` on `host` now (a listener, a connection, a TIME_WAIT left by one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
