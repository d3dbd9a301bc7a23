"""Idle footprint per member and DCS backend: DCS requests per second, agent and fencer RSS,
agent CPU, on a converged 3-member cluster; `patroni` is Patroni 4.1.5 on etcd, measured the
same way in the same run (installed on demand into bench/.venv-patroni, see
bench/patroni_cluster.py).

    .venv/bin/python bench/footprint.py [--runs 3] [--idle-seconds 60] [--json] [--dev-venv]
        [--only etcd kubernetes-lease kubernetes-endpoints etcd-patroni-timing patroni
                patroni-fast]

Rows, each at its own timings (ttl / loop_wait / retry_timeout / fence_margin, seconds):
- `etcd`, `kubernetes-lease`, `kubernetes-endpoints`: pgwarden at its defaults (6/2/1.5/1);
- `etcd-patroni-timing`: pgwarden on etcd at Patroni's defaults, as near as pgwarden's rules
  allow (30/10/9.5/1: loop_wait + 2 retry_timeout + fence_margin must fit in the ttl, and
  the fence margin is 0.5 s at least);
- `patroni`: Patroni at its defaults (30/10/10);
- `patroni-fast`: Patroni as near pgwarden's defaults as it accepts (20/2/4: its ttl is 20 s
  at least, and loop_wait + 2 retry_timeout must fit in it).
Side by side, `etcd` against `patroni-fast` and `etcd-patroni-timing` against `patroni`
compare the cost of one loop; the default rows compare what each tool costs out of the box.

The agents run as deployed: on Debian's python3 in a venv holding the image's pinned runtime
dependencies only (docker/constraints.txt), built on demand in bench/.venv-agent with the
working tree installed editable and byte-compiled before each bench (pip compiles the image's
install; without .pyc files every agent compiles its modules at start, about 0.5 MB more RSS),
like Patroni's venv. `--dev-venv` runs them on .venv instead,
whose test tools pull `rich` and `pygments` into structlog's import (about 4 MB more RSS).

Requests: for the Kubernetes backends, every request of the agents in the test API server's
audit log during the window (a watch counts when it is opened); for etcd, the growth of etcd's
own `grpc_server_handled_total` (the JSON gateway turns every request into one gRPC call; a
watch or keepalive stream counts once per stream). RSS from /proc VmRSS (the largest of the
three members); "shared once" counts an agent and its fencer together with each mapped file's
pages once (`resident_once`: they share the interpreter, libc and libm; a container's memory
cgroup charges those pages once, summed VmRSS twice). CPU from utime+stime over the window, as
a share of one core and as CPU-seconds per hour (the largest of the three: the leader's,
mostly); the fencer's the same way (the largest of the three fencers: the leader's, which is
re-armed every loop). Each figure is the median over --runs fresh clusters, max in brackets.
The load average is printed before and after: RSS and request counts do not depend on it; CPU
time a little (cache misses).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from failover import converge, cpu_ticks, fencer_pid, rss_kb
from patroni_cluster import PATRONI_DEFAULT_TIMING, PATRONI_FAST_TIMING, PatroniCluster

from agent.localcluster import LocalCluster
from agent.settings import Timing
from tests.support.k8s_audit import request_rate

# The agent's own defaults (agent/settings.py Timing), so a change of default is measured here.
DEFAULT_TIMING = {
    k: float(getattr(Timing(), k))
    for k in ("ttl_s", "loop_wait_s", "retry_timeout_s", "fence_margin_s")
}
# Patroni's defaults (30/10/10) as near as pgwarden's rules allow: retry_timeout 9.5 s leaves
# the 1 s fence margin inside the ttl (loop_wait + 2 * retry_timeout + fence_margin <= ttl).
PATRONI_TIMING = {"ttl_s": 30.0, "loop_wait_s": 10.0, "retry_timeout_s": 9.5, "fence_margin_s": 1.0}


@dataclass(frozen=True)
class Row:
    kind: str  # DCS: etcd | kubernetes
    lock: str  # Kubernetes lock kind; "patroni" for Patroni
    timing: dict[str, float]  # pgwarden's ttl_s...; Patroni's ttl, loop_wait, retry_timeout

    @property
    def loop_wait_s(self) -> float:
        return self.timing.get("loop_wait_s", self.timing.get("loop_wait", 0.0))


ROWS = {
    "etcd": Row("etcd", "lease", DEFAULT_TIMING),
    "kubernetes-lease": Row("kubernetes", "lease", DEFAULT_TIMING),
    "kubernetes-endpoints": Row("kubernetes", "endpoints", DEFAULT_TIMING),
    "etcd-patroni-timing": Row("etcd", "lease", PATRONI_TIMING),
    "patroni": Row("etcd", "patroni", {k: float(v) for k, v in PATRONI_DEFAULT_TIMING.items()}),
    "patroni-fast": Row("etcd", "patroni", {k: float(v) for k, v in PATRONI_FAST_TIMING.items()}),
}
AGENT_VENV = Path(__file__).resolve().parent / ".venv-agent"
REPO = Path(__file__).resolve().parents[1]
_GRPC = re.compile(r'^grpc_server_handled_total\{[^}]*grpc_method="([^"]+)"[^}]*\} (\S+)$')


def etcd_calls(cluster: LocalCluster | PatroniCluster) -> Counter[str]:
    """etcd's gRPC calls handled so far, by method."""
    with urllib.request.urlopen(cluster.etcd_endpoints[0] + "/metrics", timeout=5) as response:
        text = response.read().decode()
    calls: Counter[str] = Counter()
    for line in text.splitlines():
        if match := _GRPC.match(line):
            calls[match.group(1)] += int(float(match.group(2)))
    return calls


