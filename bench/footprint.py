"""Idle footprint per member and DCS backend: DCS requests per second, agent and fencer RSS,
agent CPU, on a converged 3-member cluster at the default timings; `patroni` is Patroni 4.1.5
on etcd at its own defaults (ttl 30, loop_wait 10), measured the same way in the same run
(installed on demand into bench/.venv-patroni, see bench/patroni_cluster.py).

    .venv/bin/python bench/footprint.py [--runs 3] [--idle-seconds 30] [--json]
        [--only etcd kubernetes-lease kubernetes-endpoints patroni]

Requests: for the Kubernetes backends, every request of the agents in the test API server's
audit log during the window (a watch counts when it is opened); for etcd, the growth of etcd's
own `grpc_server_handled_total` (the JSON gateway turns every request into one gRPC call; a
watch or keepalive stream counts once per stream). RSS from /proc VmRSS (the largest of the
three members), CPU from utime+stime over the window. Each figure is the median over --runs
fresh clusters, max in brackets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from failover import converge, cpu_ticks, fencer_pid, rss_kb
from patroni_cluster import PatroniCluster

from agent.localcluster import LocalCluster
from agent.settings import Timing
from tests.support.k8s_audit import request_rate

# The agent's own defaults (agent/settings.py Timing), so a change of default is measured here.
DEFAULT_TIMING = {
    k: float(getattr(Timing(), k))
    for k in ("ttl_s", "loop_wait_s", "retry_timeout_s", "fence_margin_s")
}
BACKENDS = {
    "etcd": ("etcd", "lease"),
    "kubernetes-lease": ("kubernetes", "lease"),
    "kubernetes-endpoints": ("kubernetes", "endpoints"),
    "patroni": ("etcd", "patroni"),
}
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


async def one_run(backend: str, seconds: float, root: Path) -> dict[str, float | str]:
    kind, lock = BACKENDS[backend]
    base = Path(tempfile.mkdtemp(prefix=f"fp-{backend}-", dir=root))
    os.chmod(base, 0o755)  # PostgreSQL runs as the postgres user: it must reach its directory
    cluster: LocalCluster | PatroniCluster
    if lock == "patroni":
        cluster = PatroniCluster(base=base, size=3)
    else:
        cluster = LocalCluster(
            base=base, size=3, timing=dict(DEFAULT_TIMING), dcs_kind=kind, kube_lock=lock
        )
    try:
        cluster.start()
        await converge(cluster)
        # Settle after bootstrap (Patroni: its members publish once per 10 s loop).
        await asyncio.sleep(15.0 if lock == "patroni" else max(2.0, DEFAULT_TIMING["ttl_s"] / 2))
        pids = [m.process.pid for m in cluster.members if m.process is not None]
        before = {pid: cpu_ticks(pid) for pid in pids}
        calls_before = etcd_calls(cluster) if kind == "etcd" else Counter()
        start, t0 = time.time(), time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - t0
        hz = os.sysconf("SC_CLK_TCK")
        cpu = [100.0 * (cpu_ticks(pid) - before[pid]) / hz / elapsed for pid in pids]
        if kind == "etcd":
            calls = etcd_calls(cluster)
            calls.subtract(calls_before)
            counts = +calls
            rate = sum(counts.values()) / elapsed
        else:
            assert isinstance(cluster, LocalCluster)
            rate, counts = request_rate(cluster.audit_log, since=start, until=start + elapsed)
        fencers = [
            p
            for i in range(len(cluster.members))
            if isinstance(cluster, LocalCluster) and (p := fencer_pid(cluster, i))
        ]
        agent_rss = max(rss_kb(pid) for pid in pids) / 1024
        fencer_rss = max((rss_kb(p) for p in fencers), default=0) / 1024
        per_minute = {k: round(60 * v / elapsed / 3, 1) for k, v in counts.most_common()}
        return {
            "requests_per_s": rate / len(pids),
            "agent_rss_mb": agent_rss,
            "fencer_rss_mb": fencer_rss,
            "total_rss_mb": agent_rss + fencer_rss,
            "agent_cpu_pct": max(cpu),
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
        for backend in args.only:
            runs = [await one_run(backend, args.idle_seconds, root) for _ in range(args.runs)]
            out[backend] = runs
        return out
    finally:
        if os.environ.get("FOOTPRINT_KEEP") is None:
            shutil.rmtree(root, ignore_errors=True)


def render(out: dict[str, list[dict[str, float | str]]]) -> str:
    fields = ("requests_per_s", "agent_rss_mb", "fencer_rss_mb", "total_rss_mb", "agent_cpu_pct")
    lines = [
        "| backend | DCS requests/s per member | agent RSS MB | fencer RSS MB | agent+fencer MB "
        "| agent CPU % |",
        "|---|---|---|---|---|---|",
    ]
    for backend, runs in out.items():
        cells = [summary([float(r[f]) for r in runs]) for f in fields]
        lines.append(f"| {backend} | " + " | ".join(cells) + " |")
    lines.append("")
    for backend, runs in out.items():
        detail = runs[-1]["per_member_per_minute"]
        lines.append(f"{backend}, requests per member per minute (last run): {detail}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--only", nargs="+", choices=sorted(BACKENDS), default=list(BACKENDS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    out = asyncio.run(main_async(args))
    print(json.dumps(out, indent=2) if args.json else render(out))
    print(f"load average at end: {os.getloadavg()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
