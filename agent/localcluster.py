"""A local cluster: etcd (or the test Kubernetes API server) and agents on this machine.

`LocalCluster` is what `pgwarden demo`, the end-to-end tests and the benchmarks drive: real
etcd, real PostgreSQL (run as an unprivileged user), one agent process per member, each started
with `pgwarden run --config <file>`. Every process it starts, `stop()` stops; the demo's also
carry a parent-death signal (`die_with_parent`, see `localproc.parent_death_signal`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from agent.localkube import LocalKubeApi
from agent.localproc import ETCD_BIN, PG_BIN, LocalMember, free_port, preexec_for
from agent.proctree import kill_postmaster_tree


@dataclass(slots=True)
class LocalCluster(LocalKubeApi):
    """etcd plus `size` agents under `base`. Every process it starts, it stops."""

    base: Path
    size: int = 3
    cluster: str = "demo"
    token: str = "demo-token"
    timing: dict[str, float] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)
    # Per member (by name): sections merged into that member's configuration (tags, callbacks).
    member_extra: dict[str, dict[str, object]] = field(default_factory=dict)
    etcd_endpoints: list[str] = field(default_factory=list)
    etcd: subprocess.Popen[bytes] | None = None
    members: list[LocalMember] = field(default_factory=list)
    # dcs_kind="kubernetes": the in-tree test API server (tests/k8s_apiserver) as a process
    # instead of etcd, one pod object per member (IP 127.0.0.1), lock kind `kube_lock`.
    dcs_kind: str = "etcd"
    kube_lock: str = "lease"
    apiserver: subprocess.Popen[bytes] | None = None
    apiserver_url: str = ""
    apiserver_token: str = "pgwarden-apiserver-token"  # the agents' (audit user pgwarden)
    admin_token: str = "pgwarden-admin-token"  # this harness's own requests (user admin)
    operator_token: str = "pgwarden-operator-token"  # an operator's commands (user operator)
    dcs_frozen: bool = False  # the demo's [d] key
    pg_bin: str = PG_BIN  # the members' postgresql.bin_dir (the tests pick a version)
    # The interpreter the agents run on (bench/footprint.py: a venv with the image's runtime
    # dependencies only, as deployed); the fencer runs on the agent's.
    python: str = sys.executable
    # The demo's processes get SIGTERM when the demo dies (see `_parent_death_signal`).
    die_with_parent: bool = False

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        for index in range(self.size):
            member_base = self.base / f"pg-{index}"
            self.members.append(
                LocalMember(
                    name=f"pg-{index}",
                    index=index,
                    pg_port=free_port(),
                    api_port=free_port(),
                    base=member_base,
                )
            )

    def _preexec(self) -> Callable[[], None] | None:
        return preexec_for(self.die_with_parent)

    # ------------------------------------------------------------------ etcd

    def start_etcd(self) -> None:
        if self.etcd_endpoints:
            return
        client, peer = free_port(), free_port()
        data = self.base / "etcd"
        log = open(self.base / "etcd.log", "ab")  # noqa: SIM115 - owned by the child
        self.etcd = subprocess.Popen(
            [
                ETCD_BIN,
                "--name",
                "demo-etcd",
                "--data-dir",
                str(data),
                "--listen-client-urls",
                f"http://127.0.0.1:{client}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{client}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"demo-etcd=http://127.0.0.1:{peer}",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=self._preexec(),  # noqa: PLW1509 - see _parent_death_signal
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

    def config_for(self, member: LocalMember) -> dict[str, object]:
        os_user = "postgres" if os.geteuid() == 0 else None
        timing: dict[str, float] = {
            "ttl_s": 6,
            "loop_wait_s": 2,
            "retry_timeout_s": 1.5,
            "fence_margin_s": 1,
        }
        timing.update(self.timing)
        config: dict[str, object] = {
            "name": member.name,
            "cluster": self.cluster,
            "namespace": "pgwarden",
            "run_dir": str(member.run_dir),
            "dcs": self._dcs_config(member),
            "postgresql": {
                "bin_dir": self.pg_bin,
                "data_dir": str(member.data_dir),
                "listen_host": "127.0.0.1",
                "connect_host": "127.0.0.1",
                "port": member.pg_port,
                "parameters": {
                    "shared_buffers": "32MB",
                    "max_connections": 40,
                    "wal_keep_size": "128MB",
                },
            },
            "api": {"listen_host": "127.0.0.1", "port": member.api_port, "token": self.token},
            "timing": timing,
            "log": {"format": "json", "level": "info"},
        }
        if os_user is not None:
            config["postgresql"]["os_user"] = os_user  # type: ignore[index]
        for key, value in self.extra.items():
            config[key] = value
        for key, value in self.member_extra.get(member.name, {}).items():
            current = config.get(key)
            if isinstance(current, dict) and isinstance(value, dict):
                config[key] = {**current, **value}
            else:
                config[key] = value
        return config

    def _dcs_config(self, member: LocalMember) -> dict[str, object]:
        if self.dcs_kind == "kubernetes":
            return {
                "kind": "kubernetes",
                "kubernetes": {
                    "namespace": self.kube_namespace,
                    "lock": self.kube_lock,
                    "pod_name": member.name,
                    "pod_ip": "127.0.0.1",
                    "kubeconfig": str(self.kubeconfig),
                    "labels": self.kube_labels,
                },
            }
        return {"kind": "etcd", "etcd": {"endpoints": self.etcd_endpoints}}

    def prepare(self, member: LocalMember) -> None:
        member.base.mkdir(parents=True, exist_ok=True)
        os.chmod(member.base, 0o755)
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            for path in (member.base,):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        member.config_path.write_text(yaml.safe_dump(self.config_for(member), sort_keys=False))

    def start_member(self, index: int) -> None:
        member = self.members[index]
        self.prepare(member)
        log = open(member.log_path, "ab")  # noqa: SIM115 - owned by the child
        member.process = subprocess.Popen(
            [self.python, "-m", "agent", "run", "--config", str(member.config_path)],
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=self._preexec(),  # noqa: PLW1509 - see _parent_death_signal
        )
        log.close()

    def start(self) -> None:
        if self.dcs_kind == "kubernetes":
            self.start_apiserver()
        else:
            self.start_etcd()
        for index in range(self.size):
            self.start_member(index)

    def signal_agent(self, index: int, sig: signal.Signals) -> None:
        proc = self.members[index].process
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)

    def kill_member(self, index: int) -> None:
        """Hard kill: the agent and its PostgreSQL, both with SIGKILL (a node dying)."""
        member = self.members[index]
        pid = member.postmaster_pid()
        self.signal_agent(index, signal.SIGKILL)
        if pid is not None:
            kill_postmaster_tree(pid)  # its backends too: they run in sessions of their own
        if member.process is not None:
            member.process.wait()

    def kill_postgres(self, index: int) -> None:
        """A crash of the postmaster (its backends notice and exit by themselves)."""
        pid = self.members[index].postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def stop_member(self, index: int, timeout: float = 30.0) -> None:
        member = self.members[index]
        if member.process is None or member.process.poll() is not None:
            return
        member.process.send_signal(signal.SIGTERM)
        try:
            member.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_member(index)

    def toggle_dcs_frozen(self) -> bool:
        """SIGSTOP the DCS process (etcd or the test API server), or SIGCONT it if it is
        frozen; returns whether it is frozen now."""
        proc = self.etcd if self.dcs_kind == "etcd" else self.apiserver
        if proc is None or proc.poll() is not None:
            return False
        self.dcs_frozen = not self.dcs_frozen
        os.kill(proc.pid, signal.SIGSTOP if self.dcs_frozen else signal.SIGCONT)
        return self.dcs_frozen

    def stop(self) -> None:
        """Stop everything this cluster started; safe to call twice."""
        for index, member in enumerate(self.members):
            if member.process is not None and member.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member.process.pid, signal.SIGCONT)
                self.stop_member(index, timeout=15.0)
            self.kill_postgres(index)
            _kill_fencer(member)
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.kill()
            self.etcd.wait()
        if self.apiserver is not None and self.apiserver.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.apiserver.pid, signal.SIGCONT)
            self.apiserver.kill()
            self.apiserver.wait()

    # ------------------------------------------------------------------ observing

    def api_session(self) -> aiohttp.ClientSession:
        """A client session for the members' APIs; every request this module and the test
        helpers make goes through one (a TLS cluster's gives the CA and a client
        certificate)."""
        return aiohttp.ClientSession()

    async def cluster_json(self, session: aiohttp.ClientSession) -> dict[str, object] | None:
        """/cluster from the first member that answers."""
        for member in self.members:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with session.get(
                    member.api_url + "/cluster", timeout=aiohttp.ClientTimeout(total=0.5)
                ) as resp:
                    if resp.status == 200:
                        body: dict[str, object] = await resp.json()
                        return body
        return None

    async def health(self, session: aiohttp.ClientSession, index: int) -> dict[str, object] | None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with session.get(
                self.members[index].api_url + "/health", timeout=aiohttp.ClientTimeout(total=0.5)
            ) as resp:
                body: dict[str, object] = await resp.json()
                return body
        return None

    async def primary_index(self, session: aiohttp.ClientSession) -> int | None:
        """The member whose /primary says 200 (the one holding the lease with a writable PG)."""
        for index, member in enumerate(self.members):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(
                    member.api_url + "/primary", timeout=aiohttp.ClientTimeout(total=0.5)
                ) as resp:
                    if resp.status == 200:
                        return index
        return None

    async def post(
        self, session: aiohttp.ClientSession, index: int, path: str, body: dict[str, object]
    ) -> tuple[int, dict[str, object]]:
        async with session.post(
            self.members[index].api_url + path,
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=aiohttp.ClientTimeout(total=5),
        ) as resp:
            return resp.status, await resp.json()

    async def patch_config(
        self, session: aiohttp.ClientSession, body: dict[str, object]
    ) -> tuple[int, dict[str, object]]:
        """PATCH /config through the first member that answers."""
        for member in self.members:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.patch(
                    member.api_url + "/config",
                    json=body,
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as resp:
                    return resp.status, await resp.json()
        return 0, {"error": "no member answers"}


def _kill_fencer(member: LocalMember) -> None:
    sock = member.run_dir / "fencer.sock"
    if not sock.exists():
        return
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as client:
        client.settimeout(0.5)
        client.connect(str(sock))
        client.sendall(b"DISARM\n")
        client.recv(64)
