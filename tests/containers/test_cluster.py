"""Three containers of the real image, hardened like the pods, with either DCS: an etcd on
the host, or the in-tree test API server with the service-account token and CA mounted
where Kubernetes mounts them.

The scenarios share one cluster per DCS (tests/support/containers.py: read-only root
filesystem, no capabilities, no-new-privileges, uid 999, the fsGroup-shaped emptyDir at
/run/pgwarden, the shipped settings `k8s/base/config/00-base.yaml` with its timings: ttl
10 s). Each starts by waiting for a converged cluster, so one that fails half-way does not
fail the next. An application writer (libpq multi-host, target_session_attrs=read-write, one
insert every 50 ms) measures how long writes stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.support.container_dcs import etcd_cluster, kubernetes_cluster
from tests.support.containers import (
    POSTGRES_UID,
    ContainerMember,
    PodmanCluster,
    first_write_elsewhere,
    fresh_values,
    make_pod_volumes,
    podman,
)
from tests.support.etcd import EtcdCluster
from tests.support.workload import AppWriter, WriterLog, ensure_table

pytestmark = [pytest.mark.containers, pytest.mark.timeout(600)]

TTL_S = 10.0  # timing.ttl_s in k8s/base/config/00-base.yaml
BOOTSTRAP_TIMEOUT_S = 120.0
FAILOVER_MARGIN_S = 1.5


@pytest.fixture(scope="module", params=["etcd", "kubernetes"])
def cluster(
    request: pytest.FixtureRequest,
    etcd1_cluster: EtcdCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PodmanCluster]:
    base = tmp_path_factory.mktemp(f"containers-{request.param}")
    if request.param == "etcd":
        yield from started(etcd_cluster(base, etcd1_cluster.endpoints))
    else:
        with kubernetes_cluster(base) as running:
            yield from started(running)


def started(running: PodmanCluster) -> Iterator[PodmanCluster]:
    try:
        with pytest.MonkeyPatch.context() as patch:
            # The shipped pg_hba asks every client for a password (scram-sha-256).
            patch.setenv("PGPASSWORD", running.superuser_password)
            running.start_all()
            yield running
    finally:
        running.remove_all()


async def converge(cluster: PodmanCluster) -> int:
    """Each scenario starts here: containers an earlier scenario left stopped (it failed
    half-way) are started again, then one primary and two streaming replicas; its index."""
    await asyncio.to_thread(cluster.revive)
    return await cluster.wait_converged(BOOTSTRAP_TIMEOUT_S)


def hosts(cluster: PodmanCluster) -> list[tuple[str, int]]:
    return [("127.0.0.1", m.pg_port) for m in cluster.members]


async def sql(port: int, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", timeout=5)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query)
        return rows
    finally:
        await conn.close()


async def new_primary(cluster: PodmanCluster, old: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            index = await cluster.primary_index(session)
            if index is not None and index != old:
                return index
            await asyncio.sleep(0.1)
    raise AssertionError(f"no new primary within {timeout} s:\n{cluster.diagnose()}")


async def first_write_elsewhere_within(
    writer: AppWriter, at: float, old: ContainerMember, timeout: float
) -> float | None:
    """When the writer first got a write acknowledged by another member than `old` after
    `at` (waiting up to `timeout`)."""
    deadline = time.monotonic() + timeout
    while (first := first_write_elsewhere(writer.log, at, old)) is None:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    return first


def status_line(cluster: PodmanCluster, index: int, key: str) -> str:
    """A line of /proc/1/status (tini, PID 1) inside the container: what the runtime gave."""
    result = cluster.exec(index, "grep", f"^{key}:", "/proc/1/status")
    assert result.returncode == 0, result.stderr
    return result.stdout.split(":", 1)[1].strip()


async def test_three_hardened_containers_bootstrap_one_primary_and_two_replicas(
    cluster: PodmanCluster,
) -> None:
    primary = await converge(cluster)
    for index in range(len(cluster.members)):
        # The hardening the pods have, as the kernel sees it for PID 1.
        assert status_line(cluster, index, "CapEff") == "0000000000000000"
        assert status_line(cluster, index, "NoNewPrivs") == "1"
        assert status_line(cluster, index, "Uid").split()[0] == str(POSTGRES_UID)
        assert cluster.exec(index, "cat", "/proc/1/comm").stdout.strip() == "tini"
        touched = cluster.exec(index, "touch", "/probe")
        assert touched.returncode != 0 and "Read-only file system" in touched.stderr
        # The emptyDir as fsGroup leaves it (the issue 10 crash-loop), and the private
        # directory the entrypoint made inside it for the sockets and the settings.
        stat = cluster.exec(
            index, "stat", "-c", "%u %g %a", "/run/pgwarden", "/run/pgwarden/private"
        )
        assert stat.stdout.split("\n")[:2] == ["0 999 2777", f"{POSTGRES_UID} 999 700"]
    port = cluster.members[primary].pg_port
    await ensure_table("127.0.0.1", port)
    writer = AppWriter(hosts=hosts(cluster), start_value=fresh_values())
    writer.start()
    await asyncio.sleep(0.5)
    log = await writer.stop()
    assert log.acks, "no write was acknowledged"
    # Streaming to both replicas; PostgreSQL runs without JIT (its LLVM is not in the image).
    for member in cluster.members:
        assert await replicated(member.pg_port, log), member.name
    rows = await sql(port, "SELECT pg_jit_available() AS jit")
    assert rows[0]["jit"] is False


async def replicated(port: int, log: WriterLog, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await sql(port, "SELECT value FROM pgwarden_probe")
        if log.acked_values() <= {r["value"] for r in rows}:
            return True
        await asyncio.sleep(0.2)
    return False


async def test_podman_stop_of_the_primary_hands_over_through_tini_well_within_the_ttl(
    cluster: PodmanCluster,
) -> None:
    """`podman stop` sends SIGTERM to PID 1, tini; tini forwards it to the agent, which hands
    over to a replica and exits 0. Without the forwarding the agent would get SIGKILL after
    the grace period (exit 137) and the replicas would wait out the lease (a ttl)."""
    primary = await converge(cluster)
    await ensure_table("127.0.0.1", cluster.members[primary].pg_port)
    writer = AppWriter(hosts=hosts(cluster), start_value=fresh_values())
    writer.start()
    await asyncio.sleep(1.0)
    stopped_at = time.monotonic()
    took = await asyncio.to_thread(cluster.stop, primary)
    successor = await new_primary(cluster, primary, timeout=TTL_S)
    await asyncio.sleep(1.0)
    log = await writer.stop()
    gap = log.longest_gap(stopped_at, time.monotonic())
    state = cluster.state(primary)
    assert state["ExitCode"] == 0, cluster.logs(primary)[-3000:]
    assert took < 30, took
    assert any(e.get("event") == "agent_stopped" for e in cluster.log_events(primary))
    assert successor != primary
    # A hand-over, not a lease expiry: the replicas would wait most of a ttl for that.
    assert gap < TTL_S / 2, f"writes stopped for {gap:.2f} s"
    # Back as a replica of the new primary.
    await asyncio.to_thread(cluster.start, primary)
    assert await cluster.wait_converged(BOOTSTRAP_TIMEOUT_S) == successor
    assert await replicated(cluster.members[primary].pg_port, log)


async def test_podman_kill_of_the_primary_fails_over_about_a_ttl_later_and_it_rejoins(
    cluster: PodmanCluster,
) -> None:
    """SIGKILL of the whole container (agent, fencer, PostgreSQL): a replica takes over once
    the lease expires, at most a ttl after the kill; restarted, the old primary is rewound and
    streams from the new one with every acknowledged write."""
    primary = await converge(cluster)
    await ensure_table("127.0.0.1", cluster.members[primary].pg_port)
    writer = AppWriter(hosts=hosts(cluster), start_value=fresh_values())
    writer.start()
    await asyncio.sleep(1.0)
    killed_at = time.monotonic()
    await asyncio.to_thread(cluster.kill, primary)
    successor = await new_primary(cluster, primary, timeout=TTL_S + 10)
    first = await first_write_elsewhere_within(
        writer, killed_at, cluster.members[primary], timeout=TTL_S + 10
    )
    log = await writer.stop()
    assert first is not None, f"no write after the kill ({log.attempts} attempts)"
    failover_s = first - killed_at
    # The lease ends at most a ttl after the kill (its last renewal came before the kill);
    # then the replicas see the key go, one promotes and the writer reconnects: a median of
    # 9.3 s (bench/containers.py). The margin covers those steps on a loaded machine.
    assert failover_s < TTL_S + FAILOVER_MARGIN_S, f"failover took {failover_s:.2f} s"
    assert cluster.state(primary)["ExitCode"] == 137
    await asyncio.to_thread(cluster.start, primary)
    assert await cluster.wait_converged(BOOTSTRAP_TIMEOUT_S) == successor
    assert await replicated(cluster.members[primary].pg_port, log)


def test_a_socket_directory_on_the_fsgroup_mount_point_itself_is_refused(
    cluster: PodmanCluster, tmp_path: Path
) -> None:
    """The control for the fsGroup case above: the same mount, named directly as the socket
    directory, is what crash-looped before issue 10 (the entrypoint refuses a directory it
    does not own, exit 2). So the mount really is root-owned, and the shipped settings work
    because they name the private subdirectory."""
    refused = dataclasses.replace(
        cluster.members[0],
        container=f"{cluster.prefix}-refused",
        volume=tmp_path / "volume",
        run_volume=tmp_path / "run",
    )
    make_pod_volumes(refused)
    args = cluster.run_args(refused, "PGWARDEN_POSTGRESQL__SOCKET_DIR=/run/pgwarden")
    try:
        done = subprocess.run(
            ["podman", *[a for a in args if a != "--detach"]],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        podman("rm", "--force", refused.container, check=False)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "socket directory /run/pgwarden: owned by uid 0" in done.stderr
