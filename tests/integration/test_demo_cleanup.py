"""`pgwarden demo` leaves nothing running, however it ends.

Each test starts the real demo (etcd, 2 agents, their fencers and PostgreSQL servers) in a
temp dir, ends it one way, and then scans /proc for any process of that demo: one whose
command line names the demo's directory (etcd, the agents, the fencers, the postmasters) or
whose working directory is inside it (PostgreSQL's backends and auxiliary processes, which
run in sessions of their own and name no path). Each case takes 8-15 s here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from agent.localproc import ETCD_BIN, PG_BIN
from agent.proctree import kill_postmaster_tree, pid_alive

REPO = Path(__file__).resolve().parents[2]
SIZE = 2
START_TIMEOUT_S = 60.0
# `q` takes about 11 s for 3 members; the parent-death path lets every agent run its own
# bounded shutdown at once, without etcd. Generous, since the machine may be loaded.
GONE_TIMEOUT_S = 60.0

pytestmark = pytest.mark.skipif(
    not (Path(ETCD_BIN).exists() and Path(PG_BIN, "postgres").exists()),
    reason="the demo needs etcd and PostgreSQL 15",
)


def demo_processes(base: Path) -> dict[int, str]:
    """Live processes of the demo in `base`: pid -> command line."""
    found: dict[int, str] = {}
    marker = str(base)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        if (marker in cmdline or cwd == marker or cwd.startswith(marker + "/")) and pid_alive(pid):
            found[pid] = cmdline.strip()
    return found


@dataclass(frozen=True, slots=True, kw_only=True)
class Demo:
    base: Path
    process: subprocess.Popen[bytes]
    log: Path

    def processes(self) -> dict[int, str]:
        return demo_processes(self.base)

    def wait_until_running(self) -> None:
        """Every member's postmaster and fencer are up."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            running = self.processes().values()
            fencers = [c for c in running if "agent.fencer" in c]
            postmasters = [c for c in running if c.startswith(f"{PG_BIN}/postgres -D")]
            if len(fencers) == SIZE and len(postmasters) == SIZE:
                return
            time.sleep(0.2)
        logs = "".join(
            f"\n--- {log}\n{log.read_text(errors='replace')[-1500:]}"
            for log in sorted(self.base.glob("pg-*/agent.log"))
        )
        raise AssertionError(f"the demo did not start: {self.processes()}{logs}")

    def wait_until_all_gone(self) -> float:
        """Seconds until no process of the demo is left (the demo itself included)."""
        started = time.monotonic()
        deadline = started + GONE_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.processes():
                took = time.monotonic() - started
                self.process.wait(timeout=GONE_TIMEOUT_S)  # gone, maybe not reaped yet
                return took
            time.sleep(0.1)
        left = "\n".join(f"{pid} {cmd}" for pid, cmd in self.processes().items())
        raise AssertionError(f"still running after {GONE_TIMEOUT_S} s:\n{left}")


def _kill_leftovers(base: Path) -> None:
    """After a failed test: what the demo left is killed here, not left to the next test."""
    for pid, cmdline in demo_processes(base).items():
        if cmdline.startswith(f"{PG_BIN}/postgres -D"):
            kill_postmaster_tree(pid)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _start_demo(base: Path, stdout: int | IO[bytes]) -> subprocess.Popen[bytes]:
    with open(f"{base}.stderr", "ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "demo", "--dir", str(base), "--size", str(SIZE)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # as a terminal's job: signals reach it alone
        )


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: PostgreSQL runs as the postgres user, who must be able to
    # reach the directory (LocalCluster makes it 0755; mkdtemp's parent /tmp is world-readable).
    base = Path(tempfile.mkdtemp(prefix="pgwarden-demo-test-"))
    try:
        yield base
    finally:
        _kill_leftovers(base)
        shutil.rmtree(base, ignore_errors=True)
        Path(f"{base}.stderr").unlink(missing_ok=True)


@pytest.fixture
def demo(demo_dir: Path) -> Iterator[Demo]:
    log = demo_dir.parent / f"{demo_dir.name}.stdout"
    with open(log, "wb") as out:
        process = _start_demo(demo_dir, out)
    try:
        running = Demo(base=demo_dir, process=process, log=log)
        running.wait_until_running()
        yield running
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        log.unlink(missing_ok=True)


def test_sigterm_while_the_demo_starts_stops_every_process_it_started(demo_dir: Path) -> None:
    # As soon as etcd runs: the demo is still waiting for it (or starting the agents), before
    # its live view, which handles SIGTERM like SIGHUP (tested below).
    process = _start_demo(demo_dir, subprocess.DEVNULL)
    demo = Demo(base=demo_dir, process=process, log=Path(f"{demo_dir}.stderr"))
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not any("/usr/bin/etcd" in c for c in demo.processes().values()):
            assert time.monotonic() < deadline and process.poll() is None, "etcd never ran"
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        took = demo.wait_until_all_gone()
        assert process.returncode == 0
        print(f"all gone {took:.1f} s after SIGTERM during start-up")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_sighup_from_a_closed_terminal_stops_every_process_the_demo_started(
    demo: Demo,
) -> None:
    demo.process.send_signal(signal.SIGHUP)
    took = demo.wait_until_all_gone()
    assert demo.process.returncode == 0
    print(f"all gone {took:.1f} s after SIGHUP")


def test_sigkill_of_the_demo_still_takes_every_process_it_started_with_it(demo: Demo) -> None:
    demo.process.kill()
    took = demo.wait_until_all_gone()
    print(f"all gone {took:.1f} s after SIGKILL")


def test_a_closed_stdout_pipe_stops_every_process_the_demo_started(demo_dir: Path) -> None:
    # `make demo | tee log`, then Ctrl-C: tee is gone, the demo's next redraw hits EPIPE.
    process = _start_demo(demo_dir, subprocess.PIPE)
    demo = Demo(base=demo_dir, process=process, log=Path(f"{demo_dir}.stderr"))
    try:
        assert process.stdout is not None
        demo.wait_until_running()
        process.stdout.close()
        took = demo.wait_until_all_gone()
        assert process.returncode == 1
        print(f"all gone {took:.1f} s after stdout was closed")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
