"""End to end with every connection encrypted (issue 13): real etcd, three real PostgreSQL,
three agents serving their API over TLS only with `verify_client: required` and running
PostgreSQL with `postgresql.tls` (hostssl, replication with verify-full), one CA made here
(tests/support/tls.py). Synchronous replication is on, so that no acknowledged write may be
lost across a failover.

The scenarios share the cluster, each from `converge` (which reaches the agents over https
with the test's client certificate, as every helper in tests/support/cluster.py does):
bootstrap with every walsender on TLS; a hard kill of the primary (agent and PostgreSQL,
SIGKILL) under an application writer; a switchover by `pgwarden ctl` over https; a
PostgreSQL certificate rotated on disk and served without a restart.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.cluster import (
    TlsCluster,
    converge,
    local_cluster,
    new_primary,
    query_values,
    replicas_stream_over_tls,
    tls_walsenders,
    wait_until,
)
from tests.support.tls import pg_served_certificate
from tests.support.workload import AppWriter, ensure_table

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TTL = 6.0
REPO = str(Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def cluster() -> Iterator[TlsCluster]:
    with local_cluster(
        extra={"ha": {"synchronous_mode": "on"}}, api_tls=True, pg_tls=True
    ) as running:
        assert isinstance(running, TlsCluster)
        yield running


async def _all_streaming_over_tls(cluster: TlsCluster, primary: int) -> None:
    await wait_until(
        lambda: replicas_stream_over_tls(cluster, primary),
        timeout=15,
        what=f"every replica of {cluster.members[primary].name} streaming over TLS",
    )


async def test_bootstrap_streams_over_tls_and_the_api_refuses_plain_http(
    cluster: TlsCluster,
) -> None:
    primary = await converge(cluster, timeout=60)
    await _all_streaming_over_tls(cluster, primary)
    assert all(member.api_url.startswith("https://") for member in cluster.members)
    async with aiohttp.ClientSession() as plain:
        for member in cluster.members:
            with pytest.raises(aiohttp.ClientError):
                async with plain.get(f"http://127.0.0.1:{member.api_port}/health") as answer:
                    await answer.read()


async def test_a_hard_kill_of_the_primary_loses_no_acknowledged_write_and_stays_on_tls(
    cluster: TlsCluster,
) -> None:
    old = await converge(cluster)
    await ensure_table("127.0.0.1", cluster.members[old].pg_port)
    writer = AppWriter(hosts=[("127.0.0.1", m.pg_port) for m in cluster.members])
    writer.start()
    await asyncio.sleep(1.0)
    cluster.kill_member(old)
    t_kill = time.monotonic()
    new = await new_primary(cluster, old, timeout=TTL + 10)
    await wait_until(
        lambda: _acked_after(writer, t_kill), timeout=10, what="a write on the new primary"
    )
    log = await writer.stop()
    acked = log.acked_values()
    assert acked, "no write was acknowledged"
    missing = acked - await query_values(cluster.members[new].pg_port)
    assert not missing, f"{len(missing)} acknowledged writes lost: {sorted(missing)[:10]}"
    survivor = next(i for i in range(len(cluster.members)) if i not in (old, new))
    await wait_until(
        lambda: _streams_over_tls(cluster, new, cluster.members[survivor].name),
        timeout=15,
        what="the other replica streaming from the new primary over TLS",
    )
    cluster.start_member(old)
    assert await converge(cluster, timeout=60) == new
    await _all_streaming_over_tls(cluster, new)  # the rewound old primary too


async def _acked_after(writer: AppWriter, instant: float) -> bool:
    return writer.log.first_ack_after(instant) is not None


async def _streams_over_tls(cluster: TlsCluster, primary: int, name: str) -> bool:
    return (await tls_walsenders(cluster, primary)).get(name) is True


def _ctl(cluster: TlsCluster, *argv: str) -> subprocess.CompletedProcess[str]:
    """`pgwarden ctl` as a process, told every member's https URL, the token, the CA and
    the client certificate by its environment."""
    ca, cert, key = cluster.tls.client_files()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": REPO,
        "PGWARDEN_URL": ",".join(m.api_url for m in cluster.members),
        "PGWARDEN_TOKEN": cluster.token,
        "PGWARDEN_CA_FILE": ca,
        "PGWARDEN_CERT_FILE": cert,
        "PGWARDEN_KEY_FILE": key,
    }
    return subprocess.run(
        [sys.executable, "-m", "agent", "ctl", *argv],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_ctl_switches_over_through_https_and_the_replicas_follow_over_tls(
    cluster: TlsCluster,
) -> None:
    old = await converge(cluster)
    candidate = next(i for i in range(len(cluster.members)) if i != old)
    name = cluster.members[candidate].name
    done = await asyncio.to_thread(
        _ctl, cluster, "switchover", "--candidate", name, "--wait", "--timeout", "30"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert await converge(cluster, timeout=60) == candidate
    await _all_streaming_over_tls(cluster, candidate)
    listed = await asyncio.to_thread(_ctl, cluster, "list")
    assert listed.returncode == 0, listed.stderr
    assert all(m.name in listed.stdout for m in cluster.members), listed.stdout


async def test_a_rotated_postgres_certificate_is_served_without_a_restart(
    cluster: TlsCluster,
) -> None:
    primary = await converge(cluster)
    postmasters = [m.postmaster_pid() for m in cluster.members]
    renewed = cluster.tls.rotate("pg", "pg-renewed")

    async def every_member_serves_it() -> bool:
        for member in cluster.members:
            served = await pg_served_certificate(member.pg_port, cluster.tls.ca_file)
            if served.serial_number != renewed.serial_number:
                return False
        return True

    # Each agent checks the files every loop_wait_s (1 s here).
    await wait_until(every_member_serves_it, timeout=15, what="the renewed certificate served")
    assert [m.postmaster_pid() for m in cluster.members] == postmasters, "a restart"
    assert await replicas_stream_over_tls(cluster, primary)
