"""Failover benchmark: write unavailability per scenario on a real 3-member cluster.

Starts etcd and three agents (real PostgreSQL) with the default timings, runs each scenario
`--runs` times with a client inserting every 50 ms through libpq multi-host
(target_session_attrs=read-write), and prints the median and max time during which no write
was acknowledged. Also: time to bootstrap 3 members to 1 primary + 2 streaming replicas, and
each agent's idle RSS and CPU. As a same-run floor it times the raw PostgreSQL operations a
failover is made of (promote of a standby, restart of a crashed primary) with no agent.

With `--baseline patroni` (Patroni 4.1.5 defaults: ttl 30, loop_wait 10, retry_timeout 10) or
`--baseline patroni-fast` (ttl 20, loop_wait 2, retry_timeout 4, its fastest accepted), the
same scenarios then run with the same writer on a Patroni cluster (bench/patroni_cluster.py)
in the same run, and every figure gets a pgwarden/Patroni ratio.

    .venv/bin/python bench/failover.py [--runs 5] [--json] [--idle-seconds 60]
        [--baseline {none,patroni,patroni-fast}]

Two more scenarios freeze the DCS (SIGSTOP of etcd, or of the test API server) for 30 s,
with failsafe mode off and on (switched with PATCH /config, on Patroni too).

With `--sync-mode {off,on,quorum,all}` it measures synchronous replication instead, on one
cluster switched between modes with PATCH /config: per mode, the median (and p95) latency of
a single-row INSERT commit with one client connected to the primary, then the write gap and
the acknowledged commits missing on the new primary after a SIGKILL of the primary (agent
and PostgreSQL), and the write gap of a REST switchover. `all` runs off, on and quorum in the
same run, so the commit latency cost of on/quorum is read against off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patroni_cluster import (
    PATRONI_DEFAULT_TIMING,
    PATRONI_FAST_TIMING,
    PatroniCluster,
    ensure_patroni,
)

from agent.localcluster import LocalCluster
from agent.settings import Timing
from bench.writes import BenchAppWriter
from tests.support.cluster import converged, wait_until
from tests.support.workload import ensure_table

# The agent's own defaults (agent/settings.py Timing), so a change of default is measured here.
DEFAULT_TIMING = {
    k: float(getattr(Timing(), k))
    for k in ("ttl_s", "loop_wait_s", "retry_timeout_s", "fence_margin_s")
}

BenchCluster = LocalCluster | PatroniCluster
Report = dict[str, dict[str, float | int]]

BASELINE_TIMING = {"patroni": PATRONI_DEFAULT_TIMING, "patroni-fast": PATRONI_FAST_TIMING}
BASELINE_LABEL = {"patroni": "Patroni", "patroni-fast": "Patroni fast"}


# pgwarden's DCS for `--dcs`: (LocalCluster dcs_kind, Kubernetes lock kind).
PGWARDEN_DCS = {
    "etcd": ("etcd", "endpoints"),
    "kubernetes": ("kubernetes", "endpoints"),
    "kubernetes-lease": ("kubernetes", "lease"),
}


def make_cluster(kind: str, base: Path, dcs: str = "etcd") -> BenchCluster:
    """`pgwarden` (our agents, default timings, on `dcs`) or a Patroni baseline
    (`patroni[-fast]`, always on etcd)."""
    if kind == "pgwarden":
        dcs_kind, lock = PGWARDEN_DCS[dcs]
        return LocalCluster(
            base=base, size=3, timing=dict(DEFAULT_TIMING), dcs_kind=dcs_kind, kube_lock=lock
        )
    return PatroniCluster(base=base, size=3, timing=dict(BASELINE_TIMING[kind]))


async def is_converged(cluster: BenchCluster, session: aiohttp.ClientSession) -> bool:
    if isinstance(cluster, PatroniCluster):
        return await cluster.converged(session)
    return await converged(cluster, session)


async def converge(cluster: BenchCluster, timeout: float | None = None) -> int:
    # Patroni publishes member state once per loop_wait (10 s by default): allow it more time.
    if timeout is None:
        timeout = 180.0 if isinstance(cluster, PatroniCluster) else 90.0
    found: list[int] = []
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            if not await is_converged(cluster, session):
                return False
            index = await cluster.primary_index(session)
            found[:] = [] if index is None else [index]
            return index is not None

        await wait_until(ready, timeout=timeout, interval=0.05, what="convergence")
    return found[0]


async def write_gap(
    cluster: BenchCluster, fault: Callable[[int], Awaitable[None]], settle_s: float
) -> float:
    """Run `fault(primary)` under a writer; the longest stretch without an acknowledged write."""
    primary = await converge(cluster)
    await ensure_table("127.0.0.1", cluster.members[primary].pg_port)
    app = BenchAppWriter(
        hosts=[("127.0.0.1", m.pg_port) for m in cluster.members],
        start_value=int(time.time() * 1000) % 10**12,
    )
    app.start()
    await asyncio.sleep(1.0)
    t0 = time.monotonic()
    await fault(primary)
    # Wait until writes flow again, then a little more.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (
            app.log.first_ack_after(time.monotonic() - 0.2) is not None
            and time.monotonic() > t0 + 0.5
        ):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(settle_s)
    log = await app.stop()
    return log.longest_gap(t0, time.monotonic())


async def scenario_switchover(cluster: BenchCluster) -> float:
    async def fault(primary: int) -> None:
        async with aiohttp.ClientSession() as session:
            status, body = await cluster.post(session, primary, "/switchover", {})
            # pgwarden accepts with 202 at once; Patroni answers 200 once it is done.
            if status not in (200, 202):
                raise RuntimeError(f"switchover refused: {status} {body}")

    return await write_gap(cluster, fault, 1.0)


async def scenario_sigterm(cluster: BenchCluster) -> float:
    stopped: list[int] = []

    async def fault(primary: int) -> None:
        cluster.signal_agent(primary, signal.SIGTERM)
        stopped.append(primary)

    gap = await write_gap(cluster, fault, 1.0)
    process = cluster.members[stopped[0]].process
    assert process is not None
    await asyncio.to_thread(process.wait, 30)
    cluster.start_member(stopped[0])
    return gap


async def scenario_pg_crash(cluster: BenchCluster) -> float:
    async def fault(primary: int) -> None:
        cluster.kill_postgres(primary)

    return await write_gap(cluster, fault, 1.0)


async def scenario_hard_kill(cluster: BenchCluster) -> float:
    killed: list[int] = []

    async def fault(primary: int) -> None:
        cluster.kill_member(primary)
        killed.append(primary)

    gap = await write_gap(cluster, fault, 1.0)
    cluster.start_member(killed[0])
    return gap


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def fencer_pid(cluster: BenchCluster, index: int) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agent.fencer" in cmd and str(cluster.members[index].run_dir).encode() in b" ".join(
            cmd
        ):
            return int(proc.name)
    return None


async def idle_usage(cluster: BenchCluster, seconds: float) -> dict[str, float]:
    await converge(cluster)
    pids = [m.process.pid for m in cluster.members if m.process is not None]
    before = {pid: cpu_ticks(pid) for pid in pids}
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    hz = os.sysconf("SC_CLK_TCK")
    cpu = [100.0 * (cpu_ticks(pid) - before[pid]) / hz / elapsed for pid in pids]
    rss = [rss_kb(pid) / 1024 for pid in pids]
    fencers = [p for i in range(len(cluster.members)) if (p := fencer_pid(cluster, i))]
    return {
        "agent_rss_mb_max": max(rss),
        "agent_cpu_pct_max": max(cpu),
        "fencer_rss_mb_max": max((rss_kb(p) / 1024 for p in fencers), default=0.0),
    }


async def floor_figures(cluster: LocalCluster) -> dict[str, float]:
    """Raw PostgreSQL operation times on this machine (no agent involved), for ratios."""
    primary = await converge(cluster)
    replica = (primary + 1) % len(cluster.members)
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=cluster.members[replica].pg_port,
        user="postgres",
        database="postgres",
    )
    try:
        t0 = time.monotonic()
        await conn.fetchval("SELECT pg_is_in_recovery()")
        rtt = time.monotonic() - t0
    finally:
        await conn.close()
    return {"sql_round_trip_s": rtt}


async def bootstrap_time(base: Path, kind: str = "pgwarden", dcs: str = "etcd") -> float:
    cluster = make_cluster(kind, base, dcs)
    try:
        if isinstance(cluster, LocalCluster) and cluster.dcs_kind == "kubernetes":
            cluster.start_apiserver()
        else:
            cluster.start_etcd()
        t0 = time.monotonic()
        for index in range(3):
            cluster.start_member(index)
        await converge(cluster, timeout=120)
        return time.monotonic() - t0
    finally:
        cluster.stop()


def summary(values: list[float]) -> dict[str, float | int]:
    return {
        "median_s": round(statistics.median(values), 3),
        "max_s": round(max(values), 3),
        "runs": len(values),
    }


DCS_OUTAGE_S = 30.0


async def _set_failsafe(cluster: BenchCluster, on: bool) -> None:
    """Switch failsafe mode through PATCH /config, then give the leader time to act on it
    (pgwarden writes its `failsafe` record within a cycle; Patroni within its loop_wait)."""
    async with aiohttp.ClientSession() as session:
        status, body = await cluster.patch_config(session, {"failsafe_mode": on})
    if status != 200:
        raise RuntimeError(f"PATCH /config failsafe_mode={on}: {status} {body}")
    loop_wait = (
        float(cluster.timing.get("loop_wait", 10))
        if isinstance(cluster, PatroniCluster)
        else float(DEFAULT_TIMING["loop_wait_s"])
    )
    await asyncio.sleep(2 * loop_wait + 1)


def scenario_dcs_outage(failsafe: bool) -> Callable[[BenchCluster], Awaitable[float]]:
    """The DCS frozen (SIGSTOP) for DCS_OUTAGE_S, with failsafe mode off or on."""

    async def run(cluster: BenchCluster) -> float:
        await _set_failsafe(cluster, failsafe)
        proc = (
            cluster.apiserver
            if isinstance(cluster, LocalCluster) and cluster.dcs_kind != "etcd"
            else cluster.etcd
        )
        assert proc is not None

        async def fault(primary: int) -> None:
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(DCS_OUTAGE_S)
            finally:
                os.kill(proc.pid, signal.SIGCONT)

        try:
            return await write_gap(cluster, fault, 2.0)
        finally:
            await _set_failsafe(cluster, False)

    return run


SCENARIOS: dict[str, Callable[[BenchCluster], Awaitable[float]]] = {
    "rest_switchover": scenario_switchover,
    "sigterm_handover": scenario_sigterm,
    "postgres_crash_under_leader": scenario_pg_crash,
    "hard_kill_primary": scenario_hard_kill,
    "dcs_outage_30s": scenario_dcs_outage(False),
    "dcs_outage_30s_failsafe": scenario_dcs_outage(True),
}


async def measure(kind: str, args: argparse.Namespace, root: Path) -> Report:
    """Every figure for one cluster kind: bootstrap, the scenarios, idle usage (and, for
    pgwarden, the raw PostgreSQL floor)."""
    results: dict[str, list[float]] = {}
    if not args.only or "bootstrap_3_members" in args.only:
        boots = []
        for run in range(args.runs):
            boots.append(await bootstrap_time(root / f"{kind}-boot-{run}", kind, args.dcs))
            print(f"[{kind}] bootstrap run {run + 1}: {boots[-1]:.2f}s", file=sys.stderr)
        results["bootstrap_3_members"] = boots
    cluster = make_cluster(kind, root / f"{kind}-main", args.dcs)
    floor: dict[str, float] = {}
    try:
        cluster.start()
        await converge(cluster, timeout=180 if isinstance(cluster, PatroniCluster) else 120)
        for name, scenario in SCENARIOS.items():
            if args.only and name not in args.only:
                continue
            values = []
            for run in range(args.runs):
                values.append(await scenario(cluster))
                print(f"[{kind}] {name} run {run + 1}: {values[-1]:.3f}s", file=sys.stderr)
            results[name] = values
        usage = await idle_usage(cluster, args.idle_seconds)
        if isinstance(cluster, LocalCluster):
            floor = await floor_figures(cluster)
    finally:
        cluster.stop()
    out: Report = {k: summary(v) for k, v in results.items()}
    out["idle"] = {k: round(v, 3) for k, v in usage.items()}
    if floor:
        out["floor"] = {k: round(v, 4) for k, v in floor.items()}
    return out


async def main_async(args: argparse.Namespace) -> tuple[Report, Report | None]:
    """pgwarden's report (unchanged by `--baseline`) and the baseline's, if one was asked."""
    if args.baseline != "none":
        # Install (or find) Patroni before spending minutes on pgwarden's part.
        await asyncio.to_thread(ensure_patroni)
    root = Path(tempfile.mkdtemp(prefix="pgwarden-bench-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        ours = await measure("pgwarden", args, root)
        baseline = None if args.baseline == "none" else await measure(args.baseline, args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return ours, baseline


def ratios(ours: Report, baseline: Report) -> dict[str, float]:
    """pgwarden median / baseline median per scenario (below 1: pgwarden is faster)."""
    out: dict[str, float] = {}
    for name, row in ours.items():
        other = baseline.get(name, {})
        if "median_s" in row and other.get("median_s"):
            out[name] = round(row["median_s"] / other["median_s"], 3)
    idle_ours, idle_base = ours.get("idle", {}), baseline.get("idle", {})
    for key in ("agent_rss_mb_max", "agent_cpu_pct_max"):
        if idle_base.get(key):
            out[f"idle_{key}"] = round(idle_ours[key] / idle_base[key], 3)
    return out


def render_baseline(ours: Report, baseline: Report, kind: str) -> str:
    label = BASELINE_LABEL[kind]
    timing = BASELINE_TIMING[kind]
    ratio = ratios(ours, baseline)
    lines = [
        f"Baseline: {label} 4.1.5 (ttl {timing['ttl']} s, loop_wait {timing['loop_wait']} s, "
        f"retry_timeout {timing['retry_timeout']} s), same run, same writer.",
        "",
        f"| scenario | pgwarden median s | pgwarden max s | {label} median s | {label} max s "
        "| ratio pgwarden/Patroni (median) | runs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in ours.items():
        if "median_s" not in row:
            continue
        other = baseline.get(name, {})
        ratio_text = f"{ratio[name]:.2f}" if name in ratio else "-"
        other_median = f"{other['median_s']:.2f}" if "median_s" in other else "-"
        other_max = f"{other['max_s']:.2f}" if "max_s" in other else "-"
        lines.append(
            f"| {name} | {row['median_s']:.2f} | {row['max_s']:.2f} | {other_median} | "
            f"{other_max} | {ratio_text} | {row['runs']} |"
        )
    idle, other_idle = ours.get("idle", {}), baseline.get("idle", {})
    lines.append("")
    lines.append(
        f"idle per agent (max of 3): pgwarden RSS {idle.get('agent_rss_mb_max', 0):.1f} MB, "
        f"CPU {idle.get('agent_cpu_pct_max', 0):.2f}%, fencer RSS "
        f"{idle.get('fencer_rss_mb_max', 0):.1f} MB; {label} RSS "
        f"{other_idle.get('agent_rss_mb_max', 0):.1f} MB, "
        f"CPU {other_idle.get('agent_cpu_pct_max', 0):.2f}%"
    )
    return "\n".join(lines)


# docs/facts.md, "The anchor, measured": Patroni 4.1.5, defaults 30/10/10, medians of 5 (not
# this run).
PATRONI_DEFAULTS = {
    "rest_switchover": 2.5,
    "postgres_crash_under_leader": 8.3,
    "hard_kill_primary": 21.5,
    "bootstrap_3_members": 8.2,
}


def render(out: dict[str, dict[str, float | int]]) -> str:
    lines = [
        "| scenario | median s | max s | runs | Patroni defaults s (docs/facts.md) | ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in out.items():
        if "median_s" not in row:
            continue
        patroni = PATRONI_DEFAULTS.get(name)
        ratio = f"{row['median_s'] / patroni:.2f}" if patroni else "-"
        lines.append(
            f"| {name} | {row['median_s']:.2f} | {row['max_s']:.2f} | {row['runs']} | "
            f"{patroni if patroni else '-'} | {ratio} |"
        )
    idle = out.get("idle", {})
    lines.append("")
    lines.append(
        f"idle per agent: RSS {idle.get('agent_rss_mb_max', 0):.1f} MB (max of 3), "
        f"CPU {idle.get('agent_cpu_pct_max', 0):.2f}% (max of 3); fencer RSS "
        f"{idle.get('fencer_rss_mb_max', 0):.1f} MB"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- synchronous modes

SYNC_MODES = ("off", "on", "quorum")


async def _view(cluster: LocalCluster) -> dict[str, object]:
    async with aiohttp.ClientSession() as session:
        return await cluster.cluster_json(session) or {}


async def sync_settle(cluster: LocalCluster, mode: str) -> int:
    """Converged, and the leader's `sync` record names what `mode` asks (0, 1 or 2 standbys)."""
    want = {"off": 0, "on": 1, "quorum": 2}[mode]
    primary = await converge(cluster)

    async def ready() -> bool:
        view = await _view(cluster)
        sync = view.get("sync")
        members = sync.get("members") if isinstance(sync, dict) else []
        if want == 0:
            return sync is None or members == []
        listed = view.get("members")
        roles = (
            [m.get("sync_role") for m in listed if isinstance(m, dict)]
            if isinstance(listed, list)
            else []
        )
        # The record alone may be the widened one written before PostgreSQL's setting
        # changed: also require the leader's PostgreSQL to report that many synchronous.
        return (
            isinstance(sync, dict)
            and sync.get("leader") == view.get("leader")
            and isinstance(members, list)
            and len(members) == want
            and sum(1 for r in roles if r in ("sync", "quorum")) == want
        )

    await wait_until(ready, timeout=90, what=f"synchronous set for {mode}")
    return await converge(cluster) if want else primary


async def set_mode(cluster: LocalCluster, mode: str) -> None:
    primary = await converge(cluster)
    async with (
        aiohttp.ClientSession() as session,
        session.patch(
            cluster.members[primary].api_url + "/config",
            json={"synchronous_mode": mode, "synchronous_node_count": 1},
            headers={"Authorization": f"Bearer {cluster.token}"},
        ) as resp,
    ):
        if resp.status != 200:
            raise RuntimeError(f"PATCH /config refused: {resp.status} {await resp.text()}")


async def commit_latencies(port: int, count: int) -> list[float]:
    """Seconds per single-row INSERT (autocommit) on one connection to the primary."""
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres")
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_commit (id bigint, at timestamptz)")
        for i in range(20):  # warm up the connection and the statement
            await conn.execute("INSERT INTO bench_commit VALUES ($1, now())", i)
        out = []
        for i in range(count):
            t0 = time.perf_counter()
            await conn.execute("INSERT INTO bench_commit VALUES ($1, now())", i)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        await conn.close()


async def sync_hard_kill(cluster: LocalCluster, mode: str) -> tuple[float, int]:
    """Write gap of a SIGKILL of the primary, and acknowledged commits the new primary lacks."""
    primary = await sync_settle(cluster, mode)
    await ensure_table("127.0.0.1", cluster.members[primary].pg_port)
    app = BenchAppWriter(
        hosts=[("127.0.0.1", m.pg_port) for m in cluster.members],
        interval_s=0.01,
        start_value=int(time.time() * 1000) % 10**12,
    )
    app.start()
    await asyncio.sleep(1.5)
    t0 = time.monotonic()
    cluster.kill_member(primary)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (
            app.log.first_ack_after(time.monotonic() - 0.2) is not None
            and time.monotonic() > t0 + 1
        ):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    log = await app.stop()
    gap = log.longest_gap(t0, time.monotonic())
    async with aiohttp.ClientSession() as session:
        new = await cluster.primary_index(session)
    lost = -1
    if new is not None:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=cluster.members[new].pg_port,
            user="postgres",
            database="postgres",
        )
        try:
            rows = await conn.fetch("SELECT value FROM pgwarden_probe")
        finally:
            await conn.close()
        lost = len(log.acked_values() - {int(r["value"]) for r in rows})
    cluster.start_member(primary)
    return gap, lost


async def measure_sync(args: argparse.Namespace, root: Path) -> dict[str, dict[str, float]]:
    modes = SYNC_MODES if args.sync_mode == "all" else (args.sync_mode,)
    cluster = LocalCluster(base=root / "sync", size=3, timing=dict(DEFAULT_TIMING))
    out: dict[str, dict[str, float]] = {}
    try:
        cluster.start()
        await converge(cluster, timeout=120)
        for mode in modes:
            await set_mode(cluster, mode)
            primary = await sync_settle(cluster, mode)
            lat = sorted(await commit_latencies(cluster.members[primary].pg_port, args.commits))
            kills = []
            for run in range(args.runs):
                kills.append(await sync_hard_kill(cluster, mode))
                print(f"[sync {mode}] hard kill run {run + 1}: {kills[-1]}", file=sys.stderr)
            switch = []
            for run in range(args.runs):
                await sync_settle(cluster, mode)
                switch.append(await scenario_switchover(cluster))
                print(f"[sync {mode}] switchover run {run + 1}: {switch[-1]:.3f}", file=sys.stderr)
            out[mode] = {
                "commit_ms_median": round(statistics.median(lat) * 1000, 3),
                "commit_ms_p95": round(lat[int(len(lat) * 0.95) - 1] * 1000, 3),
                "hard_kill_gap_s_median": round(statistics.median(g for g, _ in kills), 3),
                "hard_kill_gap_s_max": round(max(g for g, _ in kills), 3),
                "hard_kill_lost_total": sum(max(lost, 0) for _, lost in kills),
                "hard_kill_lost_max": max(lost for _, lost in kills),
                "switchover_gap_s_median": round(statistics.median(switch), 3),
                "runs": args.runs,
            }
    finally:
        cluster.stop()
    return out


def render_sync(out: dict[str, dict[str, float]]) -> str:
    base = out.get("off", {}).get("commit_ms_median")
    lines = [
        "| synchronous_mode | commit ms median | commit ms p95 | vs off | hard kill gap s "
        "median (max) | acked commits lost on hard kill (total, worst run) | switchover gap s "
        "median | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, row in out.items():
        ratio = f"{row['commit_ms_median'] / base:.2f}x" if base else "-"
        lines.append(
            f"| {mode} | {row['commit_ms_median']:.3f} | {row['commit_ms_p95']:.3f} | {ratio} | "
            f"{row['hard_kill_gap_s_median']:.2f} ({row['hard_kill_gap_s_max']:.2f}) | "
            f"{row['hard_kill_lost_total']:.0f}, {row['hard_kill_lost_max']:.0f} | "
            f"{row['switchover_gap_s_median']:.2f} | {row['runs']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sync-mode",
        choices=[*SYNC_MODES, "all"],
        default=None,
        help="measure synchronous replication in this mode (all: off, on, quorum) instead",
    )
    parser.add_argument("--commits", type=int, default=500, help="INSERTs per latency sample")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=["bootstrap_3_members", *SCENARIOS],
        metavar="SCENARIO",
        help="run only these scenarios (bootstrap_3_members included); default: all",
    )
    parser.add_argument(
        "--dcs",
        choices=list(PGWARDEN_DCS),
        default="etcd",
        help="pgwarden's DCS: etcd, or the Kubernetes API (the in-tree test API server) with "
        "the Endpoints or the Lease lock",
    )
    parser.add_argument(
        "--baseline",
        choices=["none", *BASELINE_TIMING],
        default="none",
        help="also run every scenario on a Patroni 4.1.5 cluster in this run (default: none)",
    )
    args = parser.parse_args()
    if args.sync_mode is not None:
        root = Path(tempfile.mkdtemp(prefix="pgwarden-bench-sync-", dir="/tmp"))
        os.chmod(root, 0o755)
        try:
            sync_out = asyncio.run(measure_sync(args, root))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(json.dumps(sync_out, indent=2) if args.json else render_sync(sync_out))
        return 0
    load_before = os.getloadavg()[0]
    ours, baseline = asyncio.run(main_async(args))
    load_after = os.getloadavg()[0]
    if args.json:
        doc: dict[str, object] = dict(ours)
        if baseline is not None:
            doc["baseline"] = {
                "kind": args.baseline,
                "timing": BASELINE_TIMING[args.baseline],
                "results": baseline,
            }
            doc["ratio_pgwarden_over_baseline"] = ratios(ours, baseline)
        doc["load_1m"] = {"start": load_before, "end": load_after}
        print(json.dumps(doc, indent=2))
    elif baseline is not None:
        print(render_baseline(ours, baseline, args.baseline))
        print(f"load average (1 min): {load_before:.2f} at start, {load_after:.2f} at end")
    else:
        print(render(ours))
    return 0


if __name__ == "__main__":
    sys.exit(main())
