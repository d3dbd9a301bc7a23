"""PostgreSQL's certificate renewed without a restart (issue 13): the copies PostgreSQL reads
are replaced only by a set that loads, and `TlsRenewal` reloads once the source files change.
Real files and certificates (a CA made here); the reload is the real copy
(`install_server_files`) without the SIGHUP, which tests/integration/postgres/test_tls.py and
tests/e2e/test_secure_cluster.py send to real servers."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog
import yaml

from agent.app import run_agent
from agent.config import load_settings
from agent.postgres.osfiles import PostgresError, RunAs, run_as
from agent.postgres.replication import tls_paths
from agent.postgres.tls import TlsRenewal, install_server_files
from agent.postgres_settings import PostgresTls
from tests.support.postgres import pg_os_user
from tests.support.tls import ClusterPki
from tests.unit.test_pg_tls import settings


@dataclass
class Server:
    """Stands in for the postmaster: whether it runs, and how many reloads it got."""

    tls: PostgresTls
    run_dir: str
    who: RunAs
    running: bool = True
    fail_next: bool = False
    reloads: list[bytes] = field(default_factory=list)

    async def reload(self) -> None:
        if self.fail_next:
            self.fail_next = False
            raise PostgresError("reload: postgres is not running")
        install_server_files(self.tls, self.run_dir, self.who)
        self.reloads.append(Path(tls_paths(self.run_dir)[0]).read_bytes())

    def renewal(self) -> TlsRenewal:
        return TlsRenewal(self.tls, running=lambda: self.running, reload=self.reload)


@pytest.fixture
def pki(tmp_path: Path) -> ClusterPki:
    return ClusterPki.create(tmp_path / "secret")


@pytest.fixture
def server(pki: ClusterPki, tmp_path: Path) -> Server:
    tls = pki.pg_tls()
    who = run_as(settings(tls=tls, os_user=pg_os_user()))
    return Server(tls=tls, run_dir=str(tmp_path / "run"), who=who)


def _copies(run_dir: str) -> list[bytes]:
    return [Path(path).read_bytes() for path in tls_paths(run_dir)]


def test_the_copies_are_private_to_postgres_and_a_set_that_does_not_load_keeps_them(
    pki: ClusterPki, server: Server
) -> None:
    install_server_files(server.tls, server.run_dir, server.who)
    before = _copies(server.run_dir)
    for path in tls_paths(server.run_dir):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    pki.write_pg_mismatch()
    with pytest.raises(PostgresError, match=r"postgresql\.tls"):
        install_server_files(server.tls, server.run_dir, server.who)
    assert _copies(server.run_dir) == before
    assert sorted(os.listdir(os.path.dirname(tls_paths(server.run_dir)[0]))) == [
        "ca.crt",
        "server.crt",
        "server.key",
    ]


async def test_it_reloads_once_at_start_then_only_when_the_files_change(
    pki: ClusterPki, server: Server
) -> None:
    renewal = server.renewal()
    assert await renewal.check()  # an adopted postmaster may run on older copies
    assert not await renewal.check()
    pki.rotate("pg", "pg-second")
    assert await renewal.check()
    assert not await renewal.check()
    assert len(server.reloads) == 2
    assert server.reloads[-1] == Path(server.tls.cert_file).read_bytes()


async def test_a_half_rotated_pair_is_refused_once_and_the_completed_one_taken(
    pki: ClusterPki, server: Server
) -> None:
    renewal = server.renewal()
    assert await renewal.check()
    before = _copies(server.run_dir)
    pki.write_pg_mismatch()
    with structlog.testing.capture_logs() as logs:
        assert not await renewal.check()
        assert not await renewal.check()
    failures = [e for e in logs if e["event"] == "postgres_tls_reload_failed"]
    assert len(failures) == 1, logs
    assert failures[0]["log_level"] == "error"
    assert len(server.reloads) == 1
    assert _copies(server.run_dir) == before
    pki.rotate("pg", "pg-second")
    assert await renewal.check()
    assert _copies(server.run_dir)[0] == Path(server.tls.cert_file).read_bytes()


async def test_a_stopped_server_is_left_alone_and_a_failed_reload_is_tried_again(
    pki: ClusterPki, server: Server
) -> None:
    renewal = server.renewal()
    server.running = False
    assert not await renewal.check()
    assert server.reloads == []
    server.running = True
    server.fail_next = True
    assert not await renewal.check()
    assert await renewal.check()
    assert len(server.reloads) == 1


@pytest.mark.parametrize("section", ["postgresql", "api"])
async def test_a_tls_set_that_does_not_load_stops_the_agent_at_start_naming_its_section(
    pki: ClusterPki, tmp_path: Path, section: str
) -> None:
    pki.write_pg_mismatch()
    (pki.directory / "api.crt").write_bytes((pki.directory / "pg.crt").read_bytes())
    document = {
        "name": "pg-0",
        "cluster": "demo",
        "run_dir": str(tmp_path / "run"),
        "dcs": {"kind": "etcd", "etcd": {"endpoints": ["http://127.0.0.1:9"]}},
        "postgresql": {"data_dir": str(tmp_path / "data")},
        "api": {"insecure_no_auth": True, "port": 9},
    }
    sections = {"postgresql": pki.pg_settings(), "api": pki.files("api")}
    target = document[section]
    assert isinstance(target, dict)
    target["tls"] = sections[section]
    path = tmp_path / "pgwarden.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(SystemExit, match=rf"^{section}\.tls: the certificate, key or CA"):
        await run_agent(load_settings(str(path), {}))
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "run" / "fencer.sock").exists()
