"""Crash points (issue 16): every multi-step action of the agent cut by the agent's death
after any of its effects (tests/unit/fakes/crash.py, crash_run.py), then a fresh agent on
the same data after 0 s, less than ttl or more than ttl; the invariants must hold and the
cluster converge.

A run without a kill lists the action's effects; then each crash point k (before the k-th
effect) runs. By default a point is run once per boundary (the pair of effects around it:
the renewals repeated cycle after cycle are one boundary), with the delay and the kind of
death (the agent alone, the whole pod) rotating over the points; PGWARDEN_CRASH_SWEEP=full
runs every point with every delay and both kinds (3 CPU-minutes). Each point also runs with
the agent stopped (SIGSTOP) there for longer than the ttl and then going on, as a paused VM
or a starved process does, instead of killed.

`make chaos` runs the full sweep; with PGWARDEN_CRASH_SWEEP_REPORT=<file>, each action
appends its row (crash points, runs, violations, convergence) to that Markdown table."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest

from tests.unit.fakes.crash_run import Report, Scenario, run_point, scenarios

DELAYS = (0.0, 4.0, 13.0)  # ttl is 10 s, the fence margin 2 s
FULL = os.environ.get("PGWARDEN_CRASH_SWEEP") == "full"
NEVER = 10**6
FROZEN_S = 13.0
REPORT = os.environ.get("PGWARDEN_CRASH_SWEEP_REPORT")
REPORT_HEADER = (
    "| action | crash points | runs | runs with a violation | convergence after the restart, "
    "median / max (fake s) | wall s |\n|---|---|---|---|---|---|\n"
)


async def sweep(scenario: Scenario) -> list[tuple[int, float, bool, Report]]:
    reference = await run_point(scenario, NEVER, 0.0, pod=False)
    runs = [(NEVER, 0.0, False, reference)]
    effects = reference.effects
    seen: set[tuple[str, str]] = set()
    for k in range(1, len(effects) + 1):
        boundary = (effects[k - 2] if k > 1 else "", effects[k - 1])
        if FULL:
            variants = [(d, pod) for d in DELAYS for pod in (False, True)]
        elif boundary in seen:
            continue
        else:
            variants = [(DELAYS[len(seen) % len(DELAYS)], len(seen) % 2 == 1)]
        seen.add(boundary)
        for delay, pod in variants:
            report = await run_point(scenario, k, delay, pod=pod)
            assert report.killed_at == effects[k - 1], "the runs are not deterministic"
            runs.append((k, delay, pod, report))
        # Stopped there (SIGSTOP) past the ttl, then going on with what it knew.
        frozen = await run_point(scenario, k, FROZEN_S, pod=False, freeze=True)
        runs.append((k, FROZEN_S, False, frozen))
    return runs


@pytest.mark.parametrize("scenario", scenarios(), ids=str)
async def test_every_crash_point_keeps_the_invariants(scenario: Scenario) -> None:
    started = time.monotonic()
    runs = await sweep(scenario)
    if REPORT:
        _report_row(scenario, runs, time.monotonic() - started)
    bad = [
        f"k={k} delay={delay} pod={pod}: {r.describe()}"
        for k, delay, pod, r in runs
        if r.violations
    ]
    assert not bad, "\n".join(bad)
    assert len(runs) > 2  # the action has crash points at all


def _report_row(
    scenario: Scenario, runs: list[tuple[int, float, bool, Report]], wall_s: float
) -> None:
    path = Path(REPORT or "")
    points = len({k for k, *_ in runs if k != NEVER})
    failed = sum(1 for *_, r in runs if r.violations)
    times = [r.converge_s for *_, r in runs if r.converge_s is not None]
    converge = f"{statistics.median(times):.0f} / {max(times):.0f}" if times else "-"
    header = "" if path.exists() and path.stat().st_size else REPORT_HEADER
    with path.open("a", encoding="utf-8") as out:
        out.write(
            f"{header}| {scenario} | {points} | {len(runs)} | {failed} | {converge} "
            f"| {wall_s:.0f} |\n"
        )
