"""The REST API over TLS (api.tls): served on loopback by `start_api`, certificates from a CA
made here with trustme; the client side is the one peers use (`ReloadingTls.client`,
`HttpPeers`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import structlog
import trustme

from agent.api import start_api
from agent.api.tls import ReloadingTls
from agent.api_settings import ApiTlsSettings, ClientVerify
from agent.clock import FakeClock
from agent.config import (
    ApiSettings,
    DcsKind,
    DcsSettings,
    EtcdSettings,
    InvalidSettings,
    PostgresSettings,
    Secret,
    Settings,
)
from agent.http.routing import App, Request, Response, json_response
from agent.model import Member, MemberName, PgState, Role
from agent.peers import HttpPeers
from tests.support.ports import free_port
from tests.unit.test_config import has_problem, load, problems_of, with_changes


@dataclass
class Pki:
    ca: trustme.CA
    dir: Path
    ca_file: Path
    cert_file: Path
    key_file: Path

    def write_pair(self, common_name: str, ca: trustme.CA | None = None) -> None:
        """A new certificate for 127.0.0.1 named `common_name`, written over the old pair."""
        cert = (ca or self.ca).issue_cert("127.0.0.1", "localhost", common_name=common_name)
        cert.private_key_pem.write_to_path(str(self.key_file))
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))

    def settings(self, verify_client: ClientVerify = ClientVerify.OFF) -> ApiTlsSettings:
        return ApiTlsSettings(
            cert_file=str(self.cert_file),
            key_file=str(self.key_file),
            ca_file=str(self.ca_file),
            verify_client=verify_client,
        )

    def client_context(self, *, with_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if with_cert:
            self.ca.issue_cert("client.example", common_name="client").configure_cert(ctx)
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    made = Pki(
        ca=ca,
        dir=tmp_path,
        ca_file=tmp_path / "ca.pem",
        cert_file=tmp_path / "tls.crt",
        key_file=tmp_path / "tls.key",
    )
    ca.cert_pem.write_to_path(str(made.ca_file))
    made.write_pair("first")
    return made


async def _health(request: Request) -> Response:
    return json_response({"role": "primary", "state": "running", "timeline": 1})


@dataclass
class Served:
    url: str
    port: int
    tls: ReloadingTls


async def _serve(pki: Pki, verify_client: ClientVerify) -> AsyncIterator[Served]:
    app = App()
    app.add_get("/health", _health)
    settings = ApiSettings(port=free_port(), insecure_no_auth=True, tls=pki.settings(verify_client))
    tls = ReloadingTls(pki.settings(verify_client))
    server = await start_api(app, settings, tls)
    try:
        yield Served(url=settings.url, port=settings.port, tls=tls)
    finally:
        await server.close()


@pytest.fixture
async def served(pki: Pki) -> AsyncIterator[Served]:
    async for s in _serve(pki, ClientVerify.OFF):
        yield s


@pytest.fixture
async def served_mtls(pki: Pki) -> AsyncIterator[Served]:
    async for s in _serve(pki, ClientVerify.REQUIRED):
        yield s


async def _get(url: str, ctx: ssl.SSLContext | bool) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/health", ssl=ctx, timeout=aiohttp.ClientTimeout(total=5)) as resp,
    ):
        return resp.status


async def _served_common_name(port: int, ctx: ssl.SSLContext) -> str:
    """The common name of the certificate a new connection is served."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        cert = writer.get_extra_info("ssl_object").getpeercert()
    finally:
        writer.close()
    names = {k: v for rdn in cert["subject"] for k, v in rdn}
    return str(names["commonName"])


# ------------------------------------------------------------------------- serving


async def test_the_api_is_served_over_tls_and_its_url_is_https(pki: Pki, served: Served) -> None:
    assert served.url.startswith("https://127.0.0.1:")
    assert await _get(served.url, pki.client_context()) == 200


async def test_plain_http_is_not_served_when_tls_is_on(served: Served) -> None:
    with pytest.raises(aiohttp.ClientError):
        await _get(f"http://127.0.0.1:{served.port}", False)


async def test_a_client_that_does_not_trust_the_ca_is_refused(served: Served) -> None:
    other = ssl.create_default_context(cafile=None)
    trustme.CA().configure_trust(other)
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _get(served.url, other)


async def test_verify_client_required_refuses_a_client_without_a_certificate(
    pki: Pki, served_mtls: Served
) -> None:
    with pytest.raises(aiohttp.ClientError):
        await _get(served_mtls.url, pki.client_context())
    assert await _get(served_mtls.url, pki.client_context(with_cert=True)) == 200


async def test_verify_client_required_refuses_a_certificate_from_another_ca(
    pki: Pki, served_mtls: Served
) -> None:
    ctx = pki.client_context()
    trustme.CA().issue_cert("client.example").configure_cert(ctx)
    with pytest.raises(aiohttp.ClientError):
        await _get(served_mtls.url, ctx)


# ------------------------------------------------------------------------- rotation


