"""The long chaos profile (`make chaos`): a random mix of every nemesis for CHAOS_DURATION
seconds under one continuous workload, checked at the end. Skipped unless CHAOS_DURATION is
set."""

from __future__ import annotations

import os

import pytest

from tests.chaos.cluster import QUICK_TIMING
from tests.chaos.nemesis import nemeses
from tests.chaos.runner import Runner
from tests.chaos.test_quick import assert_invariants

DURATION = float(os.environ.get("CHAOS_DURATION", "0") or 0)
SEED = int(os.environ.get("CHAOS_SEED", "6"))

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(int(DURATION) + 600),
    pytest.mark.skipif(not DURATION, reason="the long profile runs with CHAOS_DURATION=<s>"),
]


async def test_a_random_mix_of_faults_leaves_no_split_brain_and_no_divergence(
    runner: Runner,
) -> None:
    result = await runner.run_mix(nemeses(QUICK_TIMING["ttl_s"]), duration_s=DURATION, seed=SEED)
    assert result.faults, "no fault was injected"
    assert_invariants(result, runner)
