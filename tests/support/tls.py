"""TLS for test clusters: a CA made in the test (trustme), the files the agents are given, a
client certificate for the tests' own requests, and what a server presents.

One `ClusterPki` per cluster directory: `ca.crt`; the REST API's pair `api.crt`/`api.key` and
PostgreSQL's pair `pg.crt`/`pg.key` (both for 127.0.0.1, every member on this host shares
them, as loose as a Secret mounted with mode 0644: the agent makes PostgreSQL's copy of the
key private); `client.crt`/`client.key` for the tests and `pgwarden ctl`. `rotate` writes a
new pair in place, as a Secret update does.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import trustme
from cryptography import x509

from agent.postgres_settings import PostgresTls

HOST = "127.0.0.1"
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)  # PostgreSQL's SSLRequest message


@dataclass(frozen=True, slots=True)
class ClusterPki:
    ca: trustme.CA
    directory: Path

    @classmethod
    def create(cls, directory: Path) -> ClusterPki:
        """A new CA and every pair, in `directory` (created, readable by every user)."""
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(directory, 0o755)
        pki = cls(ca=trustme.CA(), directory=directory)
        pki.ca.cert_pem.write_to_path(pki.ca_file)
        pki._write_pair("api", "api")
        pki._write_pair("pg", "pg-first")
        pki._write_pair("client", "operator")
        return pki

    @property
    def ca_file(self) -> str:
        return str(self.directory / "ca.crt")

    def _write_pair(self, stem: str, common_name: str) -> x509.Certificate:
        leaf = self.ca.issue_cert(HOST, "localhost", common_name=common_name)
        # The key first: an agent checking between the two writes sees a mismatched pair,
        # which it must refuse and then take once the certificate follows.
        leaf.private_key_pem.write_to_path(str(self.directory / f"{stem}.key"))
        leaf.cert_chain_pems[0].write_to_path(str(self.directory / f"{stem}.crt"))
        for suffix in ("key", "crt"):
            os.chmod(self.directory / f"{stem}.{suffix}", 0o644)
        os.chmod(self.ca_file, 0o644)
        return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())

    def files(self, stem: str) -> dict[str, str]:
        """cert_file, key_file and ca_file of the `api` or `pg` pair, as the settings name them."""
        return {
            "cert_file": str(self.directory / f"{stem}.crt"),
            "key_file": str(self.directory / f"{stem}.key"),
            "ca_file": self.ca_file,
        }

    def pg_tls(self) -> PostgresTls:
        """PostgreSQL's pair as the settings type (verify-full)."""
        files = self.files("pg")
        return PostgresTls(
            cert_file=files["cert_file"], key_file=files["key_file"], ca_file=files["ca_file"]
        )

    def api_settings(self) -> dict[str, str]:
        """`api.tls`: the API pair, client certificates required."""
        return self.files("api") | {"verify_client": "required"}

    def pg_settings(self) -> dict[str, str]:
        """`postgresql.tls`: PostgreSQL's pair, the peer's name verified (verify-full)."""
        return self.files("pg") | {"verify": "verify-full"}

    def client_files(self) -> tuple[str, str, str]:
        """(CA, certificate, key) of the tests' client certificate."""
        return self.ca_file, str(self.directory / "client.crt"), str(self.directory / "client.key")

    def client_context(self) -> ssl.SSLContext:
        """Verifies the servers against the CA and presents the client certificate."""
        ca, cert, key = self.client_files()
        context = ssl.create_default_context(cafile=ca)
        context.load_cert_chain(cert, key)
        return context

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.client_context()))

    def rotate(self, stem: str, common_name: str) -> x509.Certificate:
        """A new certificate and key written over the `api` or `pg` pair; returns it."""
        return self._write_pair(stem, common_name)

    def write_pg_mismatch(self) -> None:
        """A half-rotated pair: a new certificate next to the key of the current one."""
        leaf = self.ca.issue_cert(HOST, "localhost", common_name="pg-mismatched")
        leaf.cert_chain_pems[0].write_to_path(str(self.directory / "pg.crt"))


def _served_certificate_der(port: int, ca_file: str) -> bytes:
    """The certificate PostgreSQL on `port` presents to a new connection (SSLRequest, then
    a TLS handshake verifying it against `ca_file` and the name 127.0.0.1)."""
    context = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection((HOST, port), timeout=5) as raw:
        raw.sendall(_SSL_REQUEST)
        answer = raw.recv(1)
        if answer != b"S":
            raise AssertionError(f"PostgreSQL on port {port} refused TLS: {answer!r}")
        with context.wrap_socket(raw, server_hostname=HOST) as tls:
            der = tls.getpeercert(binary_form=True)
    if der is None:
        raise AssertionError("no certificate presented")
    return der


async def pg_served_certificate(port: int, ca_file: str) -> x509.Certificate:
    der = await asyncio.to_thread(_served_certificate_der, port, ca_file)
    return x509.load_der_x509_certificate(der)
