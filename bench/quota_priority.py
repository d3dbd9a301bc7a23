"""What a positive nice value for PostgreSQL buys the fencer inside one CPU quota.

A cgroup v1 `cpu` group with a CFS quota (`--cpus` per 100 ms period, as a container's limit)
holds `--busy` CPU spinners standing for PostgreSQL's busy backends, at nice N, and one
probe at nice 0 standing for the fencer: it sleeps to a deadline every 0.3 s, then does a
fixed piece of CPU work (`--work-ms` of CPU measured outside the group: the fencer's stop, a
few signals and /proc reads in Python). Per run it records how late the probe woke and how
long the work took, wall time; each nice value is run `--runs` times, `--seconds` each, and
the table gives the median over the runs of each run's median and p90, and the worst.
Needs root (it makes the cgroup); runs alone (it measures the scheduler).

    .venv/bin/python bench/quota_priority.py [--cpus 0.01] [--nice 0,10,19] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CPU_CGROUPS = Path("/sys/fs/cgroup/cpu")  # cgroup v1, as on these machines
PERIOD_US = 100_000

_SPIN = "while True: pass"
_PROBE = """
import json, sys, time
seconds, loops = float(sys.argv[1]), int(sys.argv[2])
late, took = [], []
end = time.monotonic() + seconds
while time.monotonic() < end:
    deadline = time.monotonic() + 0.3
    time.sleep(0.3)
    woke = time.monotonic()
    for _ in range(loops):
        pass
    late.append(woke - deadline)
    took.append(time.monotonic() - woke)
print(json.dumps({"late": late, "took": took}))
"""


def loops_for(work_ms: float) -> int:
    """How many iterations of the probe's loop take `work_ms` of CPU here, unthrottled."""
    loops = 100_000
    started = time.process_time()
    for _ in range(loops):
        pass
    per_loop = max(time.process_time() - started, 1e-6) / loops
    return max(int(work_ms / 1000 / per_loop), 1)


def one_run(
    cpus: float, busy: int, nice: int, seconds: float, loops: int
) -> dict[str, list[float]]:
    group = CPU_CGROUPS / f"pgwarden-bench-{os.getpid()}"
    group.mkdir()
    spinners: list[subprocess.Popen[bytes]] = []
    try:
        (group / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
        (group / "cpu.cfs_quota_us").write_text(f"{int(cpus * PERIOD_US)}\n")
        for _ in range(busy):
            spinner = subprocess.Popen([sys.executable, "-c", _SPIN])
            os.setpriority(os.PRIO_PROCESS, spinner.pid, nice)
            (group / "cgroup.procs").write_text(f"{spinner.pid}\n")
            spinners.append(spinner)
        probe = subprocess.Popen(
            [sys.executable, "-c", _PROBE, str(seconds), str(loops)], stdout=subprocess.PIPE
        )
        (group / "cgroup.procs").write_text(f"{probe.pid}\n")
        out, _ = probe.communicate(timeout=seconds * 10 + 60)
        result: dict[str, list[float]] = json.loads(out)
        return result
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def _p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", type=float, default=0.01)
    parser.add_argument("--busy", type=int, default=3, help="spinners (busy backends)")
    parser.add_argument("--nice", default="0,10,19", help="the spinners' nice values")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--work-ms", type=float, default=5.0, help="the probe's CPU work")
    args = parser.parse_args(argv)
    loops = loops_for(args.work_ms)
    print(
        f"{args.cpus:g} CPU per {PERIOD_US // 1000} ms period, {args.busy} spinners, probe at "
        f"nice 0 doing {args.work_ms:g} ms of CPU after each wake-up; {args.runs} runs of "
        f"{args.seconds:g} s; load {os.getloadavg()[0]:.1f}"
    )
    print()
    print(
        "| spinners' nice | wake late median / p90 / max (ms) | work took median / p90 / max (ms) |"
    )
    print("|---:|---|---|")
    for nice in [int(n) for n in args.nice.split(",")]:
        runs = [one_run(args.cpus, args.busy, nice, args.seconds, loops) for _ in range(args.runs)]
        cells = []
        for key in ("late", "took"):
            median = statistics.median(statistics.median(r[key]) for r in runs) * 1000
            p90 = statistics.median(_p90(r[key]) for r in runs) * 1000
            worst = max(max(r[key]) for r in runs) * 1000
            cells.append(f"{median:.0f} / {p90:.0f} / {worst:.0f}")
        print(f"| {nice} | {cells[0]} | {cells[1]} |")
    print(f"load after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
