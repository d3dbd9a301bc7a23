"""Faults that were in no profile (session 24's hunt, tests/chaos/nemesis_unlisted.py), each
with the usual invariants (no split brain, convergence, no divergence) and no loss.

- **A second agent with a running member's name** (the primary's; `[sync]`: the synchronous
  standby's), on a spare host with an empty data directory: it must refuse to start (exit 2)
  before it touches the DCS's records or PostgreSQL, and the cluster must not notice: the
  same primary, no stopping event in any agent's log, nothing lost. Before the refusal
  existed the newcomer took itself for the member restarted elsewhere: as the primary's
  namesake it found itself the leader with no data and released the leader key, a replica
  was promoted while the real primary still served (docs/chaos.md, the finding).

Run with CHAOS_HUNT=1 (or `make chaos`); about 40 s per scenario.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos import agentlogs, netns
from tests.chaos.cluster import QUICK_TIMING
from tests.chaos.mix import clock_step
from tests.chaos.nemesis import Nemesis
from tests.chaos.nemesis_unlisted import (
    DUPLICATE_EXIT_BOUND_S,
    DuplicateName,
    duplicate_name,
    fencer_frozen,
    fencer_killed_then_agent_frozen,
    killed_mid_switchover,
    leader_key_rolled_back,
    quorum_lost_mid_switchover,
    replicas_deaf_then_primary_killed,
    sync_standby_cut_then_primary_killed,
)
from tests.chaos.runner import Runner, ScenarioResult
from tests.chaos.test_quick import assert_invariants, summary

HUNT = bool(
    os.environ.get("CHAOS_GRAY") or os.environ.get("CHAOS_DURATION") or os.environ.get("CHAOS_HUNT")
)
RUNS = max(1, int(os.environ.get("CHAOS_RUNS", "1") or 1))
TTL_S = QUICK_TIMING["ttl_s"]
REFUSED = 2  # the agent's exit code for a configuration it refuses
# One nemesis per role for the whole module: each alternates +1 h and -1 h by draw.
CLOCK_STEPS = {role: clock_step(role, TTL_S) for role in ("primary", "replica")}

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        not HUNT, reason="the hunt profile runs with CHAOS_HUNT=1, CHAOS_GRAY=1 or make chaos"
    ),
]


async def _run(
    runner: Runner, nemesis: Nemesis, *, also: tuple[str, ...] = ()
) -> tuple[ScenarioResult, list[str]]:
    """The scenario and the stopping events of the agents' logs, and those named in `also`
    (printed, with the figures)."""
    # This module uses several clusters at once (module fixtures), all on the same subnet, and
    # each fixture moved the test thread into its own client namespace when it started: the
    # thread is in the last one's. Each scenario talks from its own cluster's client host.
    with netns.entered(runner.cluster.client.netns):
        await runner.ready()
        sizes = agentlogs.log_sizes(runner.cluster)
        result = await runner.run(nemesis)
    lines = agentlogs.lines_since(runner.cluster, sizes)
    stops = agentlogs.events(lines, (*agentlogs.STOPPING_EVENTS, *also))
    print(
        f"\n{summary(result)}; failover {result.failover_s}; old primary acked "
        f"{result.old_primary_acks_after_failover} after it; events {stops}"
    )
    return result, stops


def _impostor_log(state: DuplicateName) -> str:
    if state.impostor is None:
        return ""
    path = state.impostor.agent.log
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


async def _duplicate(runner: Runner, role: str) -> None:
    nemesis, state = duplicate_name(role, TTL_S + 4.0)
    result, stops = await _run(runner, nemesis)
    logs = f"{summary(result)}\n{runner.cluster.logs_tail(15)}\nsecond agent:\n"
    logs += _impostor_log(state)
    assert_invariants(result, runner)
    assert result.lost == 0, f"{result.lost} acknowledged writes lost\n{logs}"
    assert result.primary_after == result.primary_before, f"failover\n{logs}"
    assert not stops, f"the cluster noticed the second agent: {stops}\n{logs}"
    assert state.exit_codes[-1] == REFUSED, (
        f"the second agent did not refuse to start within {DUPLICATE_EXIT_BOUND_S} s "
        f"(exit code {state.exit_codes[-1]})\n{logs}"
    )


@pytest.mark.parametrize("run", range(RUNS))
async def test_a_second_agent_with_the_primarys_name_refuses_to_start(
    spare_runner: Runner, run: int
) -> None:
    await _duplicate(spare_runner, "primary")


@pytest.mark.parametrize("run", range(RUNS))
async def test_a_second_agent_with_the_primarys_name_refuses_to_start_k8s(
    spare_k8s_runner: Runner, run: int
) -> None:
    """The same with the Kubernetes DCS: the member record is the real pod's annotation."""
    await _duplicate(spare_k8s_runner, "primary")


