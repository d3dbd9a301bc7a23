"""The migration from the Endpoints lock to the Lease lock (docs/kubernetes.md, "Migrating
from the Endpoints lock"): two rolling updates, `endpoints` -> `endpoints-and-lease` ->
`lease`. During each, agents of the two adjacent kinds run side by side against one API
server; they must never both hold leadership, because the kinds of each pair share a lock
object (the Endpoints in the first step, the Lease in the second)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.config import LockKind
from agent.dcs.kubernetes import KubernetesDcs
from tests.integration.k8s.test_kubernetes_dcs import (
    NAMESPACE,
    TTL_S,
    KubeContractCluster,
    contract_cluster,
)
from tests.k8s_apiserver import Fault, FaultMode
from tests.k8s_apiserver.errors import ApiError

pytestmark = pytest.mark.integration

OLD, STEP, NEW = LockKind.ENDPOINTS, LockKind.ENDPOINTS_AND_LEASE, LockKind.LEASE


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[KubeContractCluster]:
    async with contract_cluster(tmp_path, OLD) as c:
        yield c


async def leaders(handles: list[KubernetesDcs]) -> set[str]:
    """The leader each handle reads (None counted out)."""
    names: set[str] = set()
    for handle in handles:
        view = await handle.get_cluster()
        if view.leader is not None:
            names.add(view.leader.name)
    return names


async def test_a_migration_step_agent_and_an_endpoints_agent_exclude_each_other(
    cluster: KubeContractCluster,
) -> None:
    old, step = cluster.make_kube("old", lock=OLD), cluster.make_kube("step", lock=STEP)
    assert await old.acquire_leader()
    assert not await step.acquire_leader()
    # The step agent stopped at the Endpoints: it never touched the Lease.
    with pytest.raises(ApiError):
        cluster.server.store.get(cluster.leases, NAMESPACE, f"{cluster.cluster}-leader")
    assert await leaders([old, step]) == {"old"}
    await old.release_leader()
    assert await step.acquire_leader()
    assert not await old.acquire_leader()
    assert await step.renew_leader()
    assert await leaders([old, step]) == {"step"}


async def test_a_lease_agent_and_a_migration_step_agent_exclude_each_other(
    cluster: KubeContractCluster,
) -> None:
    step, new = cluster.make_kube("step", lock=STEP), cluster.make_kube("new", lock=NEW)
    assert await step.acquire_leader()
    assert not await new.acquire_leader()
    assert await leaders([step, new]) == {"step"}
    await step.release_leader()
    # The release emptied the Endpoints too: no old-style route is left behind.
    endpoints = cluster.server.store.get(cluster.lock_res, NAMESPACE, cluster.cluster)
    assert endpoints.get("subsets") in (None, [])
    assert await new.acquire_leader()
    # The step agent takes the Endpoints, fails on the Lease, and gives the Endpoints back.
    assert not await step.acquire_leader()
    endpoints = cluster.server.store.get(cluster.lock_res, NAMESPACE, cluster.cluster)
    assert "pgwarden.io/leader" not in (endpoints["metadata"].get("annotations") or {})
    assert await leaders([step, new]) == {"new"}


async def race(others: list[KubernetesDcs], holder: KubernetesDcs | None) -> list[KubernetesDcs]:
    """One round: `others` try to acquire while `holder` (if any) renews; who holds after."""
    won = await asyncio.gather(*(h.acquire_leader() for h in others))
    held = [h for h, ok in zip(others, won, strict=True) if ok]
    if holder is not None and await holder.renew_leader():
        held.append(holder)
    return held


@pytest.mark.parametrize("pair", [(OLD, STEP), (STEP, NEW)], ids=["step-1", "step-2"])
async def test_racing_agents_of_adjacent_kinds_never_hold_leadership_together(
    cluster: KubeContractCluster, pair: tuple[LockKind, LockKind]
) -> None:
    """Four agents, two of each kind, race for leadership round after round; the holder
    releases, or (twice) dies silently and its lease lapses. At no point do two hold it."""
    rng = random.Random(15)
    names = {
        cluster.make_kube(f"{kind.value}-{i}", lock=kind): f"{kind.value}-{i}"
        for i in range(2)
        for kind in pair
    }
    handles = list(names)
    for handle in handles:
        await handle.get_cluster()
    holder: KubernetesDcs | None = None
    dies = {3, 7}
    lapsing = False  # the last holder died: its lease lapses on each observer's own clock
    for round_no in range(10):
        others = [h for h in handles if h is not holder]
        held = await race(others, holder)
        # Each observer times a lapse from its own first sight of the dead holder's last
        # write, which a loaded machine may deliver late: nobody may win the first race yet,
        # but one must within a ttl more, and never two.
        deadline = asyncio.get_running_loop().time() + TTL_S
        while lapsing and not held and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
            held = await race(others, None)
        lapsing = False
        assert len(held) == 1, f"round {round_no}: {[names[h] for h in held]} hold leadership"
        holder = held[0]
        assert await leaders(handles) == {names[holder]}
        if round_no in dies:
            handles.remove(holder)  # it stops renewing: the others wait out its lease
            for handle in handles:
                await handle.get_cluster()
            await asyncio.sleep(TTL_S + 0.3)
            holder, lapsing = None, True
        elif rng.random() < 0.7:
            await holder.release_leader()
            holder = None


async def test_a_lease_agent_never_takes_over_from_a_live_endpoints_leader(
    cluster: KubeContractCluster,
) -> None:
    """A skipped migration step (review R7): `lease` agents started next to `endpoints`
    agents. The Lease is free, but the Endpoints lock names a live leader: the `lease` agent
    refuses (and says why) for as long as that leader renews, and takes the Lease once it
    releases."""
    old, new = cluster.make_kube("old", lock=OLD), cluster.make_kube("new", lock=NEW)
    assert await old.acquire_leader()
    with capture_logs() as logs:
        for _ in range(3):  # past a ttl: a live leader's renewals keep it live
            assert not await new.acquire_leader()
            await asyncio.sleep(TTL_S / 2)
            assert await old.renew_leader()
    with pytest.raises(ApiError):  # never touched
        cluster.server.store.get(cluster.leases, NAMESPACE, f"{cluster.cluster}-leader")
    refusals = [e for e in logs if e["event"] == "dcs_acquire_refused_endpoints_lock"]
    assert len(refusals) == 1 and refusals[0]["holder"] == "old", logs
    await old.release_leader()
    assert await new.acquire_leader()
    assert await leaders([old, new]) == {"new"}


async def test_a_lease_agent_waits_out_a_dead_endpoints_leader_for_one_ttl(
    cluster: KubeContractCluster,
) -> None:
    old, new = cluster.make_kube("old", lock=OLD), cluster.make_kube("new", lock=NEW)
    assert await old.acquire_leader()
    assert not await new.acquire_leader()  # first seen now: a full ttl on the new one's clock
    await asyncio.sleep(TTL_S - 0.5)
    assert not await new.acquire_leader()
    await asyncio.sleep(1.0)  # the old leader stopped renewing a ttl ago
    assert await new.acquire_leader()


async def test_a_role_without_endpoints_get_leaves_the_lease_agent_unguarded_not_stuck(
    cluster: KubeContractCluster,
) -> None:
    """A Role written before the guard (no `get` on endpoints): logged once, then the Lease
    is taken as before."""
    new = cluster.make_kube("new", lock=NEW)
    cluster.server.faults.set(
        Fault(
            mode=FaultMode.ERROR,
            status=403,
            path_prefix=f"/api/v1/namespaces/{NAMESPACE}/endpoints",
            methods=("GET",),
        )
    )
    with capture_logs() as logs:
        assert await new.acquire_leader()
        await new.release_leader()
        assert await new.acquire_leader()
    unchecked = [e for e in logs if e["event"] == "dcs_endpoints_lock_unchecked"]
    assert len(unchecked) == 1
