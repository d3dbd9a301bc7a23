"""Crash points (issue 16): every multi-step action of the agent cut by the agent's death
after any of its effects (tests/unit/fakes/crash.py, crash_run.py), then a fresh agent on
the same data after 0 s, less than ttl or more than ttl; the invariants must hold and the
cluster converge. Every crash point of every action runs; the delays and the two kinds of
death (the agent alone, the whole pod) rotate over the points, and PGWARDEN_CRASH_SWEEP=full
runs each point with every delay and both kinds."""

from __future__ import annotations

import os

import pytest

from tests.unit.fakes.crash_run import Report, Scenario, run_point, scenarios

DELAYS = (0.0, 4.0, 13.0)  # ttl is 10 s, the fence margin 2 s
FULL = os.environ.get("PGWARDEN_CRASH_SWEEP") == "full"
MAX_POINTS = 80


async def sweep(scenario: Scenario) -> list[tuple[int, float, bool, Report]]:
    runs = []
    for k in range(1, MAX_POINTS + 1):
        if FULL:
            variants = [(d, pod) for d in DELAYS for pod in (False, True)]
        else:
            variants = [(DELAYS[k % len(DELAYS)], k % 2 == 0)]
        last = None
        for delay, pod in variants:
            last = await run_point(scenario, k, delay, pod=pod)
            runs.append((k, delay, pod, last))
        if last is not None and last.killed_at is None and not last.violations:
            return runs  # the action ran to its end before its k-th effect
    raise AssertionError(f"{scenario}: more than {MAX_POINTS} crash points")


@pytest.mark.parametrize("scenario", scenarios(), ids=str)
async def test_every_crash_point_keeps_the_invariants(scenario: Scenario) -> None:
    runs = await sweep(scenario)
    bad = [
        f"k={k} delay={delay} pod={pod}: {r.describe()}"
        for k, delay, pod, r in runs
        if r.violations
    ]
    assert not bad, "\n".join(bad)
    assert len(runs) > 1  # the action has crash points at all
