"""Running scenarios: workload on, fault, hold, heal, converge, then the checker.

Must run while the calling thread is in the client namespace (see `netns.entered`): the
workload and every probe talk from the client host through the bridge.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from dataclasses import dataclass, field

from tests.chaos import checker, mix
from tests.chaos.cluster import ChaosCluster
from tests.chaos.nemesis import Nemesis, heal_all
from tests.chaos.workload import Attempt, Workload

CATCH_UP_S = 15.0  # how long replicas get to replay the primary's rows before a diff counts


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioResult:
    scenario: str
    faults: tuple[str, ...]
    attempts: int
    acked: int
    write_unavailability_s: float
    split_brain: tuple[checker.SplitBrain, ...]
    lost: int | None  # None: no converged primary to compare with
    lost_examples: tuple[str, ...]
    converge_s: float | None  # None: did not converge within the bound
    diverged: tuple[str, ...]  # "pg-1: 3 extra, 0 missing"
    must_not_lose: bool
    primary_before: str
    primary_after: str | None
    started_wall: float  # time.time() at the window's start, to match the servers' logs
    # Seconds from the fault to the last write the old primary acknowledged (either writer)
    # before the heal; None when it acknowledged none after the fault (single scenarios only).
    old_primary_last_ack_s: float | None = None
    held_s: float = 0.0  # from the fault to the heal
    # From the fault to the moment the nemesis had put it fully in place (a nemesis may kill
    # an agent and wait for it before it cuts the DCS): a lease renewed meanwhile is valid
    # until at most this plus ttl.
    injected_s: float = 0.0
    # Per fault instant (one for most nemeses; one per SIGTERM of sigterm-chain): the longest
    # stretch without an acknowledged application write, from its last ack before that fault
    # to the next fault (the last: to the end of the window). Single scenarios only.
    gaps_s: tuple[float, ...] = ()
    # Seconds from the fault to the first write acknowledged by a member other than the
    # primary before it (either writer); None when none took writes (single scenarios only).
    failover_s: float | None = None
    # Writes the old primary acknowledged after another member had acknowledged one (a zombie
    # primary that came back: each is a split brain or a lost write unless fenced).
    old_primary_acks_after_failover: int = 0
    # A scenario's own figures (name, value), shown as a table per scenario in the report
    # (the async-load runs: pgbench's acknowledged transactions, rows kept, lag, failover).
    figures: tuple[tuple[str, str], ...] = ()
    # The random mix's faults, each with its own figures (tests/chaos/mix.py).
    mix_faults: tuple[mix.MixFault, ...] = ()


def _utc(wall: float) -> str:
    """A wall-clock instant as the servers log it (UTC, milliseconds)."""
    whole = time.strftime("%H:%M:%S", time.gmtime(wall))
    return f"{whole}.{int(wall % 1 * 1000):03d} UTC"


@dataclass(slots=True)
class Runner:
    cluster: ChaosCluster
    converge_bound_s: float
    # Synchronous replication: no acknowledged write may be lost in any scenario; the
    # scenario names in the report get a " [sync]" suffix.
    sync: bool = False
    # Appended to every scenario name (after " [sync]"): " [k8s]", " [failsafe]".
    suffix: str = ""
    # How the mix's report states an asynchronous cluster's loss bound.
    lag_allowed: str = "asynchronous, maximum_lag_on_failover_bytes 1048576 (the default)"
    next_base: int = 1_000_000_000
    results: list[ScenarioResult] = field(default_factory=list)

    def _base_value(self) -> int:
        base = self.next_base
        self.next_base += 100_000_000
        return base

    async def converge(self) -> tuple[int | None, float]:
        """Wait for one primary and all others streaming; agents that died (a SIGTERM hand-over
        finishing late) are started again while waiting."""
        start = time.monotonic()
        while True:
            self.cluster.restart_dead_agents()
            primary, _ = await self.cluster.wait_converged(timeout=2.0)
            waited = time.monotonic() - start
            if primary is not None or waited > self.converge_bound_s:
                return primary, waited

    async def ready(self) -> int:
        """Heal everything and wait for a converged cluster with the probe table."""
        heal_all(self.cluster)
        primary, _ = await self.converge()
        if primary is None:
            raise AssertionError(
                "the cluster did not converge before the scenario\n" + self.cluster.logs_tail()
            )
        await self.cluster.ensure_table(primary)
        if self.sync and not await self._has_sync_standby(primary):
            raise AssertionError(
                "synchronous_mode is on but the primary names no synchronous standby\n"
                + self.cluster.logs_tail()
            )
        return primary

    async def _has_sync_standby(self, primary: int) -> bool:
        """Within 30 s, the primary's synchronous_standby_names names a standby (else a sync
        scenario would test nothing)."""
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            conn = await self.cluster.connect(primary)
            try:
                async with asyncio.timeout(3):
                    names = await conn.fetchval("SHOW synchronous_standby_names")
            finally:
                await conn.close()
            if names:
                return True
            await asyncio.sleep(0.3)
        return False

    def _name(self, base: str) -> str:
        return base + (" [sync]" if self.sync else "") + self.suffix

    def _workload(self, *, patient: bool = False) -> Workload:
        members = {m.name: m.address for m in self.cluster.members}
        workload = Workload(members=members, base_value=self._base_value(), patient=patient)
        workload.start()
        return workload

    async def run(self, nemesis: Nemesis) -> ScenarioResult:
        primary = await self.ready()
        workload = self._workload(patient=nemesis.patient_writer)
        try:
            await asyncio.sleep(1.0)
            t_fault = time.monotonic()
            wall = time.time()
            injected = await nemesis.run(self.cluster, primary)
            t_injected = time.monotonic()
            await asyncio.sleep(nemesis.hold_s)
        finally:
            nemesis.heal(self.cluster)
        t_heal = time.monotonic()
        after, converge_s = await self.converge()
        await asyncio.sleep(1.0)
        attempts = await workload.stop()
        dump_attempts(attempts, wall - t_fault)
        old = self.cluster.members[primary].name
        served = [
            a.ended
            for a in attempts
            if a.acked and a.member == old and t_fault <= a.ended <= t_heal
        ]
        t_end = time.monotonic()
        elsewhere = [
            a.ended
            for a in attempts
            if a.acked and a.member not in (None, old) and a.ended >= t_fault
        ]
        failover_at = min(elsewhere) if elsewhere else None
        zombie = (
            0
            if failover_at is None
            else sum(1 for a in attempts if a.acked and a.member == old and a.ended > failover_at)
        )
        result = await self._check(
            scenario=self._name(nemesis.name),
            faults=(injected.description,),
            attempts=attempts,
            window=(t_fault, t_end),
            after=after,
            converge_s=None if after is None else converge_s,
            must_not_lose=nemesis.must_not_lose or self.sync,
            before=primary,
            wall=wall,
        )
        result = dataclasses.replace(
            result,
            old_primary_last_ack_s=max(served) - t_fault if served else None,
            held_s=t_heal - t_fault,
            injected_s=t_injected - t_fault,
            gaps_s=tuple(
                checker.gaps_after(attempts, writer="app", instants=injected.instants, end=t_end)
            ),
            # From the first fault instant (a scripted nemesis may prepare before it: the
            # load scenario's warm-up).
            failover_s=None
            if failover_at is None
            else failover_at - (injected.instants[0] if injected.instants else t_fault),
            old_primary_acks_after_failover=zombie,
        )
        self.results.append(result)
        return result

    async def run_mix(self, pool: list[Nemesis], *, duration_s: float, seed: int) -> ScenarioResult:
        """Random faults one after the other for `duration_s` (every nemesis of `pool` once
        per pass, tests/chaos/mix.py), healing and converging between them, under one
        continuous workload; checked once at the end, and per fault (`mix_faults`)."""
        rng = random.Random(seed)
        deck = mix.Deck(pool=pool, rng=rng)
        primary = await self.ready()
        first = primary
        names = [m.name for m in self.cluster.members]
        workload = self._workload()
        drawn: list[mix.MixFault] = []
        loads = [os.getloadavg()[0]]  # the machine's 1-minute load average, at each fault
        worst_converge: float | None = 0.0
        t_start = time.monotonic()
        wall = time.time()
        try:
            await asyncio.sleep(1.0)
            while time.monotonic() - t_start < duration_s:
                nemesis = deck.draw()
                loads.append(os.getloadavg()[0])
                at = time.monotonic()
                try:
                    injected = await nemesis.run(self.cluster, primary)
                    await asyncio.sleep(rng.uniform(1.0, nemesis.hold_s))
                finally:
                    nemesis.heal(self.cluster)
                found, took = await self.converge()
                stuck = "" if found is not None else await self.cluster.why_not_converged()
                drawn.append(
                    mix.MixFault(
                        name=nemesis.name,
                        description=injected.description
                        + (f"; not converged within the bound: {stuck}" if stuck else ""),
                        at=injected.instants[0] if injected.instants else at,
                        settled=time.monotonic(),
                        converge_s=None if found is None else took,
                        primary_before=names[primary],
                        primary_after=None if found is None else names[found],
                        must_not_lose=nemesis.must_not_lose,
                        same_primary=nemesis.same_primary,
                    )
                )
                if found is None:
                    worst_converge = None
                    break
                if worst_converge is not None:
                    worst_converge = max(worst_converge, took)
                primary = found
                await asyncio.sleep(rng.uniform(0.5, 2.0))
        finally:
            heal_all(self.cluster)
        after, took = await self.converge()
        if after is None:
            worst_converge = None
        elif worst_converge is not None:
            worst_converge = max(worst_converge, took)
        await asyncio.sleep(1.0)
        attempts = await workload.stop()
        lost: list[Attempt] = []
        t_end = time.monotonic()
        result = await self._check(
            scenario=self._name("random-mix"),
            faults=tuple(f"{f.name}: {f.description}" for f in drawn),
            attempts=attempts,
            window=(t_start, t_end),
            after=after,
            converge_s=worst_converge,
            must_not_lose=self.sync,
            before=first,
            wall=wall,
            lost_out=lost,
        )
        settled = mix.settle(drawn, attempts, lost, t_end)
        result = dataclasses.replace(
            result,
            mix_faults=tuple(settled),
            figures=(
                ("faults drawn", str(len(settled))),
                ("distinct nemeses drawn", f"{len({f.name for f in settled})} of {len(pool)}"),
                ("failovers", str(sum(1 for f in settled if f.failed_over))),
                ("replication", "synchronous_mode on" if self.sync else self.lag_allowed),
                ("acknowledged writes lost", f"{result.lost} of {result.acked}"),
                ("load average (1 min) median / max", mix.median_max(loads, unit="")),
            ),
        )
        self.results.append(result)
        return result

    async def _check(
        self,
        *,
        scenario: str,
        faults: tuple[str, ...],
        attempts: list[Attempt],
        window: tuple[float, float],
        after: int | None,
        converge_s: float | None,
        must_not_lose: bool,
        before: int,
        wall: float,
        lost_out: list[Attempt] | None = None,
    ) -> ScenarioResult:
        names = [m.name for m in self.cluster.members]
        split = checker.split_brain_instants(attempts, names)
        lost: list[Attempt] | None = None
        diverged: list[str] = []
        if after is not None:
            primary_rows = await self.cluster.values(after)
            lost = checker.lost_writes(attempts, primary_rows)
            if lost_out is not None:
                lost_out.extend(lost)
            for index, member in enumerate(self.cluster.members):
                if index == after:
                    continue
                extra, missing = await self._settled_diff(index, primary_rows)
                if extra < 0:
                    diverged.append(f"{member.name}: unreachable for the row comparison")
                elif extra or missing:
                    diverged.append(f"{member.name}: {extra} extra, {missing} missing")
        start, end = window
        return ScenarioResult(
            scenario=scenario,
            faults=faults,
            attempts=len(attempts),
            acked=sum(1 for a in attempts if a.acked),
            write_unavailability_s=checker.longest_unavailability(
                attempts, writer="app", start=start, end=end
            ),
            split_brain=tuple(split),
            lost=None if lost is None else len(lost),
            lost_examples=tuple(
                f"{a.value} by {a.writer} on {a.member} acked at +{a.ended - start:.3f}s "
                f"({_utc(wall + a.ended - start)})"
                for a in (lost or [])[:5]
            ),
            converge_s=converge_s,
            diverged=tuple(diverged),
            must_not_lose=must_not_lose,
            primary_before=names[before],
            primary_after=None if after is None else names[after],
            started_wall=wall,
        )

    async def _settled_diff(self, index: int, primary_rows: set[int]) -> tuple[int, int]:
        """(extra, missing) rows of a member once it had CATCH_UP_S to replay the primary's."""
        deadline = time.monotonic() + CATCH_UP_S
        while True:
            try:
                extra, missing = checker.divergence(await self.cluster.values(index), primary_rows)
            except Exception:  # unreachable yet (or still starting): keep waiting
                extra, missing = -1, -1
            if (extra, missing) == (0, 0) or time.monotonic() > deadline:
                return extra, missing
            await asyncio.sleep(0.3)


def dump_attempts(attempts: list[Attempt], wall_offset: float) -> None:
    """With CHAOS_ATTEMPTS=<path>: every write attempt as a TSV line (writer, member, acked,
    sent and ended in wall-clock seconds: `wall_offset` added to the monotonic times), to match
    them with the servers' logs (bench/fence_window.py: acknowledgements after a fence
    deadline)."""
    path = os.environ.get("CHAOS_ATTEMPTS")
    if not path:
        return
    with open(path, "w", encoding="utf-8") as out:
        for a in attempts:
            out.write(
                f"{a.writer}\t{a.member or '-'}\t{int(a.acked)}"
                f"\t{a.sent + wall_offset:.3f}\t{a.ended + wall_offset:.3f}\n"
            )
