"""End to end, the container's way: every agent runs as the `postgres` OS user with
`postgresql.os_user` unset (tests/support/nonroot.py), so the agent, PostgreSQL, pg_rewind
and the fencer are one unprivileged user and nothing switches users (issue 13, item 5).

The core cases of test_etcd_cluster.py on that path: bootstrap, a hard kill of the primary
(failover, then the old primary rewound and streaming again), and the primary's agent
SIGKILLed, where its fencer (the same unprivileged user) must stop PostgreSQL before the
lease can pass on. The members run PostgreSQL with `postgresql.tls`, as the secure
Kubernetes example does (issue 13, item 2, through the agent): every replica streams over
TLS (pg_stat_ssl), after the bootstrap's clones and after the rewind alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pwd
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.cluster import (
    converge,
    member_writers,
    new_primary,
    query_values,
    replicas_stream_over_tls,
    stop_writers,
    wait_until,
)
from tests.support.nonroot import (
    OS_USER,
    NonRootCluster,
    fencer_pids,
    nonroot_cluster,
    nonroot_unavailable,
    process_uid,
)
from tests.support.pgversions import PgInstall
from tests.support.workload import ensure_table, has_split_brain, writer_sequence

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TTL = 6.0


@pytest.fixture(scope="module")
def cluster(pg_install_ssl: PgInstall) -> Iterator[NonRootCluster]:
    reason = nonroot_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with nonroot_cluster(pg=pg_install_ssl, pg_tls=True) as running:
        yield running


async def test_bootstrap_as_postgres_without_os_user_runs_every_process_as_that_user(
    cluster: NonRootCluster,
) -> None:
    primary = await converge(cluster, timeout=60)
    uid = pwd.getpwnam(OS_USER).pw_uid
    for member in cluster.members:
        config = yaml.safe_load(member.config_path.read_text())
        assert "os_user" not in config["postgresql"]
        assert member.process is not None
        postmaster = member.postmaster_pid()
        assert postmaster is not None
        assert process_uid(member.process.pid) == uid, member.name
        assert process_uid(postmaster) == uid, member.name
    leader = cluster.members[primary]
    fencers = fencer_pids(leader.data_dir)
    assert fencers, "the leader runs no fencer"
    assert {process_uid(pid) for pid in fencers} == {uid}
    await ensure_table("127.0.0.1", leader.pg_port)
    await wait_until(
        lambda: replicas_stream_over_tls(cluster, primary),
        timeout=10,
        what="every replica streaming over TLS",
    )


async def test_hard_kill_of_the_primary_fails_over_and_it_is_rewound_back(
    cluster: NonRootCluster,
) -> None:
    old = await converge(cluster)
    writers = member_writers(cluster, 100_000)
    for w in writers.values():
        w.start()
    await asyncio.sleep(0.5)
    t_kill = time.monotonic()
    cluster.kill_member(old)
    new = await new_primary(cluster, old, timeout=TTL + 10)
    await asyncio.sleep(0.5)
    logs = await stop_writers(writers)
    assert not has_split_brain(writer_sequence(logs, start=t_kill - 1, end=time.monotonic()))
    cluster.start_member(old)
    await converge(cluster)

    async def same_rows() -> bool:
        old_rows = await query_values(cluster.members[old].pg_port)
        return old_rows == await query_values(cluster.members[new].pg_port)

    await wait_until(same_rows, timeout=10, what="the rewound member holding the new rows")
    await wait_until(
        lambda: replicas_stream_over_tls(cluster, new),
        timeout=10,
        what="the rewound member streaming over TLS",
    )
    assert _rewound(cluster.members[old].log_path), "the old primary rejoined without a rewind"


def _rewound(log_path: Path) -> bool:
    """The agent's JSON log holds a successful Rewind."""
    for line in log_path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if (
                isinstance(event, dict)
                and event.get("event") == "long_action_done"
                and event.get("action") == "Rewind"
                and event.get("ok") is True
            ):
                return True
    return False


async def test_a_killed_primary_agent_is_fenced_by_its_unprivileged_fencer(
    cluster: NonRootCluster,
) -> None:
    old = await converge(cluster)
    old_name = cluster.members[old].name
    writers = member_writers(cluster, 300_000)
    for w in writers.values():
        w.start()
    await asyncio.sleep(0.5)
    t_fault = time.monotonic()
    cluster.signal_agent(old, signal.SIGKILL)
    new = await new_primary(cluster, old, timeout=TTL + 10)
    await asyncio.sleep(1.0)
    logs = await stop_writers(writers)
    old_acks = [a.at for a in logs[old_name].acks if a.at >= t_fault]
    new_acks = [a.at for a in logs[cluster.members[new].name].acks if a.at >= t_fault]
    assert new_acks, "the new primary acknowledged nothing"
    last_old = max(old_acks, default=t_fault)
    assert last_old < min(new_acks), "two members accepted writes at once"
    assert last_old - t_fault < TTL, f"old primary wrote {last_old - t_fault:.2f}s after the kill"
    assert cluster.members[old].postmaster_pid() is None, "the fencer left PostgreSQL running"
    process = cluster.members[old].process
    assert process is not None
    process.wait()
    cluster.start_member(old)
    await converge(cluster)
