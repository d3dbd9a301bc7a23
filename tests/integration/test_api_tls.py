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
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme
from cryptography import x509
from cryptography.x509.oid import NameOID

from agent import ctl
from agent.demo import LocalCluster, LocalMember
from tests.support.cluster import E2E_TIMING, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@dataclass(kw_only=True)
class TlsCluster(LocalCluster):
    """Members serving their API over TLS; every member uses the same pair (127.0.0.1)."""

    tls_dir: Path = Path("/nonexistent")

    def config_for(self, member: LocalMember) -> dict[str, object]:
        config = super().config_for(member)
        api = config["api"]
        assert isinstance(api, dict)
        api["tls"] = {
            "cert_file": str(self.tls_dir / "tls.crt"),
            "key_file": str(self.tls_dir / "tls.key"),
            "ca_file": str(self.tls_dir / "ca.pem"),
            "verify_client": "required",
        }
        return config


@dataclass(frozen=True, slots=True)
class Started:
    cluster: TlsCluster
    ca: trustme.CA
    tls_dir: Path

    def write_pair(self, common_name: str) -> None:
        cert = self.ca.issue_cert("127.0.0.1", "localhost", common_name=common_name)
        cert.private_key_pem.write_to_path(str(self.tls_dir / "tls.key"))
        cert.cert_chain_pems[0].write_to_path(str(self.tls_dir / "tls.crt"))

    def client_files(self) -> tuple[str, str, str]:
        """(ca, cert, key) files of a client certificate signed by the cluster's CA."""
        client = self.ca.issue_cert("operator.example", common_name="operator")
        cert, key = self.tls_dir / "client.crt", self.tls_dir / "client.key"
        client.cert_chain_pems[0].write_to_path(str(cert))
        client.private_key_pem.write_to_path(str(key))
        return str(self.tls_dir / "ca.pem"), str(cert), str(key)


@pytest.fixture(scope="module")
def started() -> Iterator[Started]:
    base = Path(tempfile.mkdtemp(prefix="pgwarden-tls-", dir="/tmp"))
    tls_dir = base / "tls"
    tls_dir.mkdir(parents=True)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tls_dir / "ca.pem"))
    made = Started(
        cluster=TlsCluster(
            base=base, size=2, timing=dict(E2E_TIMING), cluster="tls", tls_dir=tls_dir
        ),
        ca=ca,
        tls_dir=tls_dir,
    )
    made.write_pair("first")
    try:
        made.cluster.start()
        yield made
    finally:
        made.cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


async def _ctl(started: Started, *argv: str) -> tuple[int, str]:
    ca, cert, key = started.client_files()
    out, err = io.StringIO(), io.StringIO()
    urls = [a for m in started.cluster.members for a in ("--url", _https(m))]
    code = await ctl.run(
        [*urls, "--ca-file", ca, "--cert-file", cert, "--key-file", key, *argv],
        env={"PGWARDEN_TOKEN": started.cluster.token},
        out=out,
        err=err,
    )
    return code, out.getvalue() + err.getvalue()


def _served_common_name(port: int, started: Started) -> str:
    ca, cert, key = started.client_files()
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value)


def _https(member: LocalMember) -> str:
    return f"https://127.0.0.1:{member.api_port}"


def _session(started: Started) -> aiohttp.ClientSession:
    ca, cert, key = started.client_files()
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx), timeout=aiohttp.ClientTimeout(total=2)
    )


async def _leader_when_converged(started: Started, *, not_this: str | None = None) -> str:
    """Wait (over https) for one primary leader and every other member streaming; its name."""
    found: list[str] = []
    async with _session(started) as session:

        async def ready() -> bool:
            for member in started.cluster.members:
                try:
                    async with session.get(_https(member) + "/cluster") as answer:
                        view = await answer.json()
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    continue
                members = view.get("members", [])
                leaders = [m for m in members if m.get("leader") and m.get("role") == "primary"]
                streaming = [m for m in members if m.get("state") == "streaming"]
                if (
                    len(members) == 2
                    and len(leaders) == 1
                    and len(streaming) == 1
                    and view.get("switchover") is None
                    and leaders[0]["name"] != not_this
                ):
                    found[:] = [leaders[0]["name"]]
                    return True
            return False

        await wait_until(ready, timeout=60, what="a converged TLS cluster")
    return found[0]


async def test_a_tls_cluster_bootstraps_and_switches_over_through_ctl(started: Started) -> None:
    first = await _leader_when_converged(started)
    code, text = await _ctl(started, "list")
    assert code == 0, text
    assert "pg-0" in text and "pg-1" in text, text
    async with (
        _session(started) as session,
        session.get(_https(started.cluster.members[0]) + "/cluster") as answer,
    ):
        view = await answer.json()
    assert all(str(m["api_url"]).startswith("https://") for m in view["members"]), view
    code, text = await _ctl(started, "switchover", "--wait", "--timeout", "30")
    assert code == 0, text
    await _leader_when_converged(started, not_this=first)


async def test_plain_http_and_a_client_without_a_certificate_are_refused(
    started: Started,
) -> None:
    member = started.cluster.members[0]
    port = member.api_port
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://127.0.0.1:{port}/health") as answer:
                await answer.read()
        ca, _, _ = started.client_files()
        no_cert = ssl.create_default_context(cafile=ca)
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"https://127.0.0.1:{port}/health", ssl=no_cert) as answer:
                await answer.read()


async def test_the_running_agent_serves_a_rotated_certificate_without_a_restart(
    started: Started,
) -> None:
    port = started.cluster.members[0].api_port
    pid = started.cluster.members[0].process
    assert _served_common_name(port, started) in ("first", "rotated")
    started.write_pair("rotated")
    assert _served_common_name(port, started) == "rotated"
    assert started.cluster.members[0].process is pid and pid is not None and pid.poll() is None
