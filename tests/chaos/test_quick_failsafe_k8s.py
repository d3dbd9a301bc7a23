"""The quick chaos profile with failsafe mode on and the Kubernetes API as the DCS (the
in-tree test API server, lock `endpoints`): DCS outages the members can still talk through
keep the same primary, with writes never stopping for as long as 1 s.

A module of its own: each module-scoped cluster keeps the test thread in its client network
namespace, and the clusters of one run share their addresses, so two clusters of one module
would talk to each other's members (test_quick_failsafe.py has the etcd cluster).
Scenario names get " [k8s, failsafe]".
"""

from __future__ import annotations

import pytest

from tests.chaos.cluster import QUICK_TIMING
from tests.chaos.nemesis import nemeses
from tests.chaos.runner import Runner
from tests.chaos.test_quick import assert_invariants
from tests.chaos.test_quick_failsafe import MAX_UNAVAILABILITY_S, _details

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

TTL_S = QUICK_TIMING["ttl_s"]
K8S_HOLDS = ("primary-cut-from-dcs", "dcs-frozen")
K8S = {n.name: n for n in nemeses(TTL_S, dcs="kubernetes")}


@pytest.mark.parametrize("name", K8S_HOLDS)
async def test_with_failsafe_and_the_kubernetes_dcs_an_outage_keeps_the_primary(
    failsafe_k8s_runner: Runner, name: str
) -> None:
    result = await failsafe_k8s_runner.run(K8S[name])
    assert_invariants(result, failsafe_k8s_runner)
    why = _details(result, failsafe_k8s_runner)
    assert result.primary_after == result.primary_before, why
    assert result.write_unavailability_s < MAX_UNAVAILABILITY_S, why
    assert result.lost == 0, why
