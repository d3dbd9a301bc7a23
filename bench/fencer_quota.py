"""The fencer inside the member's CPU quota, or in a cgroup of its own (issue 16).

A member's container is one CFS quota (`--cpus` per 100 ms period) shared by PostgreSQL and,
today, the fencer. Here a cgroup `member` at that quota holds a stand-in postmaster (a
process named postgres, leading its session, in postmaster.pid) with `--busy` children that
spin (busy backends, each in a session of its own as PostgreSQL's are); on the fencer's fast
shutdown (SIGINT) the stand-in terminates its children and does 5 ms of CPU work before it
exits (the shutdown's own cost, paid from the member's quota). The real fencer
(agent/fencer.py, `--external`, grace 0.5 s as at the default fence margin) runs either in
the same cgroup (`inside`: one container) or in a cgroup of its own at `--fencer-cpus`
(`own`: the sidecar of k8s/examples/fencer-sidecar, limit 100m). For each fence the bench
arms a deadline 0.5-0.6 s ahead (after the children have spun for a second, so the quota is
spent), and records how late the fencer woke (its log line: from the deadline to its
SIGINT) and when the stand-in was gone (from the deadline, observed from outside every
quota; after the grace the fencer SIGKILLs the stand-in and its children), and when its stop
was done (the stand-in exited, or SIGKILL was sent: nothing runs user code after that, so
nothing is acknowledged; from its log line, late + took). Per placement and
quota: `--runs` runs of `--fences` fences; the table gives the median over the runs of each
run's median, and the worst of all.

The CPU controller of these machines is cgroup v1 (`/sys/fs/cgroup/cpu`; cgroup v2 here holds
only hugetlb): the same CFS bandwidth control as cgroup v2's `cpu.max`, which is used when
the v1 controller is absent. Needs root; run it alone (it measures the scheduler).

    .venv/bin/python bench/fencer_quota.py [--cpus 0.01,0.05] [--runs 3] [--fences 8]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.fence import fencer_command

V1_CPU = Path("/sys/fs/cgroup/cpu")
V2 = Path("/sys/fs/cgroup/unified")
PERIOD_US = 100_000
GRACE_S = 0.5
_FENCE = re.compile(r"fence deadline reached \(([\d.]+) s late, took ([\d.]+) s\)")

_STANDIN = """
import os, signal, sys, time
kids = []
for _ in range(int(sys.argv[2])):
    pid = os.fork()
    if pid == 0:
        os.setsid()
        while True:
            pass
    kids.append(pid)
def fast_shutdown(*_):
    for kid in kids:
        os.kill(kid, signal.SIGTERM)
    end = time.process_time() + 0.005
    while time.process_time() < end:
        pass
    os._exit(0)
signal.signal(signal.SIGINT, fast_shutdown)
while True:
    signal.pause()
