"""Latency of the agent's REST API server: this tree against an older one (aiohttp.web before
agent/http/server.py), the same app and the same client in the same run.

Usage: .venv/bin/python bench/api_latency.py [--old-ref REF] [--n 2000] [--runs 3] [--json]

Each server runs in a process of its own (`build_app` + `start_api` of its tree, a memory DCS
with three members, member a published as primary; nothing else imported, so its RSS is the
API's and the agent modules' it needs). The client is a bare one on asyncio streams (request
bytes written by hand, the answer read by Content-Length), so both servers pay for the same
client. Per run, the trees alternate; per tree and run, after a warm-up:
  keep-alive   N sequential GET /health on one connection
  new conn     N/4 sequential GET /health, each on a new connection (kubelet probes, ctl)
  metrics      N/4 sequential GET /metrics on one connection (a few kB of text)
  parallel     10 connections sending N requests in all, kept alive: requests per second
Prints p50 / p99 in milliseconds (the median over the runs) and the server's RSS after the
run. `--old-ref` is checked out in a temporary detached worktree, removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.ports import free_port  # noqa: E402

WARMUP = 200
PARALLEL = 10

# Run in the server's tree: its own build_app/start_api around a memory DCS.
_SERVE = """
import asyncio, sys
try:  # as `pgwarden run` starts in trees whose runtime still imported aiohttp (agent/lean.py)
    from agent.lean import import_runtime
    import_runtime()
except ImportError:
    pass
from agent.api import build_app, start_api
from agent.clock import FakeClock
from agent.config import ApiSettings, DcsKind, DcsSettings, EtcdSettings, PostgresSettings
from agent.config import Settings
from agent.dcs.memory import MemoryDcs, MemoryStore
from agent.metrics import Metrics
from agent.model import AgentStatus, Member, MemberName, PgState, Role

class Sink:
    def submit(self, kind): pass
    def wake(self): pass
    def accept_failsafe(self, leader): return "no"

async def main(port: int) -> None:
    clock = FakeClock()
    api = ApiSettings(listen_host="127.0.0.1", port=port, insecure_no_auth=True)
    settings = Settings(
        name="a", cluster="demo", run_dir="/nonexistent/run",
        dcs=DcsSettings(kind=DcsKind.ETCD, etcd=EtcdSettings(endpoints=("http://127.0.0.1:1",))),
        postgresql=PostgresSettings(data_dir="/nonexistent/data"), api=api,
    )
    dcs = MemoryDcs(MemoryStore(clock), "a", ttl_s=10.0, clock=clock)
    for name, role in (("a", Role.PRIMARY), ("b", Role.REPLICA), ("c", Role.REPLICA)):
        await dcs.publish_member(Member(
            name=MemberName(name), role=role, state=PgState.RUNNING, api_url=api.url,
            host="127.0.0.1", port=5432, timeline=1, wal_lsn=1000,
        ))
    assert await dcs.acquire_leader()
    status = AgentStatus(
        name=MemberName("a"), cluster="demo", role=Role.PRIMARY, state=PgState.RUNNING,
        api_url=api.url, timeline=1, wal_lsn=1000, leader=MemberName("a"), lease_held=True,
        dcs_ok=True, observed_at=clock.monotonic(), cluster_view=await dcs.get_cluster(),
    )
    metrics = Metrics()
    metrics.update(status)
    app = build_app(
        settings=settings, status=lambda: status, dcs=dcs, requests=Sink(), metrics=metrics,
        clock=clock,
    )
    await start_api(app, api)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1])))
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    server: str
    scenario: str
    p50_ms: float
    p99_ms: float
    per_s: float


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


async def _answer(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def _kept(port: int, path: str, n: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    samples = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            writer.write(_request(path))
            status = await _answer(reader)
            samples.append(time.perf_counter() - started)
            assert status in (200, 503), status
    finally:
        writer.close()
    return samples


async def _fresh(port: int, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request("/health"))
        await _answer(reader)
        samples.append(time.perf_counter() - started)
        writer.close()
        await writer.wait_closed()
    return samples


async def _parallel(port: int, n: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(_kept(port, "/health", n // PARALLEL) for _ in range(PARALLEL)))
    return n / (time.perf_counter() - started)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _measure(tree: Path, n: int) -> tuple[dict[str, list[float]], float, float]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SERVE, str(port), cwd=tree, env=env, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(30):  # the agent's log lines come first
            while (line := await child.stdout.readline()).strip() != b"ready":
                assert line, "the server exited before it was ready"
        await _kept(port, "/health", WARMUP)
        await _fresh(port, WARMUP // 4)
        samples = {
            "keep-alive": await _kept(port, "/health", n),
            "new conn": await _fresh(port, n // 4),
            "metrics": await _kept(port, "/metrics", n // 4),
        }
        per_s = await _parallel(port, n)
        return samples, per_s, _rss_mb(child.pid)
    finally:
        child.terminate()
        await child.wait()


async def main_async(args: argparse.Namespace, trees: dict[str, Path]) -> list[Row]:
    p50s: dict[tuple[str, str], list[float]] = {}
    p99s: dict[tuple[str, str], list[float]] = {}
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.runs):
        for name, tree in trees.items():
            samples, per_s, rss = await _measure(tree, args.n)
            for scenario, values in samples.items():
                p50s.setdefault((name, scenario), []).append(percentile(values, 0.5) * 1000)
                p99s.setdefault((name, scenario), []).append(percentile(values, 0.99) * 1000)
                rates.setdefault((name, scenario), []).append(len(values) / sum(values))
            rates.setdefault((name, "parallel"), []).append(per_s)
            rates.setdefault((name, "rss MB"), []).append(rss)
    rows = [
        Row(
            server=name,
            scenario=scenario,
            p50_ms=statistics.median(p50s.get((name, scenario), [0.0])),
            p99_ms=statistics.median(p99s.get((name, scenario), [0.0])),
            per_s=statistics.median(values),
        )
        for (name, scenario), values in rates.items()
    ]
    return sorted(rows, key=lambda r: (r.scenario, r.server))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-ref", default=None, help="a commit to compare with (git ref)")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgw-api-latency-") as scratch:
        trees = {"this tree": ROOT}
        if args.old_ref:
            old = Path(scratch) / "old"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.old_ref],
                check=True,
                capture_output=True,
            )
            trees = {args.old_ref: old, **trees}
        try:
            rows = asyncio.run(main_async(args, trees))
        finally:
            if args.old_ref:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                    check=False,
                )
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    print(f"{'scenario':<12} {'server':<14} {'p50 ms':>8} {'p99 ms':>8} {'per s / MB':>11}")
    for r in rows:
        latency = r.scenario not in ("parallel", "rss MB")
        p50 = f"{r.p50_ms:8.3f}" if latency else f"{'':8}"
        p99 = f"{r.p99_ms:8.3f}" if latency else f"{'':8}"
        print(f"{r.scenario:<12} {r.server:<14} {p50} {p99} {r.per_s:11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
