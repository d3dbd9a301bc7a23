"""The random mix's pool, its draws and its per-fault figures (`make chaos`, test_long.py).

The pool is every nemesis of `nemeses()` plus the gray faults of issue 16: the storage hang
and the full disk of the primary, the full disk of a replica then the primary's death, a
slow network around the primary (0.5 s round trip: below the quick timings' request bound,
no failover expected; 2 s: above it, the primary cannot renew and is replaced), a ±1 hour
step of one member's agent's wall clock (primary or replica), and a replica's WAL receiver
stuck on a peer that never answers (tests/chaos/stuck_peer.py; the mix's cluster has the
quick cluster's short `ha.wal_receiver_stall_s`, so the watchdog frees it). Every one of
them can be drawn on one cluster flavour, conftest.py `mix_runner`: each data directory on a
FUSE store, every member's connections through a delaying proxy, every agent on a steppable
wall clock. The OOM-killed backend and the agent restart loop are in `nemeses()` already. Not
drawn: the async-load-hard-kill runs (a measurement with its own pgbench table of ~0.5 GB per
run, not a fault; test_gray.py reports them).

Draws come from a shuffled deck (`Deck`): every nemesis once, in random order, then a new
shuffle. A uniform draw with 25 nemeses and ~20 faults per quarter hour leaves each one
undrawn with probability 0.44; the deck draws each once per pass.

Per fault, `MixFault` keeps its instants and the primary before and after; once the mix is
checked, `settle()` adds the write gap it caused and the acknowledged writes lost that were
acknowledged in its window (after the previous fault's convergence, up to its own): a write a
primary acknowledged is lost at the failover that replaces it, so the window of the fault
that made that failover holds it.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tests.chaos import checker
from tests.chaos.cluster import ChaosCluster
from tests.chaos.nemesis import (
    Nemesis,
    heal_all,
    nemeses,
    primary_disk_full,
    replica_disk_full,
    slow_network,
    storage_hang,
)
from tests.chaos.nemesis_hunt import one_way_partitions, packet_loss, slow_fsync, stale_etcd_members
from tests.chaos.stuck_peer import receiver_stuck
from tests.chaos.workload import Attempt

CLOCK_STEP_S = 3600.0
# Round trips of the mix's slow networks at the quick timings (a request may take 1.35 s).
MIX_SLOW_RTTS_S = (0.5, 2.0)
# The gray nemeses of the pool (names), for the unit test and docs.
GRAY_NAMES = (
    "primary-storage-hang",
    "primary-disk-full",
    "replica-disk-full-then-primary-killed",
    "slow-network-0.5s",
    "slow-network-2s",
    "primary-clock-step-1h",
    "replica-clock-step-1h",
    "primary-backend-oom-killed",
    "agent-restart-loop",
    "replica-receiver-stuck",
)
# The hunt's faults the mix draws (tests/chaos/nemesis_hunt.py; all of them run in
# test_hunt.py): the one-way cuts from the DCS, loss on the DCS and replication links, an
# etcd member cut from its quorum under the primary or with it, slow fsyncs below and above
# the commit bound.
HUNT_NAMES = (
    "primary-to-dcs-dropped",
    "dcs-to-primary-dropped",
    "primary-dcs-loss-40",
    "primary-replication-loss-30",
    "stale-etcd-member-under-primary",
    "primary-with-stale-etcd-member",
    "slow-fsync-200ms",
    "slow-fsync-1000ms",
)


@dataclass(slots=True)
class _ClockStep:
    """A step of one member's agent's wall clock, +1 h on odd draws and -1 h on even ones
    (tests/chaos/stepped_clock.py; monotonic time does not move); the heal steps it back."""

    role: str  # "primary" or "replica"
    draws: int = 0

    def inject(self, cluster: ChaosCluster, primary: int) -> str:
        index = primary if self.role == "primary" else (primary + 1) % len(cluster.members)
        sign = 1.0 if self.draws % 2 == 0 else -1.0
        self.draws += 1
        cluster.step_wall_clock(index, sign * CLOCK_STEP_S)
        return (
            f"the wall clock of {cluster.members[index].name}'s agent ({self.role}) stepped "
            f"{'+' if sign > 0 else '-'}{CLOCK_STEP_S / 3600:g} h"
        )

    def heal(self, cluster: ChaosCluster) -> None:
        for index in range(len(cluster.members)):
            if cluster.members[index].clock_offset.exists():
                cluster.step_wall_clock(index, 0.0)
        heal_all(cluster)


def clock_step(role: str, ttl_s: float) -> Nemesis:
    """Held past a ttl: a lease renewed under the step must still hold (no failover)."""
    step = _ClockStep(role=role)
    return Nemesis(
        name=f"{role}-clock-step-1h",
        inject=step.inject,
        heal=step.heal,
        hold_s=ttl_s + 3.0,
        must_not_lose=True,
        same_primary=True,
        quick=False,
    )


def mix_pool(ttl_s: float) -> list[Nemesis]:
    """Every nemesis the mix draws from (needs a cluster with conftest.py `mix_runner`)."""
    slow = [slow_network(rtt, hold_s=ttl_s + 5.0) for rtt in MIX_SLOW_RTTS_S]
    # At the quick timings a 2 s round trip outlasts a request: the primary cannot renew
    # and is replaced (docs/chaos.md finding 11), which the mix allows.
    slow = [
        n if rtt < 1.35 else dataclasses.replace(n, same_primary=False, must_not_lose=False)
        for n, rtt in zip(slow, MIX_SLOW_RTTS_S, strict=True)
    ]
    hunt = [
        *one_way_partitions(ttl_s),
        packet_loss("dcs", 0.4, ttl_s + 5.0),
        packet_loss("replication", 0.3, ttl_s + 5.0),
        *stale_etcd_members(ttl_s)[0],
        slow_fsync(200.0, ttl_s + 5.0, same_primary=True),
        slow_fsync(1000.0, ttl_s + 5.0, same_primary=False),
    ]
    return [
        *nemeses(ttl_s),
        *(n for n in hunt if n.name in HUNT_NAMES),
        storage_hang(ttl_s),
        primary_disk_full(ttl_s),
        replica_disk_full(ttl_s)[0],
        *slow,
        clock_step("primary", ttl_s),
        clock_step("replica", ttl_s),
        receiver_stuck()[0],
    ]


@dataclass(slots=True)
class Deck:
    """Every nemesis of the pool once per pass, in an order shuffled by `rng`."""

    pool: Sequence[Nemesis]
    rng: random.Random
    left: list[Nemesis] = field(default_factory=list)

    def draw(self) -> Nemesis:
        if not self.left:
            self.left = list(self.pool)
            self.rng.shuffle(self.left)
        return self.left.pop()


@dataclass(frozen=True, slots=True, kw_only=True)
class MixFault:
    name: str
    description: str
    at: float  # monotonic: the fault's first instant
    settled: float  # monotonic: converged again after the heal (or gave up)
    converge_s: float | None  # None: no convergence within the bound
    primary_before: str
    primary_after: str | None
    must_not_lose: bool
    same_primary: bool
    gap_s: float = 0.0  # filled by `settle`
    lost: int = 0  # filled by `settle`

    @property
    def failed_over(self) -> bool:
        return self.primary_after is not None and self.primary_after != self.primary_before

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "converge_s": None if self.converge_s is None else round(self.converge_s, 2),
            "primary_before": self.primary_before,
            "primary_after": self.primary_after,
            "failed_over": self.failed_over,
            "must_not_lose": self.must_not_lose,
            "same_primary": self.same_primary,
            "gap_s": round(self.gap_s, 3),
            "lost": self.lost,
        }


def settle(
    faults: Sequence[MixFault], attempts: Sequence[Attempt], lost: Iterable[Attempt], end: float
) -> list[MixFault]:
    """Each fault with its write gap and the lost writes acknowledged in its window."""
    gaps = checker.gaps_after(attempts, writer="app", instants=[f.at for f in faults], end=end)
    lost_at = sorted(a.ended for a in lost)
    out = []
    start = float("-inf")
    for fault, gap in zip(faults, gaps, strict=True):
        stop = fault.settled if fault is not faults[-1] else float("inf")
        count = sum(1 for t in lost_at if start < t <= stop)
        out.append(dataclasses.replace(fault, gap_s=gap, lost=count))
        start = stop
    return out


def violations(faults: Iterable[MixFault], *, sync: bool) -> list[str]:
    """What a fault did that its nemesis forbids: a loss (must_not_lose, or any in
    synchronous mode), a failover (same_primary)."""
    found = []
    for f in faults:
        if f.lost and (f.must_not_lose or sync):
            found.append(f"{f.name} ({f.description}): {f.lost} acknowledged writes lost")
        if f.same_primary and f.failed_over:
            found.append(
                f"{f.name} ({f.description}): failover {f.primary_before} -> {f.primary_after}"
            )
    return found


def section(details: Sequence[dict[str, object]]) -> list[str]:
    """Markdown: per random-mix run, its faults grouped by nemesis (draws, write gap and
    convergence median / max, failovers, lost writes)."""
    lines: list[str] = []
    for run in details:
        raw = run.get("mix_faults")
        faults = [f for f in raw if isinstance(f, dict)] if isinstance(raw, list) else []
        if not faults:
            continue
        lines += [
            "",
            f"Faults of {run.get('scenario')} by nemesis (median / max over its draws; "
            "write gap: the longest stretch without an acknowledged application write from "
            "the last ack before the fault to the next fault; lost: acknowledged writes "
            "missing at the end that were acknowledged in the fault's window):",
            "",
            "| nemesis | draws | write gap | converge | failovers | lost |",
            "|---|---:|---|---|---:|---:|",
        ]
        by_name: dict[str, list[dict[str, object]]] = {}
        for fault in faults:
            by_name.setdefault(str(fault.get("name")), []).append(fault)
        for name, drawn in sorted(by_name.items()):
            gaps = [float(str(f.get("gap_s") or 0)) for f in drawn]
            converge = [float(str(c)) for f in drawn if (c := f.get("converge_s")) is not None]
            lines.append(
                f"| {name} | {len(drawn)} | {median_max(gaps)} | {median_max(converge)} "
                f"| {sum(1 for f in drawn if f.get('failed_over'))} "
                f"| {sum(int(str(f.get('lost') or 0)) for f in drawn)} |"
            )
    return lines


def median_max(values: Sequence[float], unit: str = " s") -> str:
    """ "<median> / <max><unit>", or "-" without values."""
    if not values:
        return "-"
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return f"{median:.2f} / {ordered[-1]:.2f}{unit}"
