"""`PatroniCluster`: etcd plus `size` Patroni 4.1.5 members, the same-run baseline of the benchmark.

It offers the interface bench/failover.py's scenarios use on `agent.localcluster.LocalCluster`
(`members[i].name/.pg_port/.api_url/.process/.postmaster_pid()`, `start()`, `start_etcd()`,
`start_member(i)`, `signal_agent(i, sig)`, `kill_member(i)`, `kill_postgres(i)`, `stop()`,
`cluster_json()`, `primary_index()`, `post()`), so the same scenario functions and the same
writer run on both.

Patroni is installed on demand into `bench/.venv-patroni` (reused when present). Patroni runs
PostgreSQL itself and PostgreSQL refuses root, so as root every Patroni process runs as the
`postgres` OS user; the venv is built from the system interpreter (`/usr/bin/python3`) because
a pyenv interpreter under /root is not reachable by that user.

PostgreSQL is configured like pgwarden's members: data checksums and wal_log_hints, pg_rewind,
physical slots, `wal_keep_size = 128MB`, 32MB shared_buffers, 40 connections, asynchronous
replication, trust authentication on loopback (no passwords), so `AppWriter` works unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import yaml

from agent.localproc import ETCD_BIN, PG_BIN, LocalMember, free_port

PATRONI_VERSION = "4.1.5"
VENV = Path(__file__).resolve().parent / ".venv-patroni"

PATRONI_DEFAULT_TIMING = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10}
"""Patroni's own defaults."""
PATRONI_FAST_TIMING = {"ttl": 20, "loop_wait": 2, "retry_timeout": 4}
"""Patroni's fastest accepted settings: ttl >= 20 is enforced; loop_wait + 2 * retry_timeout
must fit in the ttl."""

# Patroni's /switchover answers only once the new leader holds the key (it polls every
# second, up to max(10, loop_wait) * 2 s); the bench's own timeouts must cover that.
SWITCHOVER_TIMEOUT_S = 30.0


def _system_python() -> str:
    return "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def ensure_patroni(venv: Path = VENV) -> Path:
    """The `patroni` executable of `venv`, installing Patroni there first if it is missing.

    Reuses an existing venv when its Patroni reports the pinned version; otherwise creates the
    venv and pip-installs `patroni[etcd3]==4.1.5` and `psycopg2-binary` (needs the registry).
    """
    exe = venv / "bin" / "patroni"
    if exe.exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [str(exe), "--version"], capture_output=True, text=True, timeout=60, check=False
            )
            if PATRONI_VERSION in out.stdout + out.stderr:
                return exe
    subprocess.run([_system_python(), "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            f"patroni[etcd3]=={PATRONI_VERSION}",
            "psycopg2-binary",
        ],
        check=True,
        timeout=600,
    )
    return exe


def _as_root() -> bool:
    return os.geteuid() == 0


def _chown_postgres(path: Path) -> None:
    if _as_root():
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _kill_group_of(pid: int) -> None:
    """SIGKILL the process group `pid` leads or belongs to; its own pid when that group is ours.

    Patroni starts the postmaster from an intermediate process that called setsid(), so the
    postmaster and its backends share a group that is neither ours nor Patroni's.
    """
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        if pgid in (os.getpgid(0), 0):
            os.kill(pid, signal.SIGKILL)
        else:
            os.killpg(pgid, signal.SIGKILL)


@dataclass(slots=True)
class PatroniMember(LocalMember):
    """A pgwarden demo member's layout (ports, data and run dirs, postmaster pid), with
    Patroni's own configuration and log file. `run_dir` has no fencer here; it is kept so
    the bench's per-member helpers apply unchanged."""

    @property
    def config_path(self) -> Path:
        return self.base / "patroni.yaml"

    @property
    def log_path(self) -> Path:
        return self.base / "patroni.log"