@pytest.mark.parametrize("run", range(RUNS))
async def test_a_second_agent_with_the_sync_standbys_name_refuses_to_start(
    spare_sync_runner: Runner, run: int
) -> None:
    await _duplicate(spare_sync_runner, "sync-standby")


@pytest.mark.parametrize("run", range(RUNS))
async def test_a_frozen_fencer_under_the_primary_loses_nothing(
    spare_runner: Runner, run: int
) -> None:
    """The primary's fencer SIGSTOPped (agent and PostgreSQL alive) for three ttls: the agent
    cannot move its deadline; it must step down by itself at the deadline the fencer holds,
    with nothing lost, and hand the lease on: another member takes writes within two ttls
    (the deadline is under one, a takeover one more). Before (chaos finding 25) the agent
    kept the key over its stopped PostgreSQL for primary_start_timeout_s more (failover
    12.4 s after the freeze at ttl 6), then re-cloned the whole database."""
    result, events = await _run(spare_runner, fencer_frozen(TTL_S), also=("replica_created",))
    logs = f"{summary(result)}; events {events}\n{spare_runner.cluster.logs_tail(15)}"
    assert_invariants(result, spare_runner)
    assert result.lost == 0, f"{result.lost} acknowledged writes lost\n{logs}"
    assert result.old_primary_acks_after_failover == 0, logs
    assert result.failover_s is not None and result.failover_s < 2 * TTL_S, (
        f"no other member took writes within two ttls of the fencer's freeze\n{logs}"
    )
    # It rejoins by a rewind once the fencer answers, not by a new copy of the database
    # (its rewind was counted as failed at the fencer's disarm, and it re-cloned).
    assert not [e for e in events if e.endswith(": replica_created")], logs


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("whose", ["leader", "candidate"])
async def test_an_agent_killed_between_demotion_and_promotion_loses_nothing(
    spare_runner: Runner, whose: str, run: int
) -> None:
    """A switchover, and the moment the old primary stops taking writes the old primary's
    agent (or the candidate's) SIGKILLed and started again at once: another member takes
    writes, nothing acknowledged is lost, nobody diverges."""
    nemesis, state = killed_mid_switchover(whose, TTL_S)
    result, _ = await _run(spare_runner, nemesis)
    logs = f"{summary(result)}\n{spare_runner.cluster.logs_tail(15)}"
    assert_invariants(result, spare_runner)
    assert result.lost == 0, f"{result.lost} acknowledged writes lost\n{logs}"
    assert state.taken_s[-1] is not None, f"nobody took writes after the switchover\n{logs}"


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("kill_after_s", [2.0, TTL_S + 3.0])
async def test_a_primary_cut_from_its_sync_standby_then_killed_loses_nothing(
    spare_sync_runner: Runner, kill_after_s: float, run: int
) -> None:
    """`[sync]`: the primary cut from its synchronous standby only, then its host killed
    while commits wait for the cut standby (2 s) or after the leader swapped in the other
    replica (ttl + 3 s): whoever is promoted holds every acknowledged commit."""
    result, _ = await _run(spare_sync_runner, sync_standby_cut_then_primary_killed(kill_after_s))
    assert_invariants(result, spare_sync_runner)
    assert result.failover_s is not None, (
        f"nobody took over\n{summary(result)}\n{spare_sync_runner.cluster.logs_tail(15)}"
    )


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("role", ["primary", "replica"])
async def test_a_wall_clock_step_under_the_kubernetes_dcs_changes_nothing(
    k8s_stepped_runner: Runner, role: str, run: int
) -> None:
    """`[k8s]`: one agent's wall clock stepped an hour (forward on the first draw of each
    role, back on the second; CHAOS_RUNS=2 makes both) for a ttl and more. The Lease and
    the leader annotations carry wall times, but expiry is judged on each observer's
    monotonic clock: no failover, no stopping event, nothing lost."""
    result, stops = await _run(k8s_stepped_runner, CLOCK_STEPS[role])
    logs = f"{summary(result)}\n{k8s_stepped_runner.cluster.logs_tail(15)}"
    assert_invariants(result, k8s_stepped_runner)
    assert result.lost == 0, logs
    assert result.primary_after == result.primary_before, f"failover\n{logs}"
    assert not stops, f"a clock step stopped something: {stops}\n{logs}"


