"""End to end: members whose fencers run outside their agents (`fencer.mode: external`, one
fencer per member started as the sidecar of k8s/examples/fencer-sidecar would be): real etcd,
real PostgreSQL, real agents. A member leads only once its fencer answers, and the external
fencer stops the primary of a frozen agent before its lease can pass to another member.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from agent.localcluster import LocalCluster
from tests.support.cluster import (
    E2E_TIMING,
    converge,
    member_writers,
    new_base,
    new_primary,
    start_first_member,
    started,
    stop_writers,
    wait_until,
)
from tests.support.fencer import Sidecar
from tests.support.pgversions import PgInstall
from tests.support.workload import ensure_table, has_split_brain, writer_sequence

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TTL = E2E_TIMING["ttl_s"]


async def test_members_with_external_fencers_lead_only_with_one_and_are_fenced_by_it(
    pg_install: PgInstall,
) -> None:
    running = LocalCluster(
        base=new_base(),
        timing=dict(E2E_TIMING),
        extra={"fencer": {"mode": "external"}},
        pg_bin=pg_install.bin_dir,
    )
    sidecars = [Sidecar(m.run_dir, m.data_dir) for m in running.members]
    try:
        with started(running, start_first_member):  # etcd and member 0, no fencer yet
            await _lead_only_with_a_fencer(running, sidecars)
            for index in (1, 2):
                sidecars[index].start()
                running.start_member(index)
            old = await converge(running, timeout=90)
            await ensure_table("127.0.0.1", running.members[old].pg_port)
            try:
                await _frozen_primary_is_fenced(running, old)
            finally:
                running.signal_agent(old, signal.SIGCONT)
            assert "fence deadline reached" in sidecars[old].log.read_text()
            # No agent started a fencer of its own (a spawned fencer logs to fencer.log).
            assert not [m.name for m in running.members if (m.run_dir / "fencer.log").exists()]
    finally:
        for sidecar in sidecars:
            sidecar.stop()


async def _lead_only_with_a_fencer(running: LocalCluster, sidecars: list[Sidecar]) -> None:
    async with running.api_session() as session:
        # Without its fencer the only member never leads: no leader, no primary.
        give_up = time.monotonic() + TTL + 2
        while time.monotonic() < give_up:
            view = await running.cluster_json(session)
            assert view is None or not view.get("leader"), view
            assert await running.primary_index(session) is None
            await asyncio.sleep(0.2)
        assert "fencer_unavailable" in running.members[0].log_path.read_text()
        # Its fencer comes up (the kubelet starts the sidecar): it leads.
        sidecars[0].start()

        async def member_0_leads() -> bool:
            return await running.primary_index(session) == 0

        await wait_until(member_0_leads, timeout=60, what="member 0 leading")


async def _frozen_primary_is_fenced(running: LocalCluster, old: int) -> None:
    """The primary's agent frozen: its external fencer stops PostgreSQL before the lease
    can pass on (the checks of test_etcd_cluster.py's frozen-agent test)."""
    old_name = running.members[old].name
    writers = member_writers(running, 200_000)
    for w in writers.values():
        w.start()
    await asyncio.sleep(0.5)
    t_fault = time.monotonic()
    running.signal_agent(old, signal.SIGSTOP)
    new = await new_primary(running, old, timeout=TTL + 10)
    await asyncio.sleep(1.0)
    logs = await stop_writers(writers)
    old_acks = [a.at for a in logs[old_name].acks if a.at >= t_fault]
    new_acks = [a.at for a in logs[running.members[new].name].acks if a.at >= t_fault]
    assert new_acks, "the new primary acknowledged nothing"
    last_old = max(old_acks, default=t_fault)
    assert last_old < min(new_acks), "two members accepted writes at once"
    assert last_old - t_fault < TTL, f"old primary wrote {last_old - t_fault:.2f}s after"
    assert not has_split_brain(writer_sequence(logs, start=t_fault - 1, end=time.monotonic()))
