"""`pgwarden demo`: etcd and a 3-member cluster on this machine, with a live view.

`LocalCluster` is also what the end-to-end tests and the failover benchmark drive, so the
demo shows exactly what is tested: real etcd, real PostgreSQL (run as an unprivileged user),
one agent process per member, each started with `pgwarden run --config <file>`.

The demo stops everything it started however it ends: `q`, Ctrl-C, SIGTERM, SIGHUP (its
terminal closed), or a broken stdout (`make demo | tee log` and Ctrl-C: tee is gone first)
all lead to `LocalCluster.stop()`. If the demo itself is killed (SIGKILL, OOM) it cannot
clean up, so each process it starts directly carries a parent-death signal
(`die_with_parent`, see `_parent_death_signal`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import aiohttp
import yaml

from agent.ctl import render_table
from agent.proctree import kill_postmaster_tree
from agent.settings import LockKind

ETCD_BIN = "/usr/bin/etcd"
PG_BIN = "/usr/lib/postgresql/15/bin"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _parent_death_signal(sig: signal.Signals) -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel send `sig` to the child when this process dies,
    whatever kills it (Linux `prctl(PR_SET_PDEATHSIG)`); None where there is no prctl.

    Why a parent-death signal and which one. The demo's direct children are etcd (or the test
    API server) and the agents. The agents start PostgreSQL and their fencers in sessions of
    their own, on purpose: a fencer must outlive a dead *agent* while it is armed (it stops
    PostgreSQL at the lease deadline, then exits), and exits by itself once its agent is gone
    and it is disarmed. So the agents get SIGTERM, not SIGKILL: their usual bounded shutdown
    stops PostgreSQL and the fencer, replicas included (with SIGKILL a replica's PostgreSQL,
    whose fencer is never armed, would run on with nobody to stop it). etcd gets SIGTERM at
    the same moment; an agent that cannot reach it any more still stops PostgreSQL within its
    shutdown bound (the hand-over simply fails). Only the demo sets this: the kernel sends the
    signal when the *thread* that started the child exits, and the test harnesses that share
    `LocalCluster` may start processes from short-lived threads.

    Runs in the child between fork and exec, where another thread of the demo (the resolver
    pool) may hold a lock: so it only makes a foreign call prepared here and two syscalls,
    no import, no logging, no allocation outside the interpreter's own."""
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the demo died before prctl: nobody will signal us
            os.kill(os.getpid(), sig)

    return preexec


_handed_out: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one this process handed out before: the kernel may give a
    just-released port again, and two members must not get the same one."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@dataclass(slots=True)
class LocalMember:
    name: str
    index: int
    pg_port: int
    api_port: int
    base: Path
    process: subprocess.Popen[bytes] | None = None
    scheme: str = "http"  # https when the cluster's agents serve api.tls

    @property
    def api_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.api_port}"

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def run_dir(self) -> Path:
        return self.base / "run"

    @property
    def config_path(self) -> Path:
        return self.base / "pgwarden.yaml"

    @property
    def log_path(self) -> Path:
        return self.base / "agent.log"

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid


@dataclass(slots=True)
class LocalCluster:
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
    # The demo's processes get SIGTERM when the demo dies (see `_parent_death_signal`).
    die_with_parent: bool = False

    @property
    def kube_namespace(self) -> str:
        return "default"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (one JSON request record per line)."""
        return self.base / "apiserver-audit.jsonl"

    @property
    def kubeconfig(self) -> Path:
        return self.base / "kubeconfig.json"

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
        return _parent_death_signal(signal.SIGTERM) if self.die_with_parent else None

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

    # ------------------------------------------------------------------ Kubernetes

    def start_apiserver(self) -> None:
        """The test API server (a process, with a token and an audit log), a selector-less
        Service `<cluster>` and one Running pod per member, then a kubeconfig for agents."""
        if self.apiserver_url:
            return
        port = free_port()
        log = open(self.base / "apiserver.log", "ab")  # noqa: SIM115 - owned by the child
        repo = Path(__file__).resolve().parents[1]
        self.apiserver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.k8s_apiserver",
                "--port",
                str(port),
                "--token",
                f"{self.apiserver_token}=pgwarden",
                "--token",
                f"{self.admin_token}=admin",
                "--token",
                f"{self.operator_token}=operator",
                "--audit-log",
                str(self.audit_log),
            ],
            cwd=repo,
            env=dict(os.environ, PYTHONPATH=str(repo)),
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=self._preexec(),  # noqa: PLW1509 - see _parent_death_signal
        )
        log.close()
        self.apiserver_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                self._kube_request("GET", "/healthz")
                break
            except OSError:
                if time.monotonic() > deadline or self.apiserver.poll() is not None:
                    raise RuntimeError(
                        "the test API server did not start; see apiserver.log"
                    ) from None
                time.sleep(0.05)
        ns = self.kube_namespace
        self._kube_request(
            "POST",
            f"/api/v1/namespaces/{ns}/services",
            {"metadata": {"name": self.cluster}, "spec": {"ports": [{"port": 5432}]}},
        )
        for member in self.members:
            self._kube_request(
                "POST",
                f"/api/v1/namespaces/{ns}/pods",
                {
                    "metadata": {"name": member.name, "labels": self.kube_labels},
                    "spec": {"containers": [{"name": "postgres", "image": "pgwarden"}]},
                    "status": {"phase": "Running", "podIP": "127.0.0.1"},
                },
            )
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "local", "cluster": {"server": self.apiserver_url}}],
                    "users": [{"name": "agent", "user": {"token": self.apiserver_token}}],
                    "contexts": [
                        {
                            "name": "local",
                            "context": {"cluster": "local", "user": "agent", "namespace": ns},
                        }
                    ],
                    "current-context": "local",
                }
            )
        )
        os.chmod(self.kubeconfig, 0o644)

    @property
    def kube_labels(self) -> dict[str, str]:
        return {"app": "pgwarden", "cluster-name": self.cluster}

    def _kube_request(self, method: str, path: str, body: object = None) -> object:
        """One request to the test API server (urllib; raises OSError when unreachable)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.apiserver_url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.admin_token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=2) as response:
            raw = response.read()
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode("utf-8", errors="replace")

    def kube_get(self, path: str) -> object:
        """GET an object from the test API server (for tests and the demo)."""
        return self._kube_request("GET", path)

    # ------------------------------------------------------------------ members

    def config_for(self, member: LocalMember) -> dict[str, object]:
        os_user = "postgres" if os.geteuid() == 0 else None
        timing: dict[str, float] = {
            "ttl_s": 10,
            "loop_wait_s": 2,
            "retry_timeout_s": 3,
            "fence_margin_s": 2,
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
            [sys.executable, "-m", "agent", "run", "--config", str(member.config_path)],
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


# --------------------------------------------------------------------------- the live view

HELP = (
    "keys: [k]ill primary (agent+PostgreSQL)  [s]witchover  [r]estart stopped members\n"
    "      [f]ailsafe mode on/off  [d]CS freeze/thaw (SIGSTOP/SIGCONT)  [q]uit"
)


async def _read_keys(queue: asyncio.Queue[str]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        try:
            line = await reader.readline()
        except OSError:  # the terminal hung up (EIO)
            return
        if not line:
            return
        await queue.put(line.decode().strip().lower())


async def run_demo(cluster: LocalCluster, *, refresh_s: float) -> None:
    keys: asyncio.Queue[str] = asyncio.Queue()
    reader = asyncio.create_task(_read_keys(keys), name="demo-keys") if sys.stdin.isatty() else None
    store = "etcd" if cluster.dcs_kind == "etcd" else "the test Kubernetes API server"
    message = f"starting: {store} and {cluster.size} members (bootstrap takes a few seconds)"
    started = time.monotonic()
    async with cluster.api_session() as session:
        try:
            while True:
                view = await cluster.cluster_json(session)
                table = render_table(view) if view is not None else "(no member answers yet)"
                try:
                    sys.stdout.write("\x1b[2J\x1b[H" if sys.stdout.isatty() else "\n")
                    sys.stdout.write(
                        f"pgwarden demo - {time.strftime('%H:%M:%S')} - "
                        f"up {time.monotonic() - started:.0f}s - data in {cluster.base}\n\n"
                    )
                    sys.stdout.write(table + "\n\n" + message + "\n" + HELP + " (then Enter)\n")
                    sys.stdout.flush()
                except OSError as exc:  # EPIPE: `| tee` ended by Ctrl-C; EIO: terminal closed
                    raise _OutputGone(exc.strerror or str(exc)) from exc
                try:
                    key = await asyncio.wait_for(keys.get(), timeout=refresh_s)
                except TimeoutError:
                    continue
                message = await _handle_key(cluster, session, key)
                if message == "quit":
                    return
        finally:
            if reader is not None:
                reader.cancel()


async def _handle_key(cluster: LocalCluster, session: aiohttp.ClientSession, key: str) -> str:
    if key in ("q", "quit"):
        return "quit"
    if key in ("k", "kill"):
        index = await cluster.primary_index(session)
        if index is None:
            return "no primary to kill right now"
        cluster.kill_member(index)
        return f"killed pg-{index} (agent and PostgreSQL, SIGKILL) at {time.strftime('%H:%M:%S')}"
    if key in ("s", "switchover"):
        index = await cluster.primary_index(session)
        if index is None:
            return "no primary right now"
        status, body = await cluster.post(session, index, "/switchover", {})
        return f"switchover: HTTP {status} {json.dumps(body)}"
    if key in ("r", "restart"):
        started = []
        for index, member in enumerate(cluster.members):
            if member.process is None or member.process.poll() is not None:
                cluster.start_member(index)
                started.append(member.name)
        return f"restarted {', '.join(started) or 'nothing'}"
    if key in ("f", "failsafe"):
        view = await cluster.cluster_json(session)
        wanted = not (view is not None and view.get("failsafe_mode") is True)
        status, body = await cluster.patch_config(session, {"failsafe_mode": wanted})
        return f"failsafe_mode {'on' if wanted else 'off'}: HTTP {status} {json.dumps(body)}"
    if key in ("d", "dcs"):
        frozen = cluster.toggle_dcs_frozen()
        what = "frozen (SIGSTOP): watch the primary" if frozen else "thawed (SIGCONT)"
        return f"the DCS is {what} at {time.strftime('%H:%M:%S')}"
    return f"unknown key {key!r}"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="pgwarden demo")
    parser.add_argument("--dir", help="where to keep the demo's data (default: a new temp dir)")
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument(
        "--dcs",
        choices=["etcd", "kubernetes"],
        default="etcd",
        help="etcd, or the Kubernetes API (the in-tree test API server, one pod per member)",
    )
    parser.add_argument("--lock", choices=[k.value for k in LockKind], default="lease")
    parser.add_argument("--refresh", type=float, default=1.0, help="seconds between redraws")
    parser.add_argument(
        "--for",
        dest="duration",
        type=float,
        default=None,
        help="stop by itself after this many seconds (for scripts)",
    )
    args = parser.parse_args(list(argv))
    needed = [f"{PG_BIN}/postgres"] + ([ETCD_BIN] if args.dcs == "etcd" else [])
    for binary in needed:
        if not Path(binary).exists():
            print(f"pgwarden demo: {binary} is missing; run `make demo`", file=sys.stderr)
            return 2
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="pgwarden-demo-"))
    cluster = LocalCluster(
        base=base, size=args.size, dcs_kind=args.dcs, kube_lock=args.lock, die_with_parent=True
    )

    async def run() -> None:
        task = asyncio.create_task(run_demo(cluster, refresh_s=args.refresh), name="demo")
        loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, timeout=args.duration)

    code = 0
    for sig in _STOP_SIGNALS:  # until the loop runs, and while `start` waits for etcd
        signal.signal(sig, _stop_requested)
    try:
        cluster.start()
        asyncio.run(run())
    except _StopRequested:
        pass
    except _OutputGone as exc:
        _quiet_stdout()
        _say(f"pgwarden demo: cannot write the view ({exc}); stopping", sys.stderr)
        code = 1
    finally:
        # Stopping takes some seconds: another SIGTERM or SIGHUP must not cut it short
        # (Ctrl-C still does; the agents then get their parent-death SIGTERM).
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _say("\nstopping every process the demo started ...", sys.stdout)
        cluster.stop()
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    return code


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _StopRequested(Exception):
    """A stop signal arrived before the live view ran."""


class _OutputGone(Exception):
    """stdout cannot be written any more (a closed pipe, a hung-up terminal)."""


def _stop_requested(signum: int, frame: object) -> None:
    raise _StopRequested(signal.Signals(signum).name)


def _say(text: str, stream: TextIO) -> None:
    """Print `text` if `stream` still works (it may be a closed pipe or a hung-up tty):
    nothing may keep `cluster.stop()` from running."""
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError):
        if stream is sys.stdout:
            _quiet_stdout()


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that neither later prints nor the interpreter's final
    flush fail on the broken one."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