def resident_once(pids: list[int]) -> int:
    """kB resident in these processes together, each file's pages once (the agent and its
    fencer map the same interpreter and libc): their anonymous memory summed, plus per mapped
    file the most any of them has resident. About what their container's memory cgroup
    charges (file pages are charged once), where summed VmRSS counts shared pages twice."""
    anon, files = 0, Counter[str]()
    for pid in pids:
        mine: Counter[str] = Counter()
        path = ""
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            head = line.split()
            if head and not head[0].endswith(":"):  # a mapping's first line
                path = head[5] if len(head) > 5 and not head[5].startswith("[") else ""
            elif head[:1] == ["Rss:"]:
                if path:
                    mine[path] += int(head[1])
                else:
                    anon += int(head[1])
        for name, kb in mine.items():
            files[name] = max(files[name], kb)
    return anon + sum(files.values())


def ensure_agent_venv(venv: Path = AGENT_VENV) -> str:
    """The python of `venv`: Debian's python3 with the image's pinned runtime dependencies
    (docker/constraints.txt, as the Dockerfile installs them) and this working tree installed
    editable; built on first use (needs the registry), reused after."""
    python = venv / "bin" / "python"
    marker = venv / ".pins"
    pins = (REPO / "docker" / "constraints.txt").read_text()
    if python.exists() and marker.exists() and marker.read_text() == pins:
        return str(python)
    system = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    subprocess.run([system, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    runtime = [
        line
        for line in pins.splitlines()
        if line and not line.startswith(("#", "setuptools==", "wheel=="))
    ]
    pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps"]
    subprocess.run([*pip, *runtime], check=True, timeout=600)
    subprocess.run([*pip, "--editable", str(REPO)], check=True, timeout=600)
    marker.write_text(pins)
    return str(python)


def compile_agent(python: str) -> None:
    """Byte-compile the working tree's agent/ for `python`, as pip does for the image's
    non-editable install: an agent that starts without .pyc files (the editable install,
    PYTHONDONTWRITEBYTECODE=1 as in the image) compiles its modules in memory at every start,
    about 0.5 MB more RSS than the image's. With PYTHONOPTIMIZE in the agents' environment
    (--agent-env), everything they import is compiled at that level, into a cache of the
    bench's own (PYTHONPYCACHEPREFIX), so that the level is measured, not the compiling."""
    dirs = [str(REPO / "agent")]
    if os.environ.get("PYTHONOPTIMIZE"):
        os.environ.setdefault("PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "pgw-pyc"))
        paths = subprocess.run(
            [python, "-c", "import sys; print('\\n'.join(p for p in sys.path if p))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        dirs += [p for p in paths if Path(p).is_dir()]
    subprocess.run([python, "-m", "compileall", "-q", *dirs], check=False, timeout=900)


async def one_run(row: Row, seconds: float, root: Path, python: str) -> dict[str, float | str]:
    base = Path(tempfile.mkdtemp(prefix="fp-", dir=root))
    os.chmod(base, 0o755)  # PostgreSQL runs as the postgres user: it must reach its directory
    cluster: LocalCluster | PatroniCluster
    if row.lock == "patroni":
        cluster = PatroniCluster(
            base=base, size=3, timing={k: int(v) for k, v in row.timing.items()}
        )
    else:
        cluster = LocalCluster(
            base=base,
            size=3,
            timing=dict(row.timing),
            dcs_kind=row.kind,
            kube_lock=row.lock,
            python=python,
        )
    try:
        cluster.start()
        await converge(cluster)
        # Settle after bootstrap (the last member records, the first keepalives): two loops.
        await asyncio.sleep(max(10.0, 2 * row.loop_wait_s))
        pids = [m.process.pid for m in cluster.members if m.process is not None]
        fencers = [
            p
            for i in range(len(cluster.members))
            if isinstance(cluster, LocalCluster) and (p := fencer_pid(cluster, i))
        ]
        before = {pid: cpu_ticks(pid) for pid in [*pids, *fencers]}
        calls_before = etcd_calls(cluster) if row.kind == "etcd" else Counter()
        start, t0 = time.time(), time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - t0
        hz = os.sysconf("SC_CLK_TCK")
        cpu = [100.0 * (cpu_ticks(pid) - before[pid]) / hz / elapsed for pid in pids]
        fencer_cpu = [100.0 * (cpu_ticks(p) - before[p]) / hz / elapsed for p in fencers]
        if row.kind == "etcd":
            calls = etcd_calls(cluster)
            calls.subtract(calls_before)
            counts = +calls
            rate = sum(counts.values()) / elapsed
        else:
            assert isinstance(cluster, LocalCluster)
            rate, counts = request_rate(cluster.audit_log, since=start, until=start + elapsed)
        agent_rss = max(rss_kb(pid) for pid in pids) / 1024
        fencer_rss = max((rss_kb(p) for p in fencers), default=0) / 1024
        by_member = [
            [m.process.pid, *([f] if (f := fencer_pid(cluster, i)) else [])]
            for i, m in enumerate(cluster.members)
            if m.process is not None and isinstance(cluster, LocalCluster)
        ] or [[pid] for pid in pids]
        member_mb = max(resident_once(group) for group in by_member) / 1024
        per_minute = {k: round(60 * v / elapsed / 3, 1) for k, v in counts.most_common()}
        return {
            "requests_per_s": rate / len(pids),
            "agent_rss_mb": agent_rss,
            "fencer_rss_mb": fencer_rss,
            "total_rss_mb": agent_rss + fencer_rss,
            "member_mb": member_mb,
            "agent_cpu_pct": max(cpu),
            "agent_cpu_s_per_h": 36.0 * max(cpu),  # % of a core over an hour: 3600 s / 100
            "fencer_cpu_pct": max(fencer_cpu, default=0.0),
            "per_member_per_minute": json.dumps(per_minute),
        }
    finally:
        cluster.stop()
        if os.environ.get("FOOTPRINT_KEEP") is None:
            shutil.rmtree(base, ignore_errors=True)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({max(values):.2f})"


async def main_async(args: argparse.Namespace) -> dict[str, list[dict[str, float | str]]]:
    root = Path(tempfile.mkdtemp(prefix="pgwarden-footprint-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        out: dict[str, list[dict[str, float | str]]] = {}
        python = sys.executable if args.dev_venv else ensure_agent_venv()
        for setting in args.agent_env:  # the agents inherit this process's environment
            name, _, value = setting.partition("=")
            os.environ[name] = value
        compile_agent(python)
        for name in args.only:
            row = ROWS[name]
            out[name] = [
                await one_run(row, args.idle_seconds, root, python) for _ in range(args.runs)
            ]
        return out
    finally:
        if os.environ.get("FOOTPRINT_KEEP") is None:
            shutil.rmtree(root, ignore_errors=True)


def render(out: dict[str, list[dict[str, float | str]]]) -> str:
    fields = (
        "requests_per_s",
        "agent_rss_mb",
        "fencer_rss_mb",
        "total_rss_mb",
        "member_mb",
        "agent_cpu_pct",
        "agent_cpu_s_per_h",
        "fencer_cpu_pct",
    )
    lines = [
        "| row | ttl/loop/retry s | DCS requests/s per member | agent RSS MB | fencer RSS MB "
        "| agent+fencer MB | shared once MB | agent CPU % | agent CPU s/h | fencer CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in out.items():
        t = list(ROWS[name].timing.values())[:3]
        timing = "/".join(f"{v:g}" for v in t)
        cells = [summary([float(r[f]) for r in runs]) for f in fields]
        lines.append(f"| {name} | {timing} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, runs in out.items():
        detail = runs[-1]["per_member_per_minute"]
        lines.append(f"{name}, requests per member per minute (last run): {detail}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--only", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    parser.add_argument(
        "--dev-venv", action="store_true", help="run the agents on .venv, not bench/.venv-agent"
    )
    parser.add_argument(
        "--agent-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="run the agents with this in their environment (interpreter and allocator "
        "options: PYTHONOPTIMIZE=2, MALLOC_ARENA_MAX=1, PYTHONMALLOC=malloc...)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    if args.agent_env:
        print(f"agents' extra environment: {' '.join(args.agent_env)}", file=sys.stderr)
    out = asyncio.run(main_async(args))
    print(json.dumps(out, indent=2) if args.json else render(out))
    print(f"load average at end: {os.getloadavg()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
