"""proctree against real processes: a zombie has exited, a running process has not; a
postmaster's child is found by the backend type in its process title."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from agent.proctree import children, has_child_of_type, pid_alive

# Real processes and /proc, waited for on the real clock: not a unit test.
pytestmark = pytest.mark.integration


def test_a_zombie_child_counts_as_exited_although_signal_zero_still_reaches_it() -> None:
    child = subprocess.Popen(["true"])
    try:
        # Wait for the exit without reaping it: the child stays a zombie.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        os.kill(child.pid, 0)  # what the fencer used to ask: no error for a zombie
        assert not pid_alive(child.pid)
    finally:
        child.wait()


def test_a_running_process_is_alive_and_a_reaped_one_is_not() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert pid_alive(child.pid)
        assert pid_alive(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid)


def _parent_of(*titles: str) -> subprocess.Popen[bytes]:
    """A bash whose children are `sleep`s titled like a postmaster's children."""
    script = " ".join(f"(exec -a '{title}' sleep 30) &" for title in titles) + " wait"
    return subprocess.Popen(["bash", "-c", script], start_new_session=True)


def _titled(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().startswith(b"postgres")
    except OSError:
        return False


def _wait_for_children(pid: int, count: int) -> None:
    """Until `count` children run under their postgres titles (each one's exec -a done)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sum(_titled(child) for child in children(pid)) >= count:
            return
        time.sleep(0.02)


def test_a_startup_process_is_found_under_its_postmaster_by_its_title() -> None:
    recovering = _parent_of(
        "postgres: pg-1: checkpointer ",
        "postgres: pg-1: startup recovering 000000010000000000000005",
    )
    stuck = _parent_of("postgres: pg-1: checkpointer ", "postgres: pg-1: background writer ")
    plain = _parent_of("postgres: startup waiting for 000000010000000000000003")
    try:
        for parent in (recovering, stuck, plain):
            _wait_for_children(parent.pid, 1 if parent is plain else 2)
        assert has_child_of_type(recovering.pid, "startup")
        assert has_child_of_type(plain.pid, "startup")  # no cluster_name in the title
        assert not has_child_of_type(stuck.pid, "startup")
        assert has_child_of_type(stuck.pid, "checkpointer")
    finally:
        for parent in (recovering, stuck, plain):
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
