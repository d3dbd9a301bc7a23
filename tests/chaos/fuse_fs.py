"""A FUSE passthrough filesystem whose writes and fsyncs can be made to hang on command.

Run as its own process (root), one per member, for the storage-hang scenario:

    python -m tests.chaos.fuse_fs SOURCE MOUNTPOINT CONTROL

mirrors the directory SOURCE at MOUNTPOINT (`allow_other`, `default_permissions`: the kernel
checks permissions against the source's owners and modes, so PostgreSQL running as `postgres`
sees its own files). Files and directories created through the mount are given the caller's
uid and gid, as a kernel filesystem would.

While `CONTROL.full` exists, the store is full: write, create, mkdir, link, symlink and
fallocate fail with ENOSPC (the disk-full scenarios).

While `CONTROL.slow` holds a number of milliseconds, every fsync and fdatasync of a file under
a `pg_wal` directory of the store takes that much longer (it sleeps before syncing: a slow
disk, not a hung one; the slow-fsync scenarios). Other calls are not slowed.

While the file CONTROL exists, every call that changes the store (write, fsync, fdatasync,
create, mkdir, unlink, rename, truncate, fallocate, chmod, chown, utimens, link, symlink)
waits until it is removed, as on a disk whose controller stopped completing writes; reads,
lookups and directory listings still answer. The calling process sleeps in the kernel, in
FUSE's request wait, until the request is answered (a fatal signal still ends it: FUSE waits
killably). A watcher thread looks at CONTROL every 10 ms.

`FuseStore` starts and stops such a process from the test harness.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

POLL_S = 0.01
MOUNT_TIMEOUT_S = 10.0

FULL_SUFFIX = ".full"  # `<control>.full` exists: the store is full (ENOSPC)
SLOW_SUFFIX = ".slow"  # `<control>.slow` holds milliseconds added to each fsync of pg_wal

_F = TypeVar("_F", bound=Callable[..., Any])


class Gate:
    """Open unless the control file exists; `wait` blocks the caller while it is closed.
    While `<control>.full` exists, `full` is true: calls that need space fail with ENOSPC."""

    def __init__(self, control: str) -> None:
        self.control = control
        self._open = threading.Event()
        self._open.set()
        self.blocked_calls = 0
        self.full = False
        self.slow_fsync_s = 0.0

    def watch_forever(self) -> None:
        while True:
            if os.path.exists(self.control):
                self._open.clear()
            else:
                self._open.set()
            self.full = os.path.exists(self.control + FULL_SUFFIX)
            self.slow_fsync_s = _slow_fsync_s(self.control + SLOW_SUFFIX)
            time.sleep(POLL_S)

    def wait(self) -> None:
        if not self._open.is_set():
            self.blocked_calls += 1
            self._open.wait()


def _slow_fsync_s(path: str) -> float:
    """Seconds added to each fsync of pg_wal: the number of milliseconds in `path` (0 when it
    does not exist or holds no number)."""
    try:
        with open(path) as f:
            return max(float(f.read().strip() or 0), 0.0) / 1000
    except (OSError, ValueError):
        return 0.0


def _gated(method: _F) -> _F:
    def wrapper(self: Passthrough, *args: Any) -> Any:
        self.gate.wait()
        return method(self, *args)

    wrapper.__name__ = method.__name__
    return wrapper  # type: ignore[return-value]


def _needs_space(method: _F) -> _F:
    """Gated, and failing with ENOSPC while the store is full (as a full disk fails writes,
    file and directory creation, and allocation; unlink, rename and truncation still work)."""

    def wrapper(self: Passthrough, *args: Any) -> Any:
        self.gate.wait()
        if self.gate.full:  # mfusepy answers an OSError with its errno
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return method(self, *args)

    wrapper.__name__ = method.__name__
    return wrapper  # type: ignore[return-value]


def _make_passthrough() -> type:
    """The Operations class (built lazily: importing mfusepy loads libfuse)."""
    # Imported here: loading mfusepy loads libfuse, which the harness side never needs.
    import mfusepy as fuse  # type: ignore[import-untyped]  # noqa: PLC0415

    class _Passthrough(fuse.Operations):  # type: ignore[misc]
        use_ns = True

        def __init__(self, root: str, gate: Gate) -> None:
            self.root = os.path.realpath(root)
            self.gate = gate

        def _full(self, path: str) -> str:
            return os.path.join(self.root, path.lstrip("/"))

        def _own(self, full: str, *, symlink: bool = False) -> None:
            uid, gid, _pid = fuse.fuse_get_context()
            if symlink:
                os.lchown(full, uid, gid)
            else:
                os.chown(full, uid, gid)

        # ---- reads: never gated
        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            st = os.fstat(fh) if fh is not None else os.lstat(self._full(path))
            keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino", "st_dev")
            out: dict[str, Any] = {k: getattr(st, k) for k in keys}
            out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            out["st_blocks"] = st.st_blocks
            out["st_blksize"] = st.st_blksize
            return out

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", "..", *os.listdir(self._full(path))]

        def readlink(self, path: str) -> str:
            return os.readlink(self._full(path))

        def open(self, path: str, flags: int) -> int:
            if flags & os.O_TRUNC:
                self.gate.wait()
            return os.open(self._full(path), flags)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return os.pread(fh, size, offset)

        def statfs(self, path: str) -> dict[str, int]:
            st = os.statvfs(self._full(path))
            keys = (
                "f_bavail",
                "f_bfree",
                "f_blocks",
                "f_bsize",
                "f_favail",
                "f_ffree",
                "f_files",
                "f_flag",
                "f_frsize",
                "f_namemax",
            )
            return {k: getattr(st, k) for k in keys}

        def flush(self, path: str, fh: int) -> int:
            return 0

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

        # ---- changes: gated
        @_needs_space
        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            return os.pwrite(fh, data, offset)

        @_gated
        def fsync(self, path: str, datasync: int, fh: int) -> int:
            slow = self.gate.slow_fsync_s
            if slow and "/pg_wal/" in path:
                time.sleep(slow)  # this request's thread only: others go on
            if datasync:
                os.fdatasync(fh)
            else:
                os.fsync(fh)
            return 0

        @_gated
        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            return 0

        @_needs_space
        def create(self, path: str, mode: int, flags: int = os.O_RDWR) -> int:
            full = self._full(path)
            fd = os.open(full, flags | os.O_CREAT, mode)
            self._own(full)
            return fd

        @_needs_space
        def mkdir(self, path: str, mode: int) -> int:
            full = self._full(path)
            os.mkdir(full, mode)
            self._own(full)
            return 0

        @_needs_space
        def symlink(self, target: str, source: str) -> int:
            full = self._full(target)
            os.symlink(source, full)
            self._own(full, symlink=True)
            return 0

        @_needs_space
        def link(self, target: str, source: str) -> int:
            os.link(self._full(source), self._full(target))
            return 0

        @_gated
        def unlink(self, path: str) -> int:
            os.unlink(self._full(path))
            return 0

        @_gated
        def rmdir(self, path: str) -> int:
            os.rmdir(self._full(path))
            return 0

        @_gated
        def rename(self, old: str, new: str) -> int:
            os.rename(self._full(old), self._full(new))
            return 0

        @_gated
        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            if fh is not None:
                os.ftruncate(fh, length)
            else:
                os.truncate(self._full(path), length)
            return 0

        @_needs_space
        def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
            if mode:
                raise fuse.FuseOSError(errno.EOPNOTSUPP)
            os.posix_fallocate(fh, offset, size)
            return 0

        @_gated
        def chmod(self, path: str, mode: int) -> int:
            os.chmod(self._full(path), mode)
            return 0

        @_gated
        def chown(self, path: str, uid: int, gid: int) -> int:
            os.lchown(self._full(path), uid, gid)
            return 0

        @_gated
        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            if times is None:
                os.utime(self._full(path), follow_symlinks=False)
            else:
                os.utime(self._full(path), ns=times, follow_symlinks=False)
            return 0

    return _Passthrough


Passthrough = Any  # the class made by _make_passthrough (typed loosely: mfusepy is untyped)


def serve(source: str, mountpoint: str, control: str) -> None:
    """Mount and serve until unmounted or signalled (SIGTERM/SIGINT unmount cleanly)."""
    import mfusepy as fuse  # noqa: PLC0415

    gate = Gate(control)
    threading.Thread(target=gate.watch_forever, name="gate", daemon=True).start()
    operations = _make_passthrough()(source, gate)
    fuse.FUSE(
        operations,
        mountpoint,
        foreground=True,
        allow_other=True,
        default_permissions=True,
        fsname="pgw-chaos",
        max_threads=256,
    )


@dataclass(slots=True, kw_only=True)
class FuseStore:
    """One member's blockable store: SOURCE mirrored at MOUNTPOINT by a `serve` process
    started in the harness's own mount namespace (before the member's agent, so the agent's
    `ip netns exec` mount namespace and PostgreSQL inherit the mount)."""

    source: Path
    mountpoint: Path
    control: Path
    log: Path
    popen: subprocess.Popen[bytes] | None = field(default=None)

    def start(self, *, owner: tuple[int, int]) -> None:
        for path in (self.source, self.mountpoint):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, *owner)
            os.chmod(path, 0o700)
        self.unblock()
        self.unfill()
        self.slow_fsync(0)
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.chaos.fuse_fs",
                    str(self.source),
                    str(self.mountpoint),
                    str(self.control),
                ],
                cwd=Path(__file__).resolve().parents[2],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not self.mounted():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the FUSE store at {self.mountpoint} did not mount")
            time.sleep(0.02)

    def mounted(self) -> bool:
        target = str(self.mountpoint)
        with open("/proc/self/mounts") as mounts:
            return any(line.split()[1] == target for line in mounts)

    def block(self) -> None:
        """Every later write and fsync hangs until `unblock` (within POLL_S)."""
        self.control.touch()
        time.sleep(3 * POLL_S)

    def unblock(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.control.unlink()

    @property
    def full_control(self) -> Path:
        return self.control.parent / (self.control.name + FULL_SUFFIX)

    def fill(self) -> None:
        """Every later write, create, mkdir and allocation fails with ENOSPC until `unfill`."""
        self.full_control.touch()
        time.sleep(3 * POLL_S)

    def unfill(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.full_control.unlink()

    @property
    def slow_control(self) -> Path:
        return self.control.parent / (self.control.name + SLOW_SUFFIX)

    def slow_fsync(self, added_ms: float) -> None:
        """Every later fsync of a file under pg_wal takes `added_ms` longer (0: as before)."""
        if added_ms:
            self.slow_control.write_text(f"{added_ms:g}\n")
        else:
            with contextlib.suppress(FileNotFoundError):
                self.slow_control.unlink()
        time.sleep(3 * POLL_S)

    def stop(self) -> None:
        """Unblock, unmount (lazily: processes still inside see it go) and end the server."""
        self.unblock()
        self.unfill()
        self.slow_fsync(0)
        subprocess.run(
            ["fusermount3", "-u", "-z", str(self.mountpoint)],
            capture_output=True,
            timeout=10,
            check=False,
        )
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        if self.mounted():
            subprocess.run(
                ["umount", "-l", str(self.mountpoint)], capture_output=True, timeout=10, check=False
            )


if __name__ == "__main__":
    serve(*sys.argv[1:4])
