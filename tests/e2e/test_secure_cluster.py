"""End to end with every connection encrypted (issue 13): real etcd, three real PostgreSQL,
three agents serving their API over TLS only with `verify_client: required` and running
PostgreSQL with `postgresql.tls` (hostssl, replication with verify-full), one CA made here
(tests/support/tls.py), and talking to an etcd that serves https only and requires their
client certificate: no network connection between them is in clear. Synchronous replication is on,
so that no acknowledged write may be lost across a failover.

The scenarios share the cluster, each from `converge` (which reaches the agents over https
with the test's client certificate, as every helper in tests/support/cluster.py does):
bootstrap with every walsender on TLS, the API refusing plain HTTP and a client without a
certificate; a hard kill of the primary (agent and PostgreSQL, SIGKILL) under an application
writer; a switchover by `pgwarden ctl` over https; the API's and PostgreSQL's certificates
rotated on disk and served without a restart.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

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
from tests.support.pgversions import PgInstall
from tests.support.tls import pg_served_certificate
from tests.support.workload import AppWriter, ensure_table

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TTL = 6.0
REPO = str(Path(__file__).resolve().parents[2])


@pytest.fixture(scope="module")
def cluster(pg_install_ssl: PgInstall) -> Iterator[TlsCluster]:
    with local_cluster(
        extra={"ha": {"synchronous_mode": "on"}},
        api_tls=True,
        pg_tls=True,
        etcd_tls=True,
        pg=pg_install_ssl,
    ) as running:
        assert isinstance(running, TlsCluster)
        yield running


async def _all_streaming_over_tls(cluster: TlsCluster, primary: int) -> None:
    await wait_until(
        lambda: replicas_stream_over_tls(cluster, primary),
        timeout=15,
        what=f"every replica of {cluster.members[primary].name} streaming over TLS",
    )


async def test_bootstrap_streams_over_tls_and_the_api_refuses_plain_http_and_no_certificate(
    cluster: TlsCluster,
) -> None:
    primary = await converge(cluster, timeout=60)
    await _all_streaming_over_tls(cluster, primary)
    async with cluster.api_session() as session:
        view = await cluster.cluster_json(session)
    assert view is not None and isinstance(view["members"], list)
    published = [str(m["api_url"]) for m in view["members"]]
    assert all(url.startswith("https://") for url in published), published
    no_certificate = ssl.create_default_context(cafile=cluster.tls.ca_file)
    async with aiohttp.ClientSession() as client:
        for member in cluster.members:
            with pytest.raises(aiohttp.ClientError):
                async with client.get(f"http://127.0.0.1:{member.api_port}/health") as answer:
                    await answer.read()
            with pytest.raises(aiohttp.ClientError):
                async with client.get(member.api_url + "/health", ssl=no_certificate) as answer:
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


def _ctl(cluster: TlsCluster, *argv: str, flags: bool = False) -> subprocess.CompletedProcess[str]:
    """`pgwarden ctl` as a process, told every member's https URL and the token by its
    environment, the CA and the client certificate by its environment or (`flags`) by
    --ca-file, --cert-file and --key-file."""
    ca, cert, key = cluster.tls.client_files()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": REPO,
        "PGWARDEN_URL": ",".join(m.api_url for m in cluster.members),
        "PGWARDEN_TOKEN": cluster.token,
    }
    if flags:
        argv = ("--ca-file", ca, "--cert-file", cert, "--key-file", key, *argv)
    else:
        env |= {"PGWARDEN_CA_FILE": ca, "PGWARDEN_CERT_FILE": cert, "PGWARDEN_KEY_FILE": key}
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
    listed = await asyncio.to_thread(partial(_ctl, cluster, "list", flags=True))
    assert listed.returncode == 0, listed.stderr
    assert all(m.name in listed.stdout for m in cluster.members), listed.stdout


async def test_rotated_certificates_are_served_without_a_restart(cluster: TlsCluster) -> None:
    primary = await converge(cluster)
    agents = [m.process for m in cluster.members]
    postmasters = [m.postmaster_pid() for m in cluster.members]
    renewed_pg = cluster.tls.rotate("pg", "pg-renewed")
    renewed_api = cluster.tls.rotate("api", "api-renewed")

    async def every_member_serves_them() -> bool:
        for member in cluster.members:
            pg = await pg_served_certificate(member.pg_port, cluster.tls.ca_file)
            api = await asyncio.to_thread(_api_served_certificate, cluster, member.api_port)
            if (pg.serial_number, api.serial_number) != (
                renewed_pg.serial_number,
                renewed_api.serial_number,
            ):
                return False
        return True

    # The API checks its files at every handshake; PostgreSQL's every loop_wait_s (1 s here).
    await wait_until(every_member_serves_them, timeout=15, what="the renewed certificates")
    assert [m.process for m in cluster.members] == agents
    assert all(p is not None and p.poll() is None for p in agents), "an agent stopped"
    assert [m.postmaster_pid() for m in cluster.members] == postmasters, "a restart"
    assert await replicas_stream_over_tls(cluster, primary)


def _api_served_certificate(cluster: TlsCluster, port: int) -> x509.Certificate:
    context = cluster.tls.client_context()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)
