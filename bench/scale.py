"""Many clusters against one test API server (issue 15): idle requests per second, open watch
connections, p99 latency of an API request, and the failover time of one cluster while the
others run, against the same cluster alone.

    .venv/bin/python bench/scale.py [--clusters 100] [--idle-seconds 30] [--runs 1]

Members are light simulated agents in one process: each a real `KubernetesDcs` handle (the
agent's backend: watches, caches, heartbeats, lock) driven by a small loop with the agent's
lease rules at the default timings (renew every 2 s cycle, fence at the last renewal's send
time + ttl - margin, acquire when its view shows no live leader, publish its record); no
PostgreSQL. The server runs in its own process (`python -m tests.k8s_apiserver`). A failover:
the leader of cluster 0 stops (no release, as a SIGKILL); measured from then until another
member of that cluster holds the lock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.config import LockKind
from agent.dcs.base import DcsUnavailable
from agent.dcs.kubernetes import KubernetesDcs
from agent.kube.client import KubeClient
from agent.model import Member, MemberName, PgState, Role

REPO = Path(__file__).resolve().parents[1]
TTL_S, LOOP_S, RETRY_S, MARGIN_S = 10.0, 2.0, 3.0, 2.0
NAMESPACE = "default"
LABELS = {"app": "pg"}
HISTORY = ("--history-size", "200000")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def record(name: str) -> Member:
    return Member(
        name=MemberName(name),
        role=Role.REPLICA,
        state=PgState.STREAMING,
        api_url=f"http://127.0.0.1:8008/{name}",
        host="127.0.0.1",
        port=5432,
        timeline=1,
    )


class SimMember:
    """One simulated agent (see the module docstring)."""

    def __init__(self, cluster: str, name: str, url: str) -> None:
        self.name = name
        self.dcs = KubernetesDcs(
            client_factory=lambda: _client(url),
            namespace=NAMESPACE,
            cluster=cluster,
            member_name=name,
            ttl_s=TTL_S,
            timeout_s=0.9 * RETRY_S,
            loop_wait_s=LOOP_S,
            lock=LockKind.LEASE,
            labels=LABELS,
        )
        self.sent: float | None = None  # send time of the last successful acquire/renew
        self.alive = True

    @property
    def leading(self) -> bool:
        return self.sent is not None and time.monotonic() < self.sent + TTL_S - MARGIN_S

    async def cycle(self) -> None:
        if self.sent is not None and not self.leading:
            self.sent = None  # fenced
        try:
            view = await self.dcs.get_cluster()
        except DcsUnavailable:
            view = None
        sent = time.monotonic()
        with contextlib.suppress(DcsUnavailable):
            if self.sent is not None:
                self.sent = sent if await self.dcs.renew_leader() else None
            elif view is not None and view.leader is None and await self.dcs.acquire_leader():
                self.sent = sent
        with contextlib.suppress(DcsUnavailable):
            await self.dcs.publish_member(record(self.name))

    async def run(self) -> None:
        while self.alive:
            started = time.monotonic()
            await self.cycle()
            with contextlib.suppress(DcsUnavailable):
                await self.dcs.wait_for_change(max(0.0, LOOP_S - (time.monotonic() - started)))


async def _client(url: str) -> KubeClient:
    return KubeClient(host=url, token=None, ssl_context=None)


async def create_pods(url: str, names: list[tuple[str, str]]) -> None:
    async with aiohttp.ClientSession() as session:
        for i, (_, name) in enumerate(names):
            body = {
                "metadata": {"name": name, "labels": LABELS},
                "spec": {"containers": [{"name": "pg", "image": "postgres"}]},
                "status": {"phase": "Running", "podIP": f"10.0.{i // 256 % 256}.{i % 256}"},
            }
            async with session.post(f"{url}/api/v1/namespaces/{NAMESPACE}/pods", json=body) as r:
                r.raise_for_status()


async def admin(url: str, path: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as session, session.get(url + path) as r:
        return dict(await r.json())


async def probe_latency(url: str, stop: asyncio.Event, out: list[float]) -> None:
    """GET one Lease every 0.2 s, recording the round trip."""
    path = f"{url}/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/c000-leader"
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            t0 = time.monotonic()
            async with session.get(path) as r:
                await r.read()
            out.append(time.monotonic() - t0)
            await asyncio.sleep(0.2)


def start_server(port: int) -> subprocess.Popen[bytes]:
    """The test API server in its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.k8s_apiserver", "--port", str(port), *HISTORY],
        cwd=REPO,
    )


async def one_run(clusters: int, idle_s: float) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(port)
    members: list[SimMember] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            await asyncio.sleep(0.1)
        names = [(f"c{c:03d}", f"c{c:03d}-{m}") for c in range(clusters) for m in range(3)]
        await create_pods(url, names)
        members = [SimMember(cluster, name, url) for cluster, name in names]
        tasks = []
        for i, m in enumerate(members):  # staggered: no storm of 900 connections at once
            tasks.append(asyncio.create_task(m.run()))
            if i % 3 == 2:
                await asyncio.sleep(0.05)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            led = {m.name[:4] for m in members if m.leading}
            if len(led) == clusters:
                break
            await asyncio.sleep(0.5)
        converged = len({m.name[:4] for m in members if m.leading})
        await asyncio.sleep(TTL_S)  # settle
        audit_before = len((await admin(url, "/_audit"))["items"])  # type: ignore[arg-type]
        latencies: list[float] = []
        stop = asyncio.Event()
        prober = asyncio.create_task(probe_latency(url, stop, latencies))
        t0 = time.monotonic()
        await asyncio.sleep(idle_s)
        elapsed = time.monotonic() - t0
        stop.set()
        await prober
        state = await admin(url, "/_state")
        audit_after = len((await admin(url, "/_audit"))["items"])  # type: ignore[arg-type]
        # Failover of cluster 0: its leader stops without releasing.
        group = [m for m in members if m.name.startswith("c000-")]
        while not any(m.leading for m in group):  # noqa: ASYNC110 - polling the members
            await asyncio.sleep(0.05)
        leader = next(m for m in group if m.leading)
        leader.alive = False
        tasks[members.index(leader)].cancel()
        died = time.monotonic()
        others = [m for m in group if m is not leader]
        while not any(m.leading for m in others) and time.monotonic() - died < 60:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        failover_s = time.monotonic() - died
        requests = audit_after - audit_before - len(latencies)  # less the probe's own
        latencies.sort()
        return {
            "clusters": clusters,
            "converged": converged,
            "requests_per_s": requests / elapsed,
            "requests_per_s_per_member": requests / elapsed / len(members),
            "open_watches": float(state["openWatches"]),  # type: ignore[arg-type]
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "failover_s": failover_s,
        }
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for m in members:
            with contextlib.suppress(Exception):
                await m.dcs.close()
        server.terminate()
        server.wait(timeout=10)


async def main_async(args: argparse.Namespace) -> list[dict[str, float]]:
    out = []
    for _ in range(args.runs):
        out.append(await one_run(1, args.idle_seconds))
        out.append(await one_run(args.clusters, args.idle_seconds))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    rows = asyncio.run(main_async(args))
    print(
        "| clusters | converged | requests/s | per member | open watches | p50 ms | p99 ms "
        "| failover of one cluster (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clusters']:.0f} | {r['converged']:.0f} | {r['requests_per_s']:.1f} "
            f"| {r['requests_per_s_per_member']:.2f} | {r['open_watches']:.0f} "
            f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['failover_s']:.1f} |"
        )
    print(json.dumps(rows), file=sys.stderr)
    print(f"load average at end: {os.getloadavg()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