@dataclass(slots=True)
class PatroniCluster:
    """etcd plus `size` Patroni members under `base`. Every process it starts, it stops.

    `timing` holds Patroni's `ttl`, `loop_wait` and `retry_timeout` (written to the DCS at
    bootstrap); see PATRONI_DEFAULT_TIMING and PATRONI_FAST_TIMING.
    """

    base: Path
    size: int = 3
    scope: str = "bench"
    timing: dict[str, int] = field(default_factory=lambda: dict(PATRONI_DEFAULT_TIMING))
    etcd_endpoints: list[str] = field(default_factory=list)
    etcd: subprocess.Popen[bytes] | None = None
    members: list[PatroniMember] = field(default_factory=list)
    patroni_exe: Path | None = None

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        for index in range(self.size):
            self.members.append(
                PatroniMember(
                    name=f"pg-{index}",
                    index=index,
                    pg_port=free_port(),
                    api_port=free_port(),
                    base=self.base / f"pg-{index}",
                )
            )

    # ------------------------------------------------------------------ etcd

    def start_etcd(self) -> None:
        if self.etcd_endpoints:
            return
        client, peer = free_port(), free_port()
        log = open(self.base / "etcd.log", "ab")  # noqa: SIM115 - owned by the child
        self.etcd = subprocess.Popen(
            [
                ETCD_BIN,
                "--name",
                "bench-etcd",
                "--data-dir",
                str(self.base / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{client}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{client}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"bench-etcd=http://127.0.0.1:{peer}",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        self.etcd_endpoints = [f"http://127.0.0.1:{client}"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", client), timeout=0.2).close()
                return
            time.sleep(0.05)
        raise RuntimeError("etcd did not start; see etcd.log")

    # ------------------------------------------------------------------ members

    def config_for(self, member: PatroniMember) -> dict[str, object]:
        hba = [
            "local all all trust",
            "host all all 127.0.0.1/32 trust",
            "host replication all 127.0.0.1/32 trust",
        ]
        dcs: dict[str, object] = dict(self.timing)
        dcs["postgresql"] = {
            "use_pg_rewind": True,
            "use_slots": True,
            "parameters": {
                "wal_level": "replica",
                "hot_standby": "on",
                "wal_log_hints": "on",
                "wal_keep_size": "128MB",
                "max_wal_senders": 10,
                "max_replication_slots": 10,
                "max_connections": 40,
            },
        }
        return {
            "scope": self.scope,
            "name": member.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{member.api_port}",
                "connect_address": f"127.0.0.1:{member.api_port}",
            },
            "etcd3": {"hosts": [e.removeprefix("http://") for e in self.etcd_endpoints]},
            "bootstrap": {
                "dcs": dcs,
                "initdb": [{"encoding": "UTF8"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{member.pg_port}",
                "connect_address": f"127.0.0.1:{member.pg_port}",
                "data_dir": str(member.data_dir),
                "bin_dir": PG_BIN,
                "pgpass": str(member.base / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "postgres"},
                    "rewind": {"username": "postgres"},
                },
                "parameters": {
                    "shared_buffers": "32MB",
                    "unix_socket_directories": str(member.base),
                },
                "pg_hba": hba,
            },
            "watchdog": {"mode": "off"},
            "tags": {},
        }

    def prepare(self, member: PatroniMember) -> None:
        member.base.mkdir(parents=True, exist_ok=True)
        os.chmod(member.base, 0o755)
        _chown_postgres(member.base)
        member.config_path.write_text(yaml.safe_dump(self.config_for(member), sort_keys=False))
        os.chmod(member.config_path, 0o644)

    def start_member(self, index: int) -> None:
        if self.patroni_exe is None:
            self.patroni_exe = ensure_patroni()
        member = self.members[index]
        self.prepare(member)
        log = open(member.log_path, "ab")  # noqa: SIM115 - owned by the child
        user = "postgres" if _as_root() else None
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(member.base),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
        }
        member.process = subprocess.Popen(
            [str(self.patroni_exe), str(member.config_path)],
            stdout=log,
            stderr=log,
            cwd=member.base,
            env=env,
            user=user,
            group=user,
            extra_groups=[] if user else None,
            start_new_session=True,
        )
        log.close()

    def start(self) -> None:
        self.start_etcd()
        for index in range(self.size):
            self.start_member(index)

    def signal_agent(self, index: int, sig: signal.Signals) -> None:
        proc = self.members[index].process
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)

    def kill_member(self, index: int) -> None:
        """Hard kill: Patroni and its PostgreSQL, both with SIGKILL (a node dying)."""
        member = self.members[index]
        pid = member.postmaster_pid()
        self.signal_agent(index, signal.SIGKILL)
        if pid is not None:
            _kill_group_of(pid)
        if member.process is not None:
            member.process.wait()

    def kill_postgres(self, index: int) -> None:
        """SIGKILL the postmaster and its backends; Patroni is left running."""
        pid = self.members[index].postmaster_pid()
        if pid is not None:
            _kill_group_of(pid)

    def stop_member(self, index: int, timeout: float = 30.0) -> None:
        member = self.members[index]
        if member.process is None or member.process.poll() is not None:
            return
        member.process.send_signal(signal.SIGTERM)
        try:
            member.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_member(index)

    def stop(self) -> None:
        """Stop everything this cluster started; safe to call twice."""
        for index, member in enumerate(self.members):
            if member.process is not None and member.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member.process.pid, signal.SIGCONT)
                self.stop_member(index, timeout=20.0)
            self.kill_postgres(index)
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.kill()
            self.etcd.wait()

    # ------------------------------------------------------------------ observing

    async def patroni_cluster_json(
        self, session: aiohttp.ClientSession
    ) -> dict[str, object] | None:
        """Patroni's own GET /cluster from the first member that answers."""
        for member in self.members:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with session.get(
                    member.api_url + "/cluster", timeout=aiohttp.ClientTimeout(total=0.5)
                ) as resp:
                    if resp.status == 200:
                        body: dict[str, object] = await resp.json()
                        return body
        return None

    async def cluster_json(self, session: aiohttp.ClientSession) -> dict[str, object] | None:
        """Patroni's /cluster in pgwarden's shape: members with name, leader, role, state,
        timeline (what tests/support/cluster.py's `converged()` reads)."""
        view = await self.patroni_cluster_json(session)
        if view is None:
            return None
        raw = view.get("members")
        members: list[dict[str, object]] = []
        for item in raw if isinstance(raw, list) else []:
            if not isinstance(item, dict):
                continue
            leader = item.get("role") == "leader"
            members.append(
                {
                    "name": item.get("name"),
                    "leader": leader,
                    "role": "primary" if leader else "replica",
                    "state": item.get("state"),
                    "timeline": item.get("timeline"),
                    "lag": item.get("lag"),
                }
            )
        return {"members": members}

    async def converged(self, session: aiohttp.ClientSession) -> bool:
        """One member is the primary (GET /primary 200) and every other member streams from it.

        Read from the primary's `pg_stat_replication` (Patroni sets each member's name as its
        application_name), not from GET /cluster: Patroni refreshes a member's published state
        only once per loop_wait (10 s by default), which would add up to that much reporting
        delay to Patroni's figures. A standby that streams from the primary is on its timeline.
        """
        index = await self.primary_index(session)
        if index is None:
            return False
        others = {m.name for m in self.members if m.index != index}
        return others <= await self.streaming_from(index)

    async def streaming_from(self, index: int) -> set[str]:
        """Names of the standbys streaming from member `index`'s PostgreSQL (empty on error)."""
        query = "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
        try:
            async with asyncio.timeout(2.0):
                conn = await asyncpg.connect(
                    host="127.0.0.1",
                    port=self.members[index].pg_port,
                    user="postgres",
                    database="postgres",
                    timeout=1.0,
                )
                try:
                    rows = await conn.fetch(query)
                finally:
                    await conn.close(timeout=0.5)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return set()
        return {str(row["application_name"]) for row in rows}

    async def primary_index(self, session: aiohttp.ClientSession) -> int | None:
        """The member whose GET /primary says 200 (leader key held, PostgreSQL a primary)."""
        for index, member in enumerate(self.members):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(
                    member.api_url + "/primary", timeout=aiohttp.ClientTimeout(total=0.5)
                ) as resp:
                    if resp.status == 200:
                        return index
        return None

    async def leader_name(self, session: aiohttp.ClientSession) -> str | None:
        view = await self.cluster_json(session)
        members = view.get("members") if view is not None else None
        for item in members if isinstance(members, list) else []:
            if isinstance(item, dict) and item.get("leader"):
                name = item.get("name")
                return name if isinstance(name, str) else None
        return None

    async def post(
        self, session: aiohttp.ClientSession, index: int, path: str, body: dict[str, object]
    ) -> tuple[int, dict[str, object]]:
        """POST to member `index`'s Patroni API; the answer's text comes back as `message`.

        An empty `/switchover` body (pgwarden's "hand over to the best replica") becomes
        Patroni's `{"leader": <current leader>}` with no candidate, so Patroni picks one.
        Patroni answers 200 once the switchover is done (pgwarden answers 202 at once).
        """
        if path == "/switchover" and not body:
            leader = await self.leader_name(session) or self.members[index].name
            body = {"leader": leader}
        async with session.post(
            self.members[index].api_url + path,
            json=body,
            timeout=aiohttp.ClientTimeout(total=SWITCHOVER_TIMEOUT_S),
        ) as resp:
            return resp.status, {"message": await resp.text()}

    async def patch_config(
        self, session: aiohttp.ClientSession, body: dict[str, object]
    ) -> tuple[int, dict[str, object]]:
        """PATCH Patroni's dynamic configuration (e.g. `{"failsafe_mode": true}`) through the
        first member that answers."""
        for member in self.members:
            try:
                async with session.patch(
                    member.api_url + "/config",
                    json=body,
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as resp:
                    return resp.status, {"message": await resp.text()}
            except (aiohttp.ClientError, TimeoutError):
                continue
        return 0, {"message": "no member answers"}
