"""The fencer sidecar of k8s/examples/fencer-sidecar, run by podman from the real image: a
container in the process namespace of the container that runs PostgreSQL (`--pid
container:...`, as `shareProcessNamespace` gives a pod), as the same user, without any
capability, the root filesystem and the data volume read-only. It stops a postmaster of the
other container at the deadline; run as another user it fails the agent's CHECK.

The "postgres" container runs a stand-in postmaster (a process named postgres in its own
session, named in postmaster.pid) under tini, and stays up after it is gone (in a pod the
pause process holds the namespace; here the first container's own PID 1 does).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.proctree import dir_id, start_ticks
from tests.support.containers import IMAGE, POSTGRES_UID, podman

pytestmark = [pytest.mark.containers, pytest.mark.timeout(300)]

DATA = "/var/lib/postgresql/data"
PGDATA = f"{DATA}/pgdata"
SOCKET_DIR = "/run/pgwarden-fencer"
HARDENED = ("--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only")
STANDIN = (
    f'setsid bash -c "echo \\$\\$ > {PGDATA}/postmaster.pid; exec -a postgres sleep 1000" & '
    "exec sleep 1000"
)


@dataclass
class Pod:
    name: str
    volume: Path

    @property
    def socket(self) -> Path:
        return self.volume / "sock" / "fencer.sock"

    def start_fencer(self, user: str) -> str:
        """The sidecar's container, as the manifest runs it (its args after `fencer`)."""
        fencer = f"{self.name}-fencer"
        podman(
            "run", "-d", "--name", fencer, "--pid", f"container:{self.name}-postgres",
            "--user", user, *HARDENED, "--network", "none", "-e", "TINI_SUBREAPER=1",
            "-v", f"{self.volume / 'data'}:{DATA}:ro", "-v", f"{self.volume / 'sock'}:{SOCKET_DIR}",
            IMAGE, "fencer", "--external", "--socket", f"{SOCKET_DIR}/fencer.sock",
            "--data-dir", PGDATA, "--grace", "0.5",
        )  # fmt: skip
        give_up = time.monotonic() + 30
        while not self.socket.exists():
            assert time.monotonic() < give_up, _logs(fencer)
            time.sleep(0.1)
        return fencer

    def ask(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(10)
            conn.connect(str(self.socket))
            conn.sendall(line.encode() + b"\n")
            return conn.makefile("rb").readline().decode().strip()

    def postmaster_pids(self) -> tuple[int, int]:
        """The stand-in's pid on the host and in the pod (podman top: hpid, pid, command)."""
        rows = podman("top", f"{self.name}-postgres", "hpid", "pid", "args").splitlines()
        for row in rows[1:]:
            hpid, pid, args = row.split(maxsplit=2)
            if args.startswith("postgres "):
                return int(hpid), int(pid)
        raise LookupError("no stand-in postmaster running")

    def check_line(self) -> str:
        """The CHECK an agent would send, for the stand-in's process (an agent of the pod
        as the fencer sees it: pid in the pod, start time) and the data directory."""
        hpid, pid = self.postmaster_pids()
        return f"CHECK {pid} {start_ticks(hpid)} {dir_id(str(self.volume / 'data' / 'pgdata'))}"


def _logs(container: str) -> str:
    """The container's output (the fencer logs to stderr, which `podman logs` passes on as
    its own stderr)."""
    result = subprocess.run(
        ["podman", "logs", container], capture_output=True, text=True, timeout=60, check=False
    )
    return result.stdout + result.stderr


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    volume = tmp_path / "volume"
    (volume / "data" / "pgdata").mkdir(parents=True)
    (volume / "sock").mkdir()
    for path in (volume / "data", volume / "data" / "pgdata", volume / "sock"):
        os.chown(path, POSTGRES_UID, POSTGRES_UID)
    (volume / "data" / "pgdata").chmod(0o700)
    (volume / "sock").chmod(0o777)  # as an emptyDir: world-writable
    pod = Pod(name=f"pgw-fence-{uuid.uuid4().hex[:8]}", volume=volume)
    try:
        podman(
            "run", "-d", "--name", f"{pod.name}-postgres", "--user", f"{POSTGRES_UID}",
            *HARDENED, "--network", "none", "-v", f"{volume / 'data'}:{DATA}",
            "--entrypoint", "/usr/bin/tini", IMAGE, "--", "bash", "-c", STANDIN,
        )  # fmt: skip
        give_up = time.monotonic() + 30
        while not (volume / "data" / "pgdata" / "postmaster.pid").exists():
            assert time.monotonic() < give_up, "the stand-in postmaster did not start"
            time.sleep(0.1)
        yield pod
    finally:
        for suffix in ("fencer", "postgres"):
            podman("rm", "-f", "-t", "0", f"{pod.name}-{suffix}", check=False)


def test_the_sidecar_stops_the_postmaster_of_the_other_container_without_any_capability(
    pod: Pod,
) -> None:
    fencer = pod.start_fencer(f"{POSTGRES_UID}:{POSTGRES_UID}")
    state = podman("inspect", "-f", "{{.State.Pid}}", fencer).strip()
    status = Path(f"/proc/{state}/status").read_text()
    assert "CapEff:\t0000000000000000" in status, "the fencer holds a capability"
    assert pod.ask(pod.check_line()) == "OK disarmed -"  # the agent would take this fencer
    postmaster, _ = pod.postmaster_pids()
    # CLOCK_MONOTONIC is the host's in every container: the deadline means the same there.
    assert pod.ask(f"ARM {time.monotonic() + 1.0:.6f}").startswith("OK armed")
    time.sleep(0.5)
    assert _running(postmaster), "fenced before the deadline"
    give_up = time.monotonic() + 5
    while _running(postmaster):
        assert time.monotonic() < give_up, _logs(fencer)
        time.sleep(0.05)
    assert "fence deadline reached" in _logs(fencer)
    assert pod.ask("STATUS") == "OK fenced -"


def test_a_sidecar_run_as_another_user_is_refused_by_the_agents_check(pod: Pod) -> None:
    """Another uid than PostgreSQL's, no CAP_KILL: it could not read postmaster.pid nor
    signal the postmaster, and says so, so the agent does not lead with it."""
    pod.start_fencer("1000:1000")
    reply = pod.ask(pod.check_line())
    assert reply.startswith("ERR ") and "cannot read" in reply, reply
