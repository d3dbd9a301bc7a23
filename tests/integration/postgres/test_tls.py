"""PostgreSQL TLS against real PostgreSQL 15 (issue 13, item 2).

A primary and a standby with `postgresql.tls` (a CA made here with trustme, one certificate
per member naming 127.0.0.1, which `verify-full` checks): the clone, the stream and a rewind
all go through TLS, a replication connection without TLS is refused by the agent's pg_hba,
no password is written into postgresql.auto.conf, and a certificate renewed on disk is served
to new connections after a reload, without a restart.

Why 127.0.0.1 suffices for "from another host": the agent's pg_hba does not single out
loopback for users with a password: its lines for replication and the superuser cover every
address (0.0.0.0/0, ::0/0) and are all `hostssl` with TLS, so a plain connection from
127.0.0.1 meets exactly the rules one from another machine meets (only the unix socket is
different: `local`, peer authentication for the agent's OS users).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
import trustme
from cryptography import x509

from agent.postgres import StopMode, clone, create_roles, ensure_slots, initdb, replication, rewind
from agent.postgres.replication import passfile_path, quote_config_value
from agent.postgres.tls import TlsRenewal
from agent.postgres_settings import PostgresTls
from tests.support.pgversions import PgInstall, has_ssl
from tests.support.postgres import (
    REPLICATION_PASSWORD,
    SUPERUSER_PASSWORD,
    PgNode,
    eventually,
    kill_leftovers,
    make_nodes,
    pg_base_dir,
)
from tests.support.tls import pg_served_certificate

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

START_TIMEOUT_S = 20.0
SQL_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TlsPair:
    primary: PgNode
    standby: PgNode
    ca_file: str
    ca: trustme.CA


def _member_tls(ca: trustme.CA, directory: Path) -> PostgresTls:
    """A certificate for 127.0.0.1 signed by `ca`, its key and the CA, as root-owned files
    mode 0644, as loose as a Secret volume: the agent must make PostgreSQL's copy private."""
    directory.mkdir()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = directory / "tls.crt", directory / "tls.key", directory / "ca.crt"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    for path in (cert, key, ca_file):
        os.chmod(path, 0o644)
    return PostgresTls(cert_file=str(cert), key_file=str(key), ca_file=str(ca_file))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pair(pg_install: PgInstall) -> AsyncIterator[TlsPair]:
    if not has_ssl(pg_install):
        pytest.skip(f"PostgreSQL {pg_install.major} here is built without SSL")
    ca = trustme.CA()
    with pg_base_dir() as base:
        nodes = [
            dataclasses.replace(
                node,
                settings=dataclasses.replace(
                    node.settings, tls=_member_tls(ca, Path(base) / f"{node.name}-tls")
                ),
            )
            for node in make_nodes(base, ["tp", "ts"], install=pg_install)
        ]
        primary, standby = nodes
        try:
            await initdb(primary.settings, run_dir=primary.run_dir)
            await primary.postmaster.start(standby=None, timeout_s=START_TIMEOUT_S)
            await create_roles(primary.postmaster, primary.settings)
            await ensure_slots(primary.postmaster, [standby.slot])
            await primary.postmaster.execute("CREATE TABLE t (v text)", timeout_s=SQL_TIMEOUT_S)
            await clone(
                standby.settings, standby.standby_of(primary), run_dir=standby.run_dir, timeout_s=60
            )
            await standby.postmaster.start(
                standby=standby.standby_of(primary), timeout_s=START_TIMEOUT_S
            )
            tls = primary.settings.tls
            assert tls is not None
            yield TlsPair(primary=primary, standby=standby, ca_file=tls.ca_file, ca=ca)
        finally:
            for node in nodes:
                await node.postmaster.close()
            kill_leftovers(nodes)


async def _walsender_ssl(primary: PgNode, application_name: str) -> bool | None:
    rows = await primary.postmaster.fetch(
        "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)"
        " WHERE r.application_name = $1 AND r.state = 'streaming'",
        application_name,
        timeout_s=SQL_TIMEOUT_S,
    )
    return None if not rows else rows[0][0] is True


async def test_the_standby_streams_over_tls(pair: TlsPair) -> None:
    async def streaming() -> bool:
        return await _walsender_ssl(pair.primary, pair.standby.name) is not None

    await eventually(streaming, timeout_s=10)
    assert await _walsender_ssl(pair.primary, pair.standby.name) is True
    rows = await pair.primary.postmaster.fetch("SHOW ssl", timeout_s=SQL_TIMEOUT_S)
    assert rows == [("on",)]


