"""End to end, secrets never leak: a two-member cluster on real etcd with known secrets (the
API token, the API basic-auth password, PostgreSQL's superuser and replication passwords,
the password the agents log in to etcd with: etcd runs with authentication on) is run through
a switchover (so that the replica's clone, its replication connection and a pg_rewind-free
hand-over all use them), and then every place an operator or another process can read is
searched for each secret, in clear or base64 (as in a basic-auth header): every line of every
agent's log (PostgreSQL's own output included), the arguments and environment of every
process on the machine, every etcd key and value, PostgreSQL's configuration files and every
file in the agent's run directory but the private (0600) libpq password file, the API's views
(`/cluster`, `/config`, `/metrics`, `/health`, `/history`, `/openapi.json`) on every member,
and `pgwarden run --check-config`.

Not searched: etcd's own data directory and log.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from agent.localcluster import LocalCluster
from agent.localproc import LocalMember
from tests.support.cluster import E2E_TIMING, converge, new_primary
from tests.support.etcd import EtcdCluster, running_cluster
from tests.support.pgversions import PgInstall

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SECRETS = {
    "api token": "tok-Vq8rZ2mXc4Lp",
    "api password": "apipw-Hs7Yd3Kf9Wn",
    "superuser password": "supw-Jb5Tq1Rg6Mz",
    "replication password": "replpw-Xc2Nv8Ld4Pk",
    "etcd password": "etcdpw-Tm3Wq7Bz5Rj",
}
ETCD_USER = "pgwarden"


@dataclass(kw_only=True)
class SecretCluster(LocalCluster):
    """A LocalCluster whose members carry every secret in SECRETS."""

    def config_for(self, member: LocalMember) -> dict[str, object]:
        config = super().config_for(member)
        api = config["api"]
        postgresql = config["postgresql"]
        assert isinstance(api, dict) and isinstance(postgresql, dict)
        api["username"] = "admin"
        api["password"] = SECRETS["api password"]
        postgresql["superuser"] = {
            "username": "postgres",
            "password": SECRETS["superuser password"],
        }
        postgresql["replication"] = {
            "username": "replicator",
            "password": SECRETS["replication password"],
        }
        config["dcs"] = {
            "kind": "etcd",
            "etcd": {
                "endpoints": self.etcd_endpoints,
                "username": ETCD_USER,
                "password": SECRETS["etcd password"],
            },
        }
        return config


@dataclass(frozen=True, slots=True)
class Started:
    cluster: SecretCluster
    etcd: EtcdCluster  # with auth on: the agents log in as ETCD_USER


@pytest.fixture(scope="module")
def started(pg_install: PgInstall) -> Iterator[Started]:
    base = Path(tempfile.mkdtemp(prefix="pgwarden-secrets-", dir="/tmp"))
    auth = (ETCD_USER, SECRETS["etcd password"])
    running = SecretCluster(
        base=base,
        size=2,
        timing=dict(E2E_TIMING),
        cluster="sec",
        token=SECRETS["api token"],
        pg_bin=pg_install.bin_dir,
    )
    try:
        with running_cluster(1, base / "etcd-auth", auth=auth) as etcd:
            running.etcd_endpoints = etcd.endpoints  # LocalCluster then starts no etcd of its own
            running.start()
            yield Started(cluster=running, etcd=etcd)
    finally:
        running.stop()
        shutil.rmtree(base, ignore_errors=True)


def _leaks(where: str, text: str) -> list[str]:
    """Each secret found in `text`, also after decoding base64 words (basic-auth headers)."""
    found = [f"{where}: {name}" for name, secret in SECRETS.items() if secret in text]
    for word in text.replace('"', " ").replace("'", " ").split():
        if len(word) < 16:
            continue
        try:
            decoded = base64.b64decode(word, validate=True).decode("utf-8", "replace")
        except ValueError:
            continue
        found += [
            f"{where}: {name} (base64)" for name, secret in SECRETS.items() if secret in decoded
        ]
    return found


def _file_leaks(member: LocalMember) -> list[str]:
    """Secrets in the data directory's configuration files and the run directory; the libpq
    password file is where the passwords belong, if it is private (0600)."""
    found = []
    files = [
        member.data_dir / n for n in ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf")
    ]
    files += [p for p in member.run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "pgpass" for p in files), "no libpq password file in the run directory"
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if path.name == "pgpass":
            mode = path.stat().st_mode & 0o777
            if mode != 0o600:
                found.append(f"{path}: a password file with mode {mode:o}")
            continue
        found += _leaks(str(path), text)
    return found


def _etcd_dump(etcd: EtcdCluster) -> str:
    """Every key and value in etcd (etcdctl, logged in as the agents' user)."""
    dump = etcd.etcdctl("get", "", "--prefix")
    assert "/sec/" in dump, "etcd holds no keys: the cluster did not write its state"
    return dump


async def _api_views(cluster: LocalCluster) -> dict[str, str]:
    views = {}
    async with aiohttp.ClientSession() as session:
        for member in cluster.members:
            for path in ("/cluster", "/config", "/metrics", "/health", "/history", "/openapi.json"):
                async with session.get(member.api_url + path) as answer:
                    assert answer.status in (200, 503), (member.name, path, answer.status)
                    views[f"{member.name} GET {path}"] = await answer.text()
    return views


async def test_no_secret_appears_in_logs_processes_dcs_views_or_check_config(
    started: Started,
) -> None:
    cluster = started.cluster
    first = await converge(cluster, timeout=60)
    # A switchover: the replica connects for replication with its password, the API checks the
    # token, and the new replica is re-pointed (primary_conninfo rewritten).
    async with aiohttp.ClientSession() as session:
        status, body = await cluster.post(session, first, "/switchover", {})
        assert status == 202, body
    await new_primary(cluster, first, timeout=30)
    await converge(cluster, timeout=60)
    # Basic credentials work (the password reached the agent).
    raw = base64.b64encode(f"admin:{SECRETS['api password']}".encode()).decode()
    auth = {"Authorization": f"Basic {raw}"}
    async with aiohttp.ClientSession() as session:
        for path in ("/pause", "/resume"):
            async with session.post(cluster.members[0].api_url + path, headers=auth) as answer:
                assert answer.status == 200, await answer.text()

    leaks: list[str] = []
    for member in cluster.members:
        log = member.log_path.read_text(encoding="utf-8", errors="replace")
        assert "ha_cycle" in log or "api_listening" in log, "the agent's log is not where expected"
        for number, line in enumerate(log.splitlines(), 1):
            leaks += _leaks(f"{member.log_path}:{number}", line)
    ps = subprocess.run(
        ["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True, check=True
    ).stdout
    assert "postgres" in ps
    leaks += _leaks("ps", ps)
    # The environment of every process (PGPASSWORD for a tool would show here).
    for pid in (p.split()[0] for p in ps.splitlines() if p.strip()):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        leaks += _leaks(f"/proc/{pid}/environ", environ.replace("\0", " "))
    leaks += _leaks("etcd", _etcd_dump(started.etcd))
    for member in cluster.members:
        leaks += _file_leaks(member)
    for where, text in (await _api_views(cluster)).items():
        leaks += _leaks(where, text)
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "run",
            "--config",
            str(cluster.members[0].config_path),
            "--check-config",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
    )
    assert check.returncode == 0, check.stderr
    leaks += _leaks("--check-config stdout", check.stdout)
    leaks += _leaks("--check-config stderr", check.stderr)
    assert leaks == []
    assert "********" in check.stdout  # the secrets were there, masked
