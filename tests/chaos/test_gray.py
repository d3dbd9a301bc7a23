"""The gray profile: faults where the node, the agent and PostgreSQL all stay up but something
underneath stops working (issue 16). Slow or needing more set-up than the quick profile, so it
runs under `make chaos` (CHAOS_DURATION set) or with CHAOS_GRAY=1, and is skipped otherwise.

- **primary-storage-hang [sync]**: every member's data directory is a FUSE passthrough
  (tests/chaos/fuse_fs.py); every write and fsync of the primary's hangs, reads still answer.
  Asserted: no split brain, no acknowledged write lost (synchronous replication), the old
  primary acknowledges nothing once another member took writes, convergence, and another
  member takes writes within ttl + 1 s of the hang (the zombie primary must be replaced).

The quick gray faults (primary-backend-oom-killed, agent-restart-loop) are in test_quick.py.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.cluster import QUICK_TIMING
from tests.chaos.nemesis import storage_hang
from tests.chaos.runner import Runner, ScenarioResult
from tests.chaos.test_quick import assert_invariants, summary

GRAY = bool(os.environ.get("CHAOS_GRAY") or os.environ.get("CHAOS_DURATION"))
RUNS = max(1, int(os.environ.get("CHAOS_RUNS", "1") or 1))
TTL_S = QUICK_TIMING["ttl_s"]

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not GRAY, reason="the gray profile runs with CHAOS_GRAY=1 or make chaos"),
]


def _figures(result: ScenarioResult) -> str:
    failover = result.failover_s
    return (
        f"failover {'none' if failover is None else f'{failover:.2f} s'}, old primary acked "
        f"{result.old_primary_acks_after_failover} after it"
    )


@pytest.mark.parametrize("run", range(RUNS))
async def test_a_primary_whose_storage_hangs_is_replaced_within_ttl_without_losing_a_write(
    storage_sync_runner: Runner, run: int
) -> None:
    runner = storage_sync_runner
    result = await runner.run(storage_hang(TTL_S))
    print(f"\n{summary(result)}; {_figures(result)}")
    assert_invariants(result, runner)
    logs = f"{summary(result)}; {_figures(result)}\n{runner.cluster.logs_tail(15)}"
    assert result.old_primary_acks_after_failover == 0, (
        f"the hung primary acknowledged writes after the failover: {logs}"
    )
    assert result.failover_s is not None, f"no failover while the primary cannot commit: {logs}"
    assert result.failover_s <= TTL_S + 1.0, (
        f"failover {result.failover_s:.2f} s after the storage hung (bound ttl + 1 s): {logs}"
    )
