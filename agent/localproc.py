"""The processes of a local cluster (the demo, the tests, the benchmarks): one member's ports
and paths (`LocalMember`), free ports (from `agent.localports`), and the parent-death signal
that stops the demo's processes when the demo is killed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.localports import free_port

ETCD_BIN = "/usr/bin/etcd"
PG_BIN = "/usr/lib/postgresql/15/bin"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

__all__ = ["ETCD_BIN", "PG_BIN", "LocalMember", "free_port", "parent_death_signal", "preexec_for"]


def parent_death_signal(sig: signal.Signals) -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel send `sig` to the child when this process dies,
    whatever kills it (Linux `prctl(PR_SET_PDEATHSIG)`); None where there is no prctl.

    Why a parent-death signal and which one. The demo's direct children are etcd (or the test
    API server) and the agents. The agents start PostgreSQL and their fencers in sessions of
    their own, on purpose: a fencer must outlive a dead *agent* while it is armed (it stops
    PostgreSQL at the lease deadline, then exits), and exits by itself once its agent is gone
    and it is disarmed. So the agents get SIGTERM, not SIGKILL: their usual bounded shutdown
    stops PostgreSQL and the fencer, replicas included (with SIGKILL a replica's PostgreSQL,
    whose fencer is never armed, would run on with nobody to stop it). etcd gets SIGTERM at
    the same moment; an agent that cannot reach it any more still stops PostgreSQL within its
    shutdown bound (the hand-over simply fails). Only the demo sets this: the kernel sends the
    signal when the *thread* that started the child exits, and the test harnesses that share
    `LocalCluster` may start processes from short-lived threads.

    Runs in the child between fork and exec, where another thread of the demo (the resolver
    pool) may hold a lock: so it only makes a foreign call prepared here and two syscalls,
    no import, no logging, no allocation outside the interpreter's own."""
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the demo died before prctl: nobody will signal us
            os.kill(os.getpid(), sig)

    return preexec


def preexec_for(die_with_parent: bool) -> Callable[[], None] | None:
    """The `preexec_fn` of a process a local cluster starts: SIGTERM when the demo dies
    (`die_with_parent`), else nothing."""
    return parent_death_signal(signal.SIGTERM) if die_with_parent else None


@dataclass(slots=True)
class LocalMember:
    name: str
    index: int
    pg_port: int
    api_port: int
    base: Path
    process: subprocess.Popen[bytes] | None = None
    scheme: str = "http"  # https when the cluster's agents serve api.tls

    @property
    def api_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.api_port}"

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def run_dir(self) -> Path:
        return self.base / "run"

    @property
    def config_path(self) -> Path:
        return self.base / "pgwarden.yaml"

    @property
    def log_path(self) -> Path:
        return self.base / "agent.log"

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid
