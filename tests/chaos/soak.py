"""The soak (issue 16 item 4): a healthy cluster starved of CPU and I/O, with no fault injected.

For each timing profile (ttl 6 s and the agent's default), a 3-member chaos cluster (network
namespaces, 3 etcd members, asynchronous replication; tests/chaos/cluster.py) runs the chaos
workload (an application writer and one writer per member, 20 inserts a second each) while
`stress-ng` keeps every core busy and adds I/O workers, for the given number of minutes. Since
nothing is injected, every leader change is a false failover and every fencing or demotion
stopped a healthy primary. Counted from the agents' logs (lease_acquired, fenced, demoting,
postgres_killed, renew_failed, DCS errors, agent restarts), from etcd (member records that
disappeared: a member whose lease expired while its agent ran, polled twice a second from
an etcd member's JSON gateway) and from the workload (longest
write gap, acknowledged writes lost, split-brain instants); the agents' HA cycle durations
come from their `ha_cycle` events, and their responsiveness from a `/health` poll of every
member twice a second (the agent exposes no event-loop lag of its own).

    python -m tests.chaos.soak --minutes 30 [--profiles 6,default] [--report docs/chaos-report]

prints the table and, with --report, writes it into the chaos report's soak section
(tests/chaos/soak_report.py). Needs root (namespaces). `make chaos` runs it after the pytest
profiles for CHAOS_SOAK_MINUTES (default 30; 0 skips it); `make test` never does (not a test
module). Exit status 1 when an acknowledged write was lost or two members took writes at
once; false failovers and fencings are figures to judge, not failures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp

from agent.settings import Timing
from tests.chaos import agentlogs, netns, soak_report
from tests.chaos.cluster import QUICK_TIMING, ChaosCluster
from tests.chaos.nemesis import Nemesis, heal_all
from tests.chaos.runner import Runner, ScenarioResult
from tests.chaos.soak_report import SoakRow

CORE = ("ttl_s", "loop_wait_s", "retry_timeout_s", "fence_margin_s")
# The profiles: ttl 6 with the quick chaos profile's timings (what the chaos suite runs), the
# agent's defaults (read from agent.settings, so the soak follows a change of default).
PROFILES: dict[str, dict[str, float]] = {
    "6": {k: QUICK_TIMING[k] for k in CORE},
    "default": {k: float(getattr(Timing(), k)) for k in CORE},
    # The default before ttl 6 (issue 16's 0.01-CPU loss was found at it).
    "10": {"ttl_s": 10.0, "loop_wait_s": 2.0, "retry_timeout_s": 3.0, "fence_margin_s": 2.0},
}
# Every core busy (0 = one worker per online CPU), one sync() loop, one writer of a 256 MB
# file on the filesystem of the data directories.
STRESS = "--cpu 0 --io 1 --hdd 1 --hdd-bytes 256M"
POLL_S = 0.5  # the /health poll period
API_TIMEOUT_S = 10.0
CONVERGE_BOUND_S = 60.0
NOTED_EVENTS = 8  # stopping events listed per profile


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile `q` (0-100) of `values`; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def profile_label(timing: dict[str, float]) -> str:
    t = timing
    return (
        f"ttl {t['ttl_s']:g} / loop {t['loop_wait_s']:g} / retry {t['retry_timeout_s']:g} "
        f"/ margin {t['fence_margin_s']:g}"
    )


@dataclass(slots=True)
class Starvation:
    """The soak's 'fault': stress-ng in the host's own namespace (CPU and I/O are the
    machine's), its temporary files in the cluster's directory; stopped (its whole process
    group) at the heal, and by its own --timeout if the harness dies first."""

    args: str
    hold_s: float
    # The cluster's processes (agents, PostgreSQL, etcd: every thread in the member and etcd
    # namespaces) run at this nice value while the stress lasts: 0 competes with stress-ng
    # as equals; above 0 gives them a smaller CPU share than the stress (a noisy neighbour
    # with more weight), without starving the machine's other processes any further.
    cluster_nice: int = 0
    # CPUs each member host (agent, fencer, PostgreSQL; not etcd) may use while the stress
    # lasts, as a container's CPU limit does: a cgroup (v1 `cpu`) quota per 100 ms period,
    # after which its processes wait for the next period. 0: no quota.
    cpu_quota: float = 0.0
    # With a quota: each member's fencer moved to a cgroup of its own at this many CPUs, as
    # the fencer sidecar of k8s/examples/fencer-sidecar runs (0: it shares the member's).
    fencer_cpus: float = 0.0
    quotas: list[Path] = field(default_factory=list)
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def inject(self, cluster: ChaosCluster, primary: int) -> str:
        self.log = cluster.base / "stress-ng.log"
        argv = [
            "stress-ng",
            *shlex.split(self.args),
            "--temp-path",
            str(cluster.base),
            "--timeout",
            f"{math.ceil(self.hold_s) + 30}s",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        if self.cluster_nice:
            renice(cluster, self.cluster_nice)
        if self.cpu_quota:
            self.quotas = [limit_cpu(cluster, key, self.cpu_quota) for key in cluster.member_keys]
        if self.cpu_quota and self.fencer_cpus:
            self.quotas += [
                limit_cpu(cluster, key, self.fencer_cpus, only=b"agent.fencer")
                for key in cluster.member_keys
            ]
        return f"stress-ng {self.args} for {self.hold_s:g} s (no fault)"

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)

    def heal(self, cluster: ChaosCluster) -> None:
        self.stop()
        if self.cluster_nice:
            renice(cluster, 0)
        while self.quotas:
            unlimit_cpu(self.quotas.pop())
        heal_all(cluster)


CPU_CGROUPS = Path("/sys/fs/cgroup/cpu")  # cgroup v1, as on these machines
CFS_PERIOD_US = 100_000


def limit_cpu(cluster: ChaosCluster, key: str, cpus: float, only: bytes = b"") -> Path:
    """Move every process of host `key`'s namespace (whose command line holds `only`) into a
    new cgroup allowed `cpus` CPUs (children forked later stay in it). Returns the cgroup,
    for `unlimit_cpu`. A fencer respawned later is the agent's child: in the agent's group."""
    group = (
        CPU_CGROUPS / f"{cluster.network.hosts[key].netns}-soak{'-' if only else ''}{only.decode()}"
    )
    group.mkdir(exist_ok=True)
    (group / "cpu.cfs_period_us").write_text(f"{CFS_PERIOD_US}\n")
    (group / "cpu.cfs_quota_us").write_text(f"{int(cpus * CFS_PERIOD_US)}\n")
    listed = netns.run("ip", "netns", "pids", cluster.network.hosts[key].netns, check=False)
    for word in listed.stdout.split():
        with contextlib.suppress(OSError):
            if only in Path(f"/proc/{int(word)}/cmdline").read_bytes():
                (group / "cgroup.procs").write_text(f"{int(word)}\n")
    return group


def unlimit_cpu(group: Path) -> None:
    """Move the cgroup's processes back to the root cgroup and remove it."""
    with contextlib.suppress(OSError):
        for word in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (CPU_CGROUPS / "cgroup.procs").write_text(f"{word}\n")
    with contextlib.suppress(OSError):
        group.rmdir()


def renice(cluster: ChaosCluster, nice: int) -> int:
    """Set every thread of every process in the cluster's member and DCS namespaces to `nice`
    (Linux nice values are per thread; threads made later inherit their creator's, and
    PostgreSQL backends the postmaster's). Returns how many threads were set."""
    done = 0
    for key in [*cluster.member_keys, *cluster.dcs_keys]:
        listed = netns.run("ip", "netns", "pids", cluster.network.hosts[key].netns, check=False)
        for word in listed.stdout.split():
            with contextlib.suppress(OSError, ValueError):
                for task in os.listdir(f"/proc/{int(word)}/task"):
                    with contextlib.suppress(OSError):
                        os.setpriority(os.PRIO_PROCESS, int(task), nice)
                        done += 1
    return done


# The member records in etcd (tests/chaos/cluster.py: namespace pgwarden, cluster chaos).
MEMBERS_PREFIX = b"/pgwarden/chaos/members/"


def member_expiries(
    samples: Sequence[tuple[float, frozenset[str]]],
) -> tuple[int, float, tuple[str, ...]]:
    """From (monotonic time, member records present) samples in time order: how many times a
    member's record disappeared after it had been seen (its lease expired or it was
    deleted), the longest absence in seconds (to the sample that saw it again, or to the
    last sample), and one "<member> absent <s> s" note per disappearance."""
    seen: set[str] = set()
    gone: dict[str, float] = {}
    count, longest, notes = 0, 0.0, []
    for at, present in samples:
        for name in sorted(seen - present):
            if name not in gone:
                gone[name] = at
                count += 1
        for name in sorted(present & set(gone)):
            absent = at - gone.pop(name)
            longest = max(longest, absent)
            notes.append(f"{name} absent {absent:.1f} s")
        seen |= present
    if samples:
        end = samples[-1][0]
        for name, since in sorted(gone.items()):
            longest = max(longest, end - since)
            notes.append(f"{name} absent {end - since:.1f} s (at the end)")
    return count, longest, tuple(notes)


@dataclass(slots=True)
class Poller:
    """GET /health of every member every POLL_S (answer times), the load average, and the
    member records present in etcd (read from an etcd member's JSON gateway, each poll)."""

    cluster: ChaosCluster
    api_s: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    members: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _members(self, session: aiohttp.ClientSession) -> None:
        """The names under MEMBERS_PREFIX now, from the first etcd member that answers;
        no sample when none does (an unreadable DCS is not an absence)."""
        end = MEMBERS_PREFIX[:-1] + bytes([MEMBERS_PREFIX[-1] + 1])
        body = {
            "key": base64.b64encode(MEMBERS_PREFIX).decode(),
            "range_end": base64.b64encode(end).decode(),
            "keys_only": True,
        }
        at = time.monotonic()
        for node in self.cluster.etcd:
            try:
                async with session.post(
                    node.client_url + "/v3/kv/range",
                    json=body,
                    timeout=aiohttp.ClientTimeout(total=API_TIMEOUT_S),
                ) as resp:
                    found = await resp.json()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            keys = [base64.b64decode(kv["key"]) for kv in found.get("kvs", [])]
            names = frozenset(k[len(MEMBERS_PREFIX) :].decode() for k in keys)
            self.members.append((at, names))
            return

    async def _one(self, session: aiohttp.ClientSession, url: str) -> None:
        started = time.monotonic()
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(
                url + "/health", timeout=aiohttp.ClientTimeout(total=API_TIMEOUT_S)
            ) as resp:
                await resp.read()
        self.api_s.append(time.monotonic() - started)

    async def run(self) -> None:
        """Two loops: the /health round (as slow as its slowest answer, up to API_TIMEOUT_S)
        and the etcd member records, each every POLL_S: a member whose agent does not answer
        must not slow the record samples down (its record is what expires)."""
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(self._loop(session, health=True), self._loop(session))

    async def _loop(self, session: aiohttp.ClientSession, *, health: bool = False) -> None:
        while not self._stop.is_set():
            if health:
                self.loads.append(os.getloadavg()[0])
                await asyncio.gather(*(self._one(session, m.api_url) for m in self.cluster.members))
            else:
                await self._members(session)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_S):
                    await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()


@dataclass(frozen=True, slots=True, kw_only=True)
class Load:
    """What starves the cluster: stress-ng's arguments, the cluster's nice value, and a CPU
    quota per member host (0: none)."""

    stress: str = STRESS
    nice: int = 0
    cpu_quota: float = 0.0
    fencer_cpus: float = 0.0

    @property
    def label(self) -> str:
        return (
            self.stress
            + (f"; the cluster at nice {self.nice}" if self.nice else "")
            + (f"; {self.cpu_quota:g} CPU per member" if self.cpu_quota else "")
            + (f", its fencer apart at {self.fencer_cpus:g}" if self.fencer_cpus else "")
        )


def soak_row(
    *,
    timing: dict[str, float],
    minutes: float,
    result: ScenarioResult,
    lines: list[agentlogs.Line],
    api_s: Sequence[float],
    loads: Sequence[float],
    stress: str,
    t_start_wall: float,
    members: Sequence[tuple[float, frozenset[str]]] = (),
) -> SoakRow:
    """The figures of one profile's run from what it recorded (pure)."""

    def count(*names: str) -> int:
        return len(agentlogs.events(lines, names))

    cycles = agentlogs.cycle_durations_s(lines)
    stopping = [
        f"+{_offset(line, t_start_wall)} {member}: {line['event']}"
        for member, line in sorted(lines, key=lambda ml: str(ml[1].get("timestamp", "")))
        if line.get("event") in agentlogs.STOPPING_EVENTS
    ]
    expiries, absent_s, absences = member_expiries(members)
    return SoakRow(
        profile=profile_label(timing),
        ttl_s=timing["ttl_s"],
        minutes=round(minutes, 2),
        false_failovers=count("lease_acquired"),
        stops=count("fenced", "demoting", "postgres_killed"),
        renew_failures=count("renew_failed"),
        dcs_errors=count("dcs_unavailable", "dcs_lease_lost"),
        agent_restarts=count("agent_starting"),
        longest_write_gap_s=round(result.write_unavailability_s, 3),
        cycle_p99_s=round(percentile(cycles, 99), 3),
        cycle_max_s=round(max(cycles, default=0.0), 3),
        api_p99_s=round(percentile(api_s, 99), 3),
        api_max_s=round(max(api_s, default=0.0), 3),
        acked=result.acked,
        lost=result.lost,
        split_brain=len(result.split_brain),
        load_avg=round(sum(loads) / len(loads), 1) if loads else 0.0,
        stress=stress,
        measured=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t_start_wall)),
        events=(
            *stopping[:NOTED_EVENTS],
            *(f"member record {x}" for x in absences[:NOTED_EVENTS]),
            *(f"lost {x}" for x in result.lost_examples[:3]),
        ),
        member_expiries=expiries if members else None,
        member_absent_max_s=round(absent_s, 2),
    )


def _offset(line: dict[str, object], t_start_wall: float) -> str:
    """Seconds from the start of the stress to a log line (its ISO UTC timestamp)."""
    try:
        stamp = datetime.fromisoformat(str(line.get("timestamp", ""))).timestamp()
    except ValueError:
        return "?"
    return f"{stamp - t_start_wall:.0f}s"


async def soak_once(
    cluster: ChaosCluster, timing: dict[str, float], minutes: float, load: Load
) -> SoakRow:
    """One profile's run on a started cluster (the thread is in its client namespace)."""
    runner = Runner(cluster=cluster, converge_bound_s=CONVERGE_BOUND_S, suffix=" [soak]")
    await runner.ready()  # bootstrap's own lease_acquired/promoted are not the soak's
    sizes = agentlogs.log_sizes(cluster)
    starvation = Starvation(
        args=load.stress,
        hold_s=minutes * 60,
        cluster_nice=load.nice,
        cpu_quota=load.cpu_quota,
        fencer_cpus=load.fencer_cpus,
    )
    nemesis = Nemesis(
        name="starvation",
        inject=starvation.inject,
        heal=starvation.heal,
        hold_s=starvation.hold_s,
        must_not_lose=True,
        same_primary=True,
    )
    poller = Poller(cluster=cluster)
    polling = asyncio.create_task(poller.run(), name="soak-poller")
    t_start_wall = time.time()
    try:
        result = await runner.run(nemesis)
    finally:
        starvation.stop()
        poller.stop()
        await polling
    return soak_row(
        timing=timing,
        minutes=minutes,
        result=result,
        lines=agentlogs.lines_since(cluster, sizes),
        api_s=poller.api_s,
        loads=poller.loads,
        stress=load.label,
        t_start_wall=t_start_wall,
        members=poller.members,
    )


def run_profile(name: str, minutes: float, load: Load) -> SoakRow:
    timing = dict(PROFILES[name])
    cluster = ChaosCluster(timing=timing)
    keep = False
    try:
        cluster.start()
        with netns.entered(cluster.client.netns):
            row = asyncio.run(soak_once(cluster, timing, minutes, load))
        keep = bool(row.lost or row.split_brain)
        return row
    finally:
        cluster.stop()
        if keep or os.environ.get("CHAOS_KEEP"):
            print(f"kept {cluster.base} for inspection", file=sys.stderr)
        else:
            cluster.remove_files()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0, help="per profile")
    parser.add_argument("--profiles", default="6,default", help=f"of {', '.join(PROFILES)}")
    parser.add_argument("--stress", default=STRESS, help="stress-ng's arguments")
    parser.add_argument(
        "--cluster-nice", type=int, default=0, help="the cluster's nice value under the stress"
    )
    parser.add_argument(
        "--cpu-quota", type=float, default=0.0, help="CPUs per member host (cgroup quota)"
    )
    parser.add_argument(
        "--fencer-cpus",
        type=float,
        default=0.0,
        help="with --cpu-quota: each fencer in a cgroup of its own at this many CPUs (a sidecar)",
    )
    parser.add_argument("--report", default="", help="report path stem (docs/chaos-report)")
    args = parser.parse_args(argv)
    names = [p.strip() for p in args.profiles.split(",") if p.strip()]
    unknown = [n for n in names if n not in PROFILES]
    if unknown or not names or args.minutes <= 0:
        parser.error(f"--profiles from {', '.join(PROFILES)} and --minutes > 0 (got {args})")
    why = netns.probe_support()
    if why is not None:
        print(f"soak skipped: {why}", file=sys.stderr)
        return 2
    netns.cleanup_leftovers()
    load = Load(
        stress=args.stress,
        nice=args.cluster_nice,
        cpu_quota=args.cpu_quota,
        fencer_cpus=args.fencer_cpus,
    )
    rows = [run_profile(n, args.minutes, load) for n in names]
    print(soak_report.section(rows))
    if args.report:
        soak_report.write(Path(args.report), rows)
    return 1 if any(r.lost != 0 or r.split_brain for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