"""


class Cgroup:
    """A CPU cgroup with a CFS quota, v1 where the controller is mounted there, else v2."""

    def __init__(self, name: str, cpus: float | None) -> None:
        root = V1_CPU if (V1_CPU / "cgroup.procs").exists() else V2
        self.path = root / name
        self.path.mkdir()
        if cpus is None:
            return
        quota = max(int(cpus * PERIOD_US), 1000)
        if root == V1_CPU:
            (self.path / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
            (self.path / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        else:
            (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}\n")

    def joiner(self) -> Callable[[], None]:
        """A preexec_fn: the child joins this cgroup before it execs (its children too)."""
        procs = str(self.path / "cgroup.procs")

        def join() -> None:
            with open(procs, "w") as handle:
                handle.write(f"{os.getpid()}\n")

        return join

    def kill_all(self, spare: int = 0) -> None:
        """SIGKILL every process in it but `spare` (the fencer placed inside)."""
        for word in (self.path / "cgroup.procs").read_text().split():
            if int(word) == spare:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(word), signal.SIGKILL)

    def remove(self) -> None:
        self.kill_all()
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.05)


def _ask(conn: socket.socket, line: str) -> str:
    conn.sendall(line.encode() + b"\n")
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = conn.recv(256)
        if not chunk:
            raise ConnectionError("the fencer closed the connection")
        reply += chunk
    return reply.decode().strip()


def one_fence(
    conn: socket.socket, *, member: Cgroup, data: Path, busy: int, log: Path, fencer_pid: int
) -> tuple[float, float, float]:
    """(fencer woke late, its stop done, the stand-in gone), seconds after the deadline. The
    stop is done when the stand-in exited on the fast shutdown or was sent SIGKILL (a
    process with SIGKILL pending never runs user code again: it acknowledges nothing)."""
    _ask(conn, "DISARM")
    seen = log.read_text().count("fence deadline reached")
    standin = subprocess.Popen(
        [sys.executable, "-c", _STANDIN, "postgres-standin", str(busy)],
        start_new_session=True,
        preexec_fn=member.joiner(),  # noqa: PLW1509 - the child joins the cgroup before exec
    )
    try:
        (data / "postmaster.pid").write_text(f"{standin.pid}\n{data}\n")
        time.sleep(1.0)  # the children spend the period's quota
        deadline = time.monotonic() + 0.5 + random.uniform(0, 0.1)  # not in step with periods
        _ask(conn, f"ARM {deadline:.6f}")
        while standin.poll() is None:
            if time.monotonic() > deadline + 60:
                raise TimeoutError("not fenced within 60 s")
            time.sleep(0.002)
        gone = time.monotonic() - deadline
        give_up = time.monotonic() + 30
        while log.read_text().count("fence deadline reached") == seen:
            if time.monotonic() > give_up:
                raise TimeoutError("no fence line in the fencer's log")
            time.sleep(0.01)
        late, took = (float(x) for x in _FENCE.findall(log.read_text())[seen])
        return late, late + took, gone
    finally:
        if standin.poll() is None:
            standin.kill()
            standin.wait()
        member.kill_all(spare=fencer_pid)  # the children left, if any


def one_run(
    cpus: float, own: bool, fencer_cpus: float, busy: int, fences: int
) -> list[tuple[float, float, float]]:
    tag = f"pgwarden-fq-{os.getpid()}"
    member = Cgroup(f"{tag}-member", cpus)
    alone = Cgroup(f"{tag}-fencer", fencer_cpus) if own else None
    with tempfile.TemporaryDirectory(prefix="fencer-quota-") as tmp:
        data, sock, log = Path(tmp), Path(tmp) / "fencer.sock", Path(tmp) / "fencer.log"
        with log.open("ab") as out:
            fencer = subprocess.Popen(
                [*fencer_command(), "--external", "--socket", str(sock),
                 "--data-dir", str(data), "--grace", str(GRACE_S)],
                stdout=out, stderr=out, start_new_session=True,
                preexec_fn=(alone or member).joiner(),  # noqa: PLW1509
            )  # fmt: skip
        try:
            with socket.socket(socket.AF_UNIX) as conn:
                conn.settimeout(60)
                give_up = time.monotonic() + 60
                while True:  # bound before it listens: refused for a moment
                    try:
                        conn.connect(str(sock))
                        break
                    except (FileNotFoundError, ConnectionRefusedError):
                        if time.monotonic() > give_up:
                            raise
                        time.sleep(0.01)
                try:
                    return [
                        one_fence(
                            conn,
                            member=member,
                            data=data,
                            busy=busy,
                            log=log,
                            fencer_pid=fencer.pid,
                        )
                        for _ in range(fences)
                    ]
                except Exception:
                    print(log.read_text()[-2000:], file=sys.stderr)
                    raise
        finally:
            fencer.kill()
            fencer.wait()
            member.remove()
            if alone is not None:
                alone.remove()


def _cells(runs: list[list[float]]) -> str:
    median = statistics.median(statistics.median(r) for r in runs) * 1000
    worst = max(max(r) for r in runs) * 1000
    return f"{median:.0f} / {worst:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", default="0.01,0.05", help="the member's quotas, in CPUs")
    parser.add_argument("--fencer-cpus", type=float, default=0.1, help="the sidecar's quota")
    parser.add_argument("--busy", type=int, default=3, help="busy children (backends)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fences", type=int, default=8, help="fences per run")
    args = parser.parse_args(argv)
    print(
        f"member quota per {PERIOD_US // 1000} ms period, {args.busy} busy children; fencer "
        f"inside it or in its own cgroup at {args.fencer_cpus:g} CPU; grace {GRACE_S} s; "
        f"{args.runs} runs of {args.fences} fences; load {os.getloadavg()[0]:.1f}"
    )
    print()
    print(
        "| member CPU | fencer | woke late, median / max (ms) | stop done (exited or SIGKILL "
        "sent), median / max (ms) | stand-in gone, median / max (ms) |"
    )
    print("|---:|---|---|---|---|")
    for cpus in [float(c) for c in args.cpus.split(",")]:
        for own in (False, True):
            runs = [
                one_run(cpus, own, args.fencer_cpus, args.busy, args.fences)
                for _ in range(args.runs)
            ]
            cells = " | ".join(_cells([[f[i] for f in r] for r in runs]) for i in range(3))
            where = f"own cgroup ({args.fencer_cpus:g})" if own else "inside"
            print(f"| {cpus:g} | {where} | {cells} |", flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
