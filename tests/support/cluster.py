"""Helpers to drive a `LocalCluster` (etcd + agent processes) from end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg

from agent.localcluster import LocalCluster
from agent.localproc import LocalMember
from tests.support.etcd import EtcdCluster, etcd_cluster, make_tls_files
from tests.support.pgversions import DEBIAN_15_BIN, PgInstall
from tests.support.postgres import release_shared_memory
from tests.support.tls import ClusterPki
from tests.support.workload import MemberWriter, WriterLog

_C = TypeVar("_C", bound=LocalCluster)

# Short timings so that lease expiry scenarios take seconds; the timing rule still holds:
# loop_wait + 2 * retry_timeout + fence_margin = 1 + 3 + 1 <= ttl.
E2E_TIMING = {
    "ttl_s": 6.0,
    "loop_wait_s": 1.0,
    "retry_timeout_s": 1.5,
    "fence_margin_s": 1.0,
    "primary_start_timeout_s": 5.0,
    "switchover_timeout_s": 5.0,
    "peer_check_timeout_s": 0.3,
}


@dataclass(slots=True, kw_only=True)
class TlsCluster(LocalCluster):
    """A `LocalCluster` on TLS, files from a CA made in `<base>/tls` (tests/support/tls.py):
    with `api_tls` the agents serve their API over https only and require a client
    certificate (members call each other with their own), and the helpers here reach them
    with the test's client certificate (`api_session`); with `pg_tls` they run PostgreSQL
    with `postgresql.tls` (hostssl, verify-full replication); with `etcd_tls` the DCS is an
    etcd serving https only and requiring a client certificate (tests/support/etcd.py, a CA
    of its own), which the agents present."""

    api_tls: bool = True
    pg_tls: bool = True
    etcd_tls: bool = False
    pki: ClusterPki | None = None
    etcd_server: EtcdCluster | None = None

    def __post_init__(self) -> None:
        LocalCluster.__post_init__(self)  # slotted dataclasses: no zero-argument super()
        self.pki = ClusterPki.create(self.base / "tls")
        if self.api_tls:
            for member in self.members:
                member.scheme = "https"

    @property
    def tls(self) -> ClusterPki:
        assert self.pki is not None
        return self.pki

    def config_for(self, member: LocalMember) -> dict[str, object]:
        config = LocalCluster.config_for(self, member)
        if self.api_tls:
            api = config["api"]
            assert isinstance(api, dict)
            api["tls"] = self.tls.api_settings()
        if self.pg_tls:
            postgresql = config["postgresql"]
            assert isinstance(postgresql, dict)
            postgresql["tls"] = self.tls.pg_settings()
        if self.etcd_server is not None and self.etcd_server.tls is not None:
            files = self.etcd_server.tls
            etcd = {
                "endpoints": self.etcd_endpoints,
                "ca_file": str(files.ca_file),
                "cert_file": str(files.client_cert),
                "key_file": str(files.client_key),
            }
            config["dcs"] = {"kind": "etcd", "etcd": etcd}
        return config

    def start_etcd(self) -> None:
        if not self.etcd_tls:
            LocalCluster.start_etcd(self)
            return
        if self.etcd_server is None:
            files = make_tls_files(self.base / "etcd-tls", client_cert_auth=True)
            self.etcd_server = etcd_cluster(1, self.base / "etcd", tls=files)
            self.etcd_server.start()
            self.etcd_endpoints = self.etcd_server.endpoints

    def stop(self) -> None:
        LocalCluster.stop(self)
        if self.etcd_server is not None:
            self.etcd_server.stop()

    def api_session(self) -> aiohttp.ClientSession:
        return self.tls.session() if self.api_tls else LocalCluster.api_session(self)


@contextmanager
def local_cluster(
    size: int = 3,
    *,
    cluster: str = "demo",
    dcs_kind: str = "etcd",
    kube_lock: str = "endpoints",
    extra: dict[str, object] | None = None,
    api_tls: bool = False,
    pg_tls: bool = False,
    etcd_tls: bool = False,
    pg: PgInstall | None = None,
) -> Iterator[LocalCluster]:
    """A running cluster of `size` agents on PostgreSQL `pg` (default: Debian's 15), stopped
    and removed afterwards; with `api_tls`, `pg_tls` or `etcd_tls` a `TlsCluster`."""
    base = Path(tempfile.mkdtemp(prefix="pgwarden-e2e-", dir="/tmp"))
    common: dict[str, Any] = {
        "base": base,
        "size": size,
        "timing": dict(E2E_TIMING),
        "cluster": cluster,
        "dcs_kind": dcs_kind,
        "kube_lock": kube_lock,
        "extra": extra or {},
        "pg_bin": pg.bin_dir if pg is not None else DEBIAN_15_BIN,
    }
    running = (
        TlsCluster(**common, api_tls=api_tls, pg_tls=pg_tls, etcd_tls=etcd_tls)
        if api_tls or pg_tls or etcd_tls
        else LocalCluster(**common)
    )
    with started(running) as ready:
        yield ready


def start_first_member(running: LocalCluster) -> None:
    """The DCS and member 0 alone (it bootstraps); the test starts the others."""
    running.start_etcd()
    running.start_member(0)


def new_base(prefix: str = "pgwarden-e2e-") -> Path:
    """A new directory under /tmp for a cluster's files (`started` removes it)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@contextmanager
def started(running: _C, start: Callable[[_C], None] | None = None) -> Iterator[_C]:
    """`running` started (all of it, or what `start(running)` starts), then, whatever
    happened, stopped and its base directory removed."""
    try:
        if start is None:
            running.start()
        else:
            start(running)
        yield running
    finally:
        running.stop()
        if not _keep_on_failure():
            release_shared_memory(str(running.base))
            shutil.rmtree(running.base, ignore_errors=True)


def _keep_on_failure() -> bool:
    return False


async def wait_until(
    predicate: Callable[[], Awaitable[bool]],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
) -> float:
    """Poll until `predicate()` holds; returns the time it took. Raises on timeout."""
    start = time.monotonic()
    while True:
        if await predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


# The agent's default `ha.maximum_lag_on_failover_bytes`: a switchover to a member further
# behind (by the published positions) is refused with 409.
CAUGHT_UP_BYTES = 1024 * 1024


async def converged(cluster: LocalCluster, session: aiohttp.ClientSession) -> bool:
    """One leader running as primary, every other member streaming on its timeline with a
    published position within CAUGHT_UP_BYTES of the leader's (right after a bootstrap or a
    clone the records can be a WAL segment apart for a cycle, and a switchover asked then is
    rightly refused)."""
    view = await cluster.cluster_json(session)
    if view is None:
        return False
    members = view.get("members")
    if not isinstance(members, list) or len(members) != len(cluster.members):
        return False
    leaders = [m for m in members if m.get("leader")]
    if len(leaders) != 1 or leaders[0].get("role") != "primary":
        return False
    if leaders[0].get("state") != "running":
        return False
    timeline = leaders[0].get("timeline")
    return all(
        m.get("state") == "streaming"
        and m.get("timeline") == timeline
        and isinstance(m.get("lag_bytes"), int)
        and int(m["lag_bytes"]) <= CAUGHT_UP_BYTES
        for m in members
        if not m.get("leader")
    )


async def leader_index(cluster: LocalCluster, session: aiohttp.ClientSession) -> int | None:
    return await cluster.primary_index(session)


async def query_values(port: int) -> set[int]:
    conn = await asyncpg.connect(
        host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=3
    )
    try:
        rows = await conn.fetch("SELECT value FROM pgwarden_probe")
        return {int(r["value"]) for r in rows}
    finally:
        await conn.close()


def revive(cluster: LocalCluster) -> None:
    """Undo what a scenario that failed half-way may have left: a frozen (SIGSTOP) agent or
    DCS process is continued, an agent that exited is started again."""
    dcs = [cluster.etcd, cluster.apiserver]
    for process in [*(m.process for m in cluster.members), *dcs]:
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
    cluster.dcs_frozen = False
    for index, member in enumerate(cluster.members):
        if member.process is not None and member.process.poll() is not None:
            cluster.start_member(index)


async def converge(cluster: LocalCluster, timeout: float = 40.0) -> int:
    """Wait until the cluster view shows one primary, every other member streaming and no
    switchover pending, and the primary's own /primary probe agrees (it holds a fresh
    lease); returns its index.

    Each scenario starts here, whatever the one before it left (see `revive`), so one
    failure does not cascade into the scenarios after it."""
    revive(cluster)
    found: list[int] = []
    async with cluster.api_session() as session:

        async def ready() -> bool:
            if not await converged(cluster, session):
                return False
            view = await cluster.cluster_json(session)
            if view is None or view.get("switchover") is not None:
                return False
            index = await cluster.primary_index(session)
            found[:] = [] if index is None else [index]
            return index is not None

        await wait_until(ready, timeout=timeout, what="convergence")
    return found[0]


async def new_primary(cluster: LocalCluster, old: int, timeout: float) -> int:
    """Wait until a member other than `old` answers /primary with 200; returns its index."""
    found: list[int] = []

    async def other_primary() -> bool:
        async with cluster.api_session() as session:
            index = await cluster.primary_index(session)
        if index is not None and index != old:
            found.append(index)
            return True
        return False

    await wait_until(other_primary, timeout=timeout, interval=0.05, what="a new primary")
    return found[-1]


def member_writers(cluster: LocalCluster, base: int) -> dict[str, MemberWriter]:
    """One writer per member, each straight to that member's PostgreSQL (values disjoint)."""
    return {
        m.name: MemberWriter(
            name=m.name, host="127.0.0.1", port=m.pg_port, start_value=base + 1_000_000 * i
        )
        for i, m in enumerate(cluster.members)
    }


async def stop_writers(writers: dict[str, MemberWriter]) -> dict[str, WriterLog]:
    return {name: await w.stop() for name, w in writers.items()}


async def tls_walsenders(cluster: LocalCluster, primary: int) -> dict[str, bool]:
    """On the primary's PostgreSQL: application_name -> whether its connection uses TLS
    (pg_stat_ssl), for every walsender that is streaming."""
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=cluster.members[primary].pg_port,
        user="postgres",
        database="postgres",
        timeout=3,
    )
    try:
        rows = await conn.fetch(
            "SELECT r.application_name, s.ssl FROM pg_stat_replication r"
            " JOIN pg_stat_ssl s USING (pid) WHERE r.state = 'streaming'"
        )
    finally:
        await conn.close()
    return {str(r["application_name"]): r["ssl"] is True for r in rows}


async def replicas_stream_over_tls(cluster: LocalCluster, primary: int) -> bool:
    """Every other member streams from the primary, and each over TLS."""
    walsenders = await tls_walsenders(cluster, primary)
    others = {m.name for i, m in enumerate(cluster.members) if i != primary}
    return {name for name, ssl in walsenders.items() if ssl} == others
