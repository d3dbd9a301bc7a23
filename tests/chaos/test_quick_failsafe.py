"""The quick chaos profile with failsafe mode on (`ha.failsafe_mode: true`, etcd, asynchronous
replication): a primary that cannot reach the DCS stays primary as long as every other member
confirms it over the agents' REST API, and stops at its fencing deadline otherwise.

Besides test_quick.py's checks (no split-brain instant, convergence, no divergence):
- DCS outages the members can still talk through (the primary cut from etcd, etcd without
  quorum, every etcd member killed): the same primary throughout, writes never stop for as
  long as 1 s (without failsafe mode each of them costs seconds), and the old primary
  acknowledged writes until the heal;
- the primary cut from the DCS and from the replicas: nobody can confirm it, so it stops
  acknowledging writes before its lease can expire (ttl after the fault) and a replica takes
  over;
- a DCS outage while one replica's agent is dead: the primary cannot confirm every member, so
  it too stops before ttl after the fault.

`CHAOS_FAILSAFE=off` runs the same module on a cluster without failsafe mode: the first group
must then fail (that is how the assertions were checked to depend on the feature).
Scenario names get " [failsafe]" (" [failsafe off]").
"""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from tests.chaos.cluster import QUICK_TIMING
from tests.chaos.nemesis import Nemesis, dcs_outage_with_dead_replica_agent, heal_all, nemeses
from tests.chaos.runner import Runner, ScenarioResult
from tests.chaos.test_quick import assert_invariants

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

TTL_S = QUICK_TIMING["ttl_s"]
MAX_UNAVAILABILITY_S = 1.0  # without failsafe: 1.5-5.9 s in these scenarios
HOLDS = ("primary-cut-from-dcs", "dcs-majority-cut", "etcd-all-stopped")
STOPS = ("primary-isolated", "dcs-outage-replica-agent-killed")
ALL = {n.name: n for n in [*nemeses(TTL_S), dcs_outage_with_dead_replica_agent(TTL_S)]}


def _details(result: ScenarioResult, runner: Runner) -> str:
    return (
        f"{result.scenario}: {result.faults}, primary {result.primary_before} -> "
        f"{result.primary_after}, unavailable {result.write_unavailability_s:.2f} s, old primary "
        f"last acked at +{result.old_primary_last_ack_s} s of {result.held_s:.1f} s held "
        f"(fault in place at +{result.injected_s:.2f} s)\n" + runner.cluster.logs_tail(15)
    )


@pytest.mark.parametrize("name", HOLDS)
async def test_with_failsafe_a_dcs_outage_keeps_the_primary_and_writes_flowing(
    failsafe_runner: Runner, name: str
) -> None:
    nemesis: Nemesis = ALL[name]
    result = await failsafe_runner.run(nemesis)
    assert_invariants(result, failsafe_runner)
    why = _details(result, failsafe_runner)
    assert result.primary_after == result.primary_before, why
    assert result.write_unavailability_s < MAX_UNAVAILABILITY_S, why
    assert result.old_primary_last_ack_s is not None, why
    assert result.old_primary_last_ack_s > result.held_s - MAX_UNAVAILABILITY_S, why
    assert result.lost == 0, why


@pytest.mark.parametrize("name", STOPS)
async def test_with_failsafe_a_primary_nobody_can_confirm_stops_before_its_lease_expires(
    failsafe_runner: Runner, name: str
) -> None:
    nemesis: Nemesis = ALL[name]
    result = await failsafe_runner.run(nemesis)
    assert_invariants(result, failsafe_runner)
    why = _details(result, failsafe_runner)
    assert result.held_s - result.injected_s > TTL_S, why  # else stopping proves nothing
    assert result.old_primary_last_ack_s is not None, why
    # Its last renewal came before the fault was fully in place (under load, killing the
    # replica's agent and cutting etcd take a while after t_fault): the lease ends by then + ttl.
    assert result.old_primary_last_ack_s < result.injected_s + TTL_S, why
    if name == "primary-isolated":  # the replicas reach etcd: one of them takes over
        assert result.primary_after not in (None, result.primary_before), why


async def test_with_failsafe_replicas_whose_agents_were_down_still_take_over_from_a_dead_primary(
    failsafe_runner: Runner,
) -> None:
    """Both replica agents die; after a ttl the primary's view holds no other member, but the
    `failsafe` record keeps naming them (slot grace; found by this test when it dropped them,
    finding 5 in docs/chaos.md). Then the primary's node dies (agent and PostgreSQL) and the
    replica agents come back, with the DCS up all along: one of them must take over (without
    failsafe mode it would)."""
    cluster = failsafe_runner.cluster
    primary = await failsafe_runner.ready()
    replicas = [i for i in range(len(cluster.members)) if i != primary]
    found: list[int] = []
    try:
        for index in replicas:
            cluster.members[index].agent.signal(signal.SIGKILL)
            cluster.members[index].agent.wait(timeout=5)
        await asyncio.sleep(TTL_S + 4.0)
        cluster.members[primary].agent.signal(signal.SIGKILL)
        cluster.members[primary].agent.wait(timeout=5)
        cluster.kill_postgres(primary)
        for index in replicas:
            cluster.start_agent(index)
        deadline = time.monotonic() + 3 * TTL_S  # a restarted agent waits one ttl first
        async with aiohttp.ClientSession() as session:
            while not found and time.monotonic() < deadline:
                found = await cluster.primaries(session)
                await asyncio.sleep(0.3)
    finally:
        heal_all(cluster)  # the old primary's agent is started again: it may lead again
    assert found and found[0] in replicas, (
        f"no replica took over within {3 * TTL_S:.0f} s of the primary's node dying\n"
        + cluster.logs_tail(5)
    )