@pytest.mark.parametrize("run", range(RUNS))
async def test_a_leader_key_naming_a_member_outside_the_sync_set_promotes_nobody_outside_it(
    spare_sync_runner: Runner, run: int
) -> None:
    """`[sync]`: the leader key rewritten to name the asynchronous replica (a DCS restored
    from a backup, a second agent under its name). That member did not win a race: it must
    not promote (chaos finding 26: it re-bound the key as its own and promoted, while the
    primary, seeing another leader, stopped), and nothing acknowledged is lost."""
    await _rolled_back(spare_sync_runner, sync=True)


@pytest.mark.parametrize("run", range(RUNS))
async def test_a_leader_key_naming_a_replica_that_won_no_race_promotes_nobody_unchecked(
    spare_runner: Runner, run: int
) -> None:
    """The same with asynchronous replication: the named replica did not win a race (no
    position or lag check was made), so it hands the key back first; the race that follows
    may choose it (before, it re-bound the key and promoted at once)."""
    await _rolled_back(spare_runner, sync=False)


async def _rolled_back(runner: Runner, *, sync: bool) -> None:
    nemesis, state = leader_key_rolled_back(TTL_S)
    result, events = await _run(runner, nemesis, also=("dcs_leader_released",))
    logs = f"{summary(result)}; events {events}\n{runner.cluster.logs_tail(15)}"
    assert_invariants(result, runner)
    named = state.named[-1]
    assert f"{named}: dcs_leader_released" in events, f"{named} kept the key\n{logs}"
    if sync:  # outside the synchronous set: the race never chooses it either
        assert f"{named}: promoted" not in events, logs
    assert result.lost == 0, logs


@pytest.mark.parametrize("run", range(RUNS))
async def test_etcd_losing_its_quorum_mid_switchover_loses_nothing(
    spare_runner: Runner, run: int
) -> None:
    """A switchover, and the moment the old primary stops taking writes etcd loses its
    quorum for a ttl and more: nobody can release or take the key; after the heal one
    primary, nothing lost, nobody diverged."""
    result, _ = await _run(spare_runner, quorum_lost_mid_switchover(TTL_S))
    assert_invariants(result, spare_runner)
    assert result.lost == 0, f"{summary(result)}\n{spare_runner.cluster.logs_tail(15)}"


@pytest.mark.parametrize("run", range(RUNS))
async def test_replicas_deaf_to_the_dcs_when_the_primary_dies_keep_one_primary(
    spare_runner: Runner, run: int
) -> None:
    """etcd's answers to both replicas dropped (their requests are applied unanswered), then
    the primary's host killed: whatever a replica's unanswered acquire did, at most one
    member takes writes, and the cluster converges after the heal."""
    result, _ = await _run(spare_runner, replicas_deaf_then_primary_killed(TTL_S))
    assert_invariants(result, spare_runner)


@pytest.mark.parametrize("run", range(RUNS))
async def test_a_fencer_killed_just_before_its_agent_freezes_is_replaced_in_time(
    spare_runner: Runner, run: int
) -> None:
    """The primary's fencer SIGKILLed, its agent SIGSTOPped 0.5 s later, before its next
    renewal: the fencer the agent replaced at once (not at its next call, which never comes)
    stops PostgreSQL at the deadline: no split brain, nothing lost, a replica takes over."""
    result, _ = await _run(spare_runner, fencer_killed_then_agent_frozen(TTL_S))
    assert_invariants(result, spare_runner)
    logs = f"{summary(result)}\n{spare_runner.cluster.logs_tail(15)}"
    assert result.lost == 0, logs
    assert result.old_primary_acks_after_failover == 0, logs
