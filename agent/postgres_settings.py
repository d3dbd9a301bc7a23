"""The PostgreSQL settings types (`postgresql:`): paths, ports, users, TLS, parameters, pg_hba.

Like every settings type (agent/settings.py), each class checks its own rules when built.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from agent.value_rules import (
    GUC_NAME,
    HBA_TYPES,
    WAL_LEVELS,
    ConfigProblem,
    Credentials,
    absolute,
    check,
    host,
    is_wildcard,
    non_empty,
    one_of,
    port_number,
)


class TlsVerify(StrEnum):
    """How a member checks the server certificate of the member it streams or rewinds from
    (libpq's `sslmode`). Both verify the chain against `postgresql.tls.ca_file`."""

    FULL = "verify-full"  # and that the certificate names the host connected to
    CA = "verify-ca"  # members addressed by an IP no certificate can name (pod IPs)


SERVER_TLS_PARAMETERS: Final = ("ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file")
"""Server settings `postgresql.tls` sets; refused in `postgresql.parameters` alongside it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresTls:
    """PostgreSQL's TLS: the server's certificate and key, and the CA members verify each
    other against. All three or none (no `postgresql.tls` section): replication and the
    superuser's connections from the network then accept TLS only (`hostssl`)."""

    cert_file: str
    key_file: str
    ca_file: str
    verify: TlsVerify = TlsVerify.FULL

    def __post_init__(self) -> None:
        check(self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        for name in ("cert_file", "key_file", "ca_file"):
            yield from non_empty(name, getattr(self, name))
            yield from absolute(name, getattr(self, name))
        yield from one_of("verify", self.verify, TlsVerify)


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresSettings:
    bin_dir: str = "/usr/lib/postgresql/15/bin"
    data_dir: str
    listen_host: str = "127.0.0.1"
    port: int = 5432
    connect_host: str = "127.0.0.1"  # the address other members and clients use
    socket_dir: str | None = None  # None: the data directory's parent
    os_user: str | None = None  # run PostgreSQL as this user when the agent is root
    superuser: Credentials = field(default_factory=lambda: Credentials(username="postgres"))
    replication: Credentials = field(default_factory=lambda: Credentials(username="replicator"))
    parameters: tuple[tuple[str, str], ...] = ()
    pg_hba: tuple[str, ...] = ()  # extra lines, added before the agent's own
    tls: PostgresTls | None = None
    nice: int = 0  # the postmaster and its children (agent/postgres/process.py `renice`)

    def __post_init__(self) -> None:
        check(self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        for name in ("data_dir", "bin_dir", "socket_dir"):
            yield from absolute(name, getattr(self, name))
        yield from host("listen_host", self.listen_host)
        yield from host("connect_host", self.connect_host)
        if self.connect_host and is_wildcard(self.connect_host):
            yield ConfigProblem(
                "connect_host", "must be an address others can connect to, not a wildcard"
            )
        yield from port_number("port", self.port)
        if not 0 <= self.nice <= 19:
            yield ConfigProblem("nice", f"must be a nice value in 0..19, got {self.nice}")
        if self.os_user is not None:
            yield from non_empty("os_user", self.os_user)
        for name, _ in self.parameters:
            if not GUC_NAME.fullmatch(name):
                yield ConfigProblem(
                    "parameters", f"{name[:80]!r} is not a PostgreSQL parameter name"
                )
        if self.tls is not None:
            for name, _ in self.parameters:
                if name.lower() in SERVER_TLS_PARAMETERS:
                    yield ConfigProblem(
                        "parameters", f"{name!r} is set by pgwarden (use postgresql.tls)"
                    )
        wal_level = {k.lower(): v for k, v in self.parameters}.get("wal_level")
        if wal_level is not None and wal_level not in WAL_LEVELS:
            yield ConfigProblem(
                "parameters", "wal_level must be replica or logical (replicas stream WAL)"
            )
        for i, line in enumerate(self.pg_hba):
            words = line.split()
            if "\n" in line or "\r" in line:
                yield ConfigProblem(f"pg_hba[{i}]", "must be a single line")
            elif not words or words[0] not in HBA_TYPES:
                yield ConfigProblem(
                    f"pg_hba[{i}]",
                    "must start with a connection type: " + ", ".join(sorted(HBA_TYPES)),
                )
