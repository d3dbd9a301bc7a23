"""A two-member cluster (real etcd, real PostgreSQL, agents as processes) whose REST API is
served only over TLS with `verify_client: required`, certificates from a CA made here.

Checks: the members publish `https` API URLs and bootstrap (the replica's peer calls and the
probes all go over TLS); `pgwarden ctl` lists the cluster and switches over with the CA and a
client certificate; plain HTTP and a client without a certificate are refused; a certificate
rotated on disk is served to the next connection by the running agent.
"""

from __future__ import annotations

import io
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from agent import ctl
from tests.support.cluster import E2E_TIMING, TlsCluster, converge

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def started() -> Iterator[TlsCluster]:
    base = Path(tempfile.mkdtemp(prefix="pgwarden-tls-", dir="/tmp"))
    cluster = TlsCluster(
        base=base, size=2, timing=dict(E2E_TIMING), cluster="tls", api_tls=True, pg_tls=False
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


async def _ctl(cluster: TlsCluster, *argv: str) -> tuple[int, str]:
    ca, cert, key = cluster.tls.client_files()
    out, err = io.StringIO(), io.StringIO()
    urls = [a for m in cluster.members for a in ("--url", m.api_url)]
    code = await ctl.run(
        [*urls, "--ca-file", ca, "--cert-file", cert, "--key-file", key, *argv],
        env={"PGWARDEN_TOKEN": cluster.token},
        out=out,
        err=err,
    )
    return code, out.getvalue() + err.getvalue()


def _served_common_name(port: int, cluster: TlsCluster) -> str:
    ctx = cluster.tls.client_context()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value)


async def test_a_tls_cluster_bootstraps_and_switches_over_through_ctl(
    started: TlsCluster,
) -> None:
    first = await converge(started, timeout=60)
    code, text = await _ctl(started, "list")
    assert code == 0, text
    assert "pg-0" in text and "pg-1" in text, text
    async with started.api_session() as session:
        view = await started.cluster_json(session)
    assert view is not None
    members = view["members"]
    assert isinstance(members, list)
    assert all(str(m["api_url"]).startswith("https://") for m in members), view
    code, text = await _ctl(started, "switchover", "--wait", "--timeout", "30")
    assert code == 0, text
    assert await converge(started, timeout=60) != first


async def test_plain_http_and_a_client_without_a_certificate_are_refused(
    started: TlsCluster,
) -> None:
    port = started.members[0].api_port
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://127.0.0.1:{port}/health") as answer:
                await answer.read()
        no_cert = ssl.create_default_context(cafile=started.tls.ca_file)
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"https://127.0.0.1:{port}/health", ssl=no_cert) as answer:
                await answer.read()


async def test_the_running_agent_serves_a_rotated_certificate_without_a_restart(
    started: TlsCluster,
) -> None:
    port = started.members[0].api_port
    process = started.members[0].process
    assert _served_common_name(port, started) in ("api", "rotated")
    started.tls.rotate("api", "rotated")
    assert _served_common_name(port, started) == "rotated"
    assert started.members[0].process is process
    assert process is not None and process.poll() is None