def _identify_system(node: PgNode, **keywords: str) -> subprocess.CompletedProcess[str]:
    """IDENTIFY_SYSTEM over a physical replication connection (libpq's psql) as the
    replication user, its password given in the environment (this is the test's client)."""
    conninfo = " ".join(
        f"{key}={value}"
        for key, value in {
            "host": "127.0.0.1",
            "port": str(node.port),
            "user": "replicator",
            "dbname": "replication",
            "replication": "true",
            "connect_timeout": "3",
            **keywords,
        }.items()
    )
    return subprocess.run(
        [os.path.join(node.settings.bin_dir, "psql"), conninfo, "-Atc", "IDENTIFY_SYSTEM"],
        env={"PGPASSWORD": REPLICATION_PASSWORD, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


async def test_a_replication_connection_without_tls_is_refused(pair: TlsPair) -> None:
    plain = await asyncio.to_thread(_identify_system, pair.primary, sslmode="disable")
    assert plain.returncode != 0
    assert "no pg_hba.conf entry for replication connection" in plain.stderr
    assert "no encryption" in plain.stderr
    # The same user and password over verified TLS are let in: TLS is what was missing.
    verified = await asyncio.to_thread(
        _identify_system, pair.primary, sslmode="verify-full", sslrootcert=pair.ca_file
    )
    assert verified.returncode == 0, verified.stderr


async def test_a_superuser_connection_without_tls_is_refused(pair: TlsPair) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await asyncpg.connect(
            host="127.0.0.1",
            port=pair.primary.port,
            user="postgres",
            password=SUPERUSER_PASSWORD,
            database="postgres",
            ssl=False,
            timeout=5,
        )


async def test_no_password_is_written_into_the_standbys_configuration(pair: TlsPair) -> None:
    auto_conf = Path(pair.standby.settings.data_dir, "postgresql.auto.conf").read_text()
    conninfo = next(line for line in auto_conf.splitlines() if line.startswith("primary_conninfo"))
    assert "password" not in conninfo
    assert "sslmode=verify-full" in conninfo
    assert f"passfile={passfile_path(pair.standby.run_dir)}" in conninfo
    for secret in (REPLICATION_PASSWORD, SUPERUSER_PASSWORD):
        fragment = max(secret.split(), key=len)  # "pl'pa\\ss": also as the file escapes it
        for form in (fragment, quote_config_value(fragment)[1:-1]):
            assert form not in auto_conf


def _rotate(ca: trustme.CA, tls: PostgresTls) -> x509.Certificate:
    """A new certificate and key written over the member's source files (a Secret update)."""
    leaf = ca.issue_cert("127.0.0.1")
    leaf.private_key_pem.write_to_path(tls.key_file)
    leaf.cert_chain_pems[0].write_to_path(tls.cert_file)
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())


async def test_a_renewed_certificate_is_served_to_new_connections_without_a_restart(
    pair: TlsPair,
) -> None:
    primary = pair.primary
    tls = primary.settings.tls
    assert tls is not None
    pid = primary.postmaster.pid()
    first = x509.load_pem_x509_certificate(Path(tls.cert_file).read_bytes())
    served = await pg_served_certificate(primary.port, pair.ca_file)
    assert served.serial_number == first.serial_number
    renewal = TlsRenewal(
        tls,
        running=lambda: primary.postmaster.pid() is not None,
        reload=primary.postmaster.reload,
    )
    assert await renewal.check()  # the first check applies whatever is on disk
    renewed = _rotate(pair.ca, tls)
    assert await renewal.check()

    async def serves_the_new_one() -> bool:
        served = await pg_served_certificate(primary.port, pair.ca_file)
        return served.serial_number == renewed.serial_number

    await eventually(serves_the_new_one, timeout_s=10)  # the postmaster handles SIGHUP async
    assert primary.postmaster.pid() == pid, "PostgreSQL was restarted"
    assert await _walsender_ssl(primary, pair.standby.name) is True
    copy = Path(replication.tls_paths(primary.run_dir)[1])
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


async def test_the_old_primary_is_rewound_over_tls_and_streams_over_tls(pair: TlsPair) -> None:
    """Last: it swaps the roles. The standby is promoted, the old primary diverges and is
    rewound onto it (pg_rewind and its pre-check connect over verified TLS only: the new
    primary's pg_hba admits nothing else), then streams from it over TLS."""
    old, new = pair.primary, pair.standby
    await new.postmaster.promote(timeout_s=10)
    await old.postmaster.execute("INSERT INTO t VALUES ('divergent')", timeout_s=SQL_TIMEOUT_S)
    await old.postmaster.stop(StopMode.FAST, timeout_s=10)
    await ensure_slots(new.postmaster, [old.slot])
    await rewind(old.settings, old.standby_of(new), run_dir=old.run_dir, timeout_s=60)
    await old.postmaster.start(standby=old.standby_of(new), timeout_s=START_TIMEOUT_S)

    async def streaming() -> bool:
        return await _walsender_ssl(new, old.name) is not None

    await eventually(streaming, timeout_s=15)
    assert await _walsender_ssl(new, old.name) is True
