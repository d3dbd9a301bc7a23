"""The long chaos profile (`make chaos`): a random mix of every nemesis, the gray faults of
issue 16 included (tests/chaos/mix.py), under one continuous workload for CHAOS_DURATION
seconds in all, shared equally between the replication modes of CHAOS_MIX_MODES (default
async then sync: 15 minutes each of the default 30). Skipped unless CHAOS_DURATION is set.

Asserted at the end: no split brain, convergence, no divergence; in synchronous mode no
acknowledged write lost; per fault, no loss acknowledged in the window of a nemesis that must
lose nothing even asynchronously, and no failover during one that must keep the primary (the
clock steps, the OOM-killed backend, the 0.5 s slow network). Asynchronous losses elsewhere
are reported with the lag bound they were allowed (the report's figures).
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.cluster import QUICK_TIMING
from tests.chaos.conftest import MIX_MODES
from tests.chaos.mix import mix_pool, violations
from tests.chaos.runner import Runner
from tests.chaos.test_quick import assert_invariants, summary

DURATION = float(os.environ.get("CHAOS_DURATION", "0") or 0)
SEED = int(os.environ.get("CHAOS_SEED", "6"))
PER_MODE_S = DURATION / max(1, len(MIX_MODES))
# CHAOS_MIX_ONLY=name,name: draw only those nemeses (to try a few faults of the pool quickly).
ONLY = {n.strip() for n in os.environ.get("CHAOS_MIX_ONLY", "").split(",") if n.strip()}

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(int(PER_MODE_S) + 600),
    pytest.mark.skipif(not DURATION, reason="the long profile runs with CHAOS_DURATION=<s>"),
]


async def test_a_random_mix_of_faults_leaves_no_split_brain_and_no_divergence(
    mix_runner: Runner,
) -> None:
    runner = mix_runner
    pool = [n for n in mix_pool(QUICK_TIMING["ttl_s"]) if not ONLY or n.name in ONLY]
    result = await runner.run_mix(pool, duration_s=PER_MODE_S, seed=SEED)
    print(f"\n{summary(result)}")
    for fault in result.mix_faults:
        print(
            f"  {fault.name}: gap {fault.gap_s:.2f} s, converge {fault.converge_s}, "
            f"{fault.primary_before} -> {fault.primary_after}, lost {fault.lost}"
        )
    assert result.faults, "no fault was injected"
    assert_invariants(result, runner)
    bad = violations(result.mix_faults, sync=runner.sync)
    assert not bad, "\n".join(bad) + "\n" + runner.cluster.logs_tail(15)
