"""The quick chaos profile with synchronous replication (`synchronous_mode: on`): the faults
that end in a failover, once each (every nemesis under `make chaos`). Besides the checks of
the asynchronous profile, no acknowledged write may be lost in any scenario."""

from __future__ import annotations

import os

import pytest

from tests.chaos.cluster import QUICK_TIMING
from tests.chaos.nemesis import Nemesis, nemeses
from tests.chaos.runner import Runner
from tests.chaos.test_quick import assert_invariants, summary

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

# `make test` budget: the failover-inducing faults only; `make chaos` runs all of them.
FAILOVERS = {
    "primary-cut-from-dcs",
    "primary-isolated",
    "primary-agent-sigkill",
    "primary-agent-sigstop",
    "primary-postgres-sigkill",
    "primary-postgres-frozen",
    "primary-postgres-frozen-until-failover",
}
ALL = bool(os.environ.get("CHAOS_DURATION"))
SYNC = {
    n.name: n for n in nemeses(QUICK_TIMING["ttl_s"]) if n.quick and (ALL or n.name in FAILOVERS)
}


@pytest.mark.parametrize("name", list(SYNC))
async def test_with_synchronous_replication_no_fault_loses_an_acknowledged_write(
    sync_runner: Runner, name: str
) -> None:
    nemesis: Nemesis = SYNC[name]
    result = await sync_runner.run(nemesis)
    assert result.lost == 0, (
        f"{summary(result)}\nlost: {result.lost_examples}\n" + sync_runner.cluster.logs_tail(15)
    )
    assert_invariants(result, sync_runner)
