"""The quick chaos profile: every nemesis once against one 3-member cluster in namespaces.

Each scenario heals its fault, waits for convergence and runs the checker. Any split-brain
instant fails; a member left with rows that diverge from the primary fails; the cluster must
converge within the bound; with asynchronous replication the frozen- and killed-agent
scenarios, the SIGTERM chain and the frozen PostgreSQL must lose no acknowledged write
(self-fencing, hand-over), other losses are only reported. A scenario that makes several
faults (sigterm-chain) must have made all of them.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos import agentlogs
from tests.chaos.cluster import QUICK_TIMING
from tests.chaos.nemesis import Nemesis, nemeses
from tests.chaos.nemesis_hunt import one_way_partitions, stale_etcd_members
from tests.chaos.runner import Runner, ScenarioResult
from tests.chaos.stuck_peer import MARGIN_S, STALL_S, receiver_stuck

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

# Found by this suite (quick profile, asynchronous replication). The strong checks above stay
# strict; only this loss check is an expected failure until the agent is fixed.
# Fixed: the fencer used to SIGKILL PostgreSQL at the deadline, and a commit acknowledged a
# few ms before was sometimes not yet sent to the standbys (lost in 3 of 14 runs). It now
# asks for a fast shutdown first (the WAL senders ship what was committed) and kills only
# after half the fence margin, so these scenarios must lose nothing (issue 6).
LOSS_RULE = "self-fencing must leave no acknowledged write on the old primary alone"

# `make chaos` may run each scenario several times (CHAOS_RUNS) for frequencies in the report.
RUNS = max(1, int(os.environ.get("CHAOS_RUNS", "1") or 1))

QUICK = {n.name: n for n in nemeses(QUICK_TIMING["ttl_s"]) if n.quick}
# Two of the hunt's faults (tests/chaos/nemesis_hunt.py, all in test_hunt.py), about 45 s:
# the primary's requests reach etcd and are applied but the answers are lost, and the
# primary reaches only an etcd member cut from its quorum.
QUICK.update(
    (n.name, n)
    for n in (
        *one_way_partitions(QUICK_TIMING["ttl_s"]),
        *stale_etcd_members(QUICK_TIMING["ttl_s"])[0],
    )
    if n.name in ("dcs-to-primary-dropped", "primary-with-stale-etcd-member")
)


def summary(result: ScenarioResult) -> str:
    """One line of figures for failure messages: losses, split brain, write gap per fault."""
    gaps = ", ".join(f"{gap:.2f}" for gap in result.gaps_s) or "n/a"
    return (
        f"{result.scenario}: {result.lost} of {result.acked} acknowledged writes lost, "
        f"{len(result.split_brain)} split-brain instants, write gap per fault [{gaps}] s, "
        f"faults: {'; '.join(result.faults)}"
    )


def assert_invariants(result: ScenarioResult, runner: Runner) -> None:
    """The checker's verdict, with the evidence and the agents' last log lines on failure."""
    assert result.acked > 0, "the workload acknowledged nothing"
    logs = summary(result) + "\n" + runner.cluster.logs_tail(15)
    assert not result.split_brain, (
        f"{result.scenario}: {len(result.split_brain)} split-brain instants, first "
        f"{result.split_brain[:3]}\n{logs}"
    )
    assert result.converge_s is not None, f"{result.scenario}: no convergence\n{logs}"
    assert not result.diverged, f"{result.scenario}: diverged {result.diverged}\n{logs}"
    if result.must_not_lose:
        assert result.lost == 0, f"{LOSS_RULE}: {result.lost} lost, {result.lost_examples}\n{logs}"


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("name", list(QUICK))
async def test_after_each_fault_no_split_brain_and_the_cluster_converges_without_divergence(
    runner: Runner, name: str, run: int
) -> None:
    nemesis: Nemesis = QUICK[name]
    result = await runner.run(nemesis)
    assert_invariants(result, runner)
    if nemesis.same_primary:
        assert result.primary_after == result.primary_before, (
            f"{result.scenario}: failover to {result.primary_after} (no failover allowed)\n"
            f"{summary(result)}\n{runner.cluster.logs_tail(15)}"
        )
    assert len(result.gaps_s) == nemesis.faults, (
        f"only {len(result.gaps_s)} of the {nemesis.faults} faults could be made: "
        f"{summary(result)}\n{runner.cluster.logs_tail(15)}"
    )


@pytest.mark.parametrize("run", range(RUNS))
async def test_a_replica_whose_receiver_hangs_on_a_stuck_peer_streams_again_within_the_bound(
    runner: Runner, run: int
) -> None:
    """Chaos finding 17: a peer that accepts and never answers was put between a replica and
    the primary while the replica's WAL receiver reconnected, then taken out of the path.
    PostgreSQL waits on that connection for good; the agent's watchdog restarts the
    receiver after ha.wal_receiver_stall_s (STALL_S here) without streaming: the replica
    streams again within the bound and a margin of its stream's end, with no failover and
    nothing lost. CHAOS_RECEIVER_WATCHDOG=off (the watchdog off) must fail here."""
    nemesis, state = receiver_stuck()
    sizes = agentlogs.log_sizes(runner.cluster)
    result = await runner.run(nemesis)
    assert_invariants(result, runner)
    logs = summary(result) + "\n" + runner.cluster.logs_tail(15)
    assert result.primary_after == result.primary_before, f"failover\n{logs}"
    assert state.held[-1] == 1, f"the stuck peer held {state.held[-1]} connections\n{logs}"
    took = state.streams_again_s[-1]
    assert took is not None and took <= STALL_S + MARGIN_S, (
        f"{state.victims[-1]} streamed again after {took} s (bound {STALL_S} + {MARGIN_S} s)"
        f"\n{logs}"
    )
    restarts = agentlogs.events(
        agentlogs.lines_since(runner.cluster, sizes), ("wal_receiver_restarted",)
    )
    # The victim's watchdog fired (once: the first new receiver streams); nobody else's.
    assert restarts == [f"{state.victims[-1]}: wal_receiver_restarted"], f"{restarts}\n{logs}"
