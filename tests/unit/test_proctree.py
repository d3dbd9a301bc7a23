"""proctree.pid_alive against real processes: a zombie has exited, a running process has not."""

from __future__ import annotations

import os
import subprocess

from agent.proctree import pid_alive


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