async def test_a_rotated_pair_is_served_to_the_next_connection_without_a_restart(
    pki: Pki, served: Served
) -> None:
    assert await _served_common_name(served.port, pki.client_context()) == "first"
    pki.write_pair("second")
    assert await _served_common_name(served.port, pki.client_context()) == "second"


async def test_a_bad_new_pair_keeps_the_old_certificate_and_logs_an_error(
    pki: Pki, served: Served
) -> None:
    good_key = pki.key_file.read_bytes()
    pki.write_pair("second")
    pki.key_file.write_bytes(good_key)  # the key of "first": it does not match "second"
    with structlog.testing.capture_logs() as logs:
        assert await _served_common_name(served.port, pki.client_context()) == "first"
        assert await _served_common_name(served.port, pki.client_context()) == "first"
    assert [e["event"] for e in logs] == ["api_tls_reload_failed"]  # once, not per connection
    pki.write_pair("third")  # the operator fixes it
    assert await _served_common_name(served.port, pki.client_context()) == "third"


async def test_a_half_written_certificate_keeps_the_old_one(pki: Pki, served: Served) -> None:
    pki.cert_file.write_text("-----BEGIN CERTIFICATE-----\nMIIB")
    assert await _served_common_name(served.port, pki.client_context()) == "first"


def test_the_agent_does_not_start_with_a_pair_that_does_not_load(pki: Pki) -> None:
    pki.key_file.write_text("not a key")
    with pytest.raises(ssl.SSLError):
        ReloadingTls(pki.settings())


# ------------------------------------------------------------------------- peers


def _settings(tls: ApiTlsSettings) -> Settings:
    return Settings(
        name="a",
        cluster="demo",
        run_dir="/nonexistent/run",
        dcs=DcsSettings(kind=DcsKind.ETCD, etcd=EtcdSettings(endpoints=("http://127.0.0.1:1",))),
        postgresql=PostgresSettings(data_dir="/nonexistent/data"),
        api=ApiSettings(token=Secret("t"), tls=tls, port=free_port()),
    )


async def _peer_reachable(url: str, pki: Pki, tls: ReloadingTls) -> bool:
    peers = HttpPeers(_settings(pki.settings()), FakeClock(), tls.client)
    try:
        (status,) = await peers.health(
            [
                Member(
                    name=MemberName("b"),
                    role=Role.PRIMARY,
                    state=PgState.RUNNING,
                    api_url=url,
                    host="127.0.0.1",
                    port=5432,
                )
            ]
        )
        return status.reachable
    finally:
        await peers.close()


async def test_a_peer_with_a_verified_certificate_is_reachable(pki: Pki, served: Served) -> None:
    assert await _peer_reachable(served.url, pki, served.tls)


async def test_a_peer_whose_certificate_does_not_verify_is_unreachable(
    pki: Pki, served: Served
) -> None:
    pki.write_pair("impostor", ca=trustme.CA())
    assert not await _peer_reachable(served.url, pki, ReloadingTls(pki.settings()))


async def test_peers_present_their_certificate_when_clients_are_verified(
    pki: Pki, served_mtls: Served
) -> None:
    assert await _peer_reachable(served_mtls.url, pki, served_mtls.tls)


# ------------------------------------------------------------------------- settings


def test_verify_client_needs_a_ca_file(pki: Pki) -> None:
    with pytest.raises(InvalidSettings, match="verify_client"):
        ApiTlsSettings(
            cert_file=str(pki.cert_file),
            key_file=str(pki.key_file),
            verify_client=ClientVerify.REQUIRED,
        )


def test_an_http_connect_url_is_refused_with_tls(pki: Pki) -> None:
    with pytest.raises(InvalidSettings, match="connect_url"):
        ApiSettings(connect_url="http://db1:8008", insecure_no_auth=True, tls=pki.settings())


def test_api_tls_loads_from_the_configuration_file_and_makes_the_url_https(
    pki: Pki, tmp_path: Path
) -> None:
    document = with_changes(
        {
            "api.tls": {
                "cert_file": str(pki.cert_file),
                "key_file": str(pki.key_file),
                "ca_file": str(pki.ca_file),
                "verify_client": "required",
            }
        }
    )
    api = load(tmp_path, document).api
    assert api.tls == pki.settings(ClientVerify.REQUIRED)
    assert api.url == "https://127.0.0.1:8008"


def test_api_tls_without_a_key_or_with_a_missing_file_is_refused(tmp_path: Path) -> None:
    document = with_changes({"api.tls": {"cert_file": str(tmp_path / "nope.crt")}})
    problems = problems_of(tmp_path, document)
    assert has_problem(problems, "api.tls.key_file", "required")
    assert has_problem(problems, "api.tls.cert_file", "does not exist")


async def test_verify_client_optional_serves_a_client_without_a_certificate_but_not_a_bad_one(
    pki: Pki,
) -> None:
    async for served in _serve(pki, ClientVerify.OPTIONAL):
        assert await _get(served.url, pki.client_context()) == 200
        assert await _get(served.url, pki.client_context(with_cert=True)) == 200
        foreign = pki.client_context()
        trustme.CA().issue_cert("client.example").configure_cert(foreign)
        with pytest.raises(aiohttp.ClientError):
            await _get(served.url, foreign)
