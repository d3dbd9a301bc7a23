"""The quick chaos profile with the Kubernetes API as the DCS: the in-tree test API server
(tests/k8s_apiserver) on its own host instead of 3 etcd hosts, lock kind `endpoints`, one pod
object per member (podIP = the member host's address), asynchronous replication.

The faults that end in a failover or a DCS outage run once each, mapped onto the API server
(see nemesis.py): the primary cut from it, the primary isolated, its agent SIGKILLed,
SIGSTOPped or SIGTERMed, its PostgreSQL SIGKILLed, and the API server's host cut from every
host (`dcs-majority-cut`) or the server frozen (`dcs-frozen`). The checks are test_quick.py's:
no split-brain instant, convergence within the bound, no divergence, and the frozen- and
killed-agent scenarios lose no acknowledged write. Names get a " [k8s]" suffix.
"""

from __future__ import annotations

import pytest

from tests.chaos.cluster import QUICK_TIMING
from tests.chaos.nemesis import Nemesis, nemeses
from tests.chaos.runner import Runner
from tests.chaos.test_quick import assert_invariants

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

SCENARIOS = (
    "primary-cut-from-dcs",
    "primary-isolated",
    "dcs-majority-cut",
    "dcs-frozen",
    "primary-agent-sigkill",
    "primary-agent-sigstop",
    "primary-postgres-sigkill",
    "primary-agent-sigterm",
)
K8S = {n.name: n for n in nemeses(QUICK_TIMING["ttl_s"], dcs="kubernetes") if n.name in SCENARIOS}


@pytest.mark.parametrize("name", SCENARIOS)
async def test_with_the_kubernetes_dcs_no_fault_causes_split_brain_loss_or_divergence(
    k8s_runner: Runner, name: str
) -> None:
    nemesis: Nemesis = K8S[name]
    result = await k8s_runner.run(nemesis)
    assert_invariants(result, k8s_runner)
