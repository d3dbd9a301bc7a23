"""Real etcd clusters for tests: start, kill and restart members, on free loopback ports.

`etcd_cluster(size, base_dir, tls=..., auth=...)` builds an `EtcdCluster`; `start()` runs every
member (fast election settings: 50 ms heartbeats, 500 ms election timeout) and returns when the
cluster serves a linearizable write and every member a linearizable read. Each member's log goes
to `<base_dir>/<name>.log`, its data to `<base_dir>/<name>`.

The pytest fixtures `etcd1` and `etcd3` (healthy at every test start: killed members are
restarted after each test) are defined here so that any conftest can re-export them:

    from tests.support.etcd import etcd1, etcd3, etcd1_cluster, etcd3_cluster  # noqa: F401
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.ports import free_ports

ETCD_BIN = os.environ.get("PGWARDEN_ETCD_BIN", "/usr/bin/etcd")
ETCDCTL_BIN = os.environ.get("PGWARDEN_ETCDCTL_BIN", "/usr/bin/etcdctl")
START_TIMEOUT_S = 20.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """PEM files for a TLS cluster: the CA, the server's cert/key (valid for 127.0.0.1 and
    localhost) and a client cert/key for mTLS. `client_cert_auth` makes etcd require it."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_cert_auth: bool = False


def make_tls_files(directory: Path, *, client_cert_auth: bool = False) -> TlsFiles:
    """A fresh CA and certificates (made with trustme) written into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("pgwarden-client@example.org", common_name="root")
    files = TlsFiles(
        ca_file=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        client_cert_auth=client_cert_auth,
    )
    ca.cert_pem.write_to_path(str(files.ca_file))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    return files


@dataclass
class EtcdMember:
    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class EtcdCluster:
    """A cluster of real etcd processes on loopback. See the module docstring."""

    def __init__(
        self,
        size: int,
        base_dir: Path,
        *,
        tls: TlsFiles | None = None,
        auth: tuple[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one member")
        self.base_dir = base_dir
        self.tls = tls
        self.auth = auth
        self.extra_args = extra_args
        self._size = size
        self._token = f"pgwarden-test-{uuid.uuid4().hex[:12]}"
        self._auth_enabled = False
        self.members: list[EtcdMember] = []
        self._assign_ports()

    @property
    def endpoints(self) -> list[str]:
        """Client URLs of all members (running or not)."""
        return [m.client_url for m in self.members]

    def _assign_ports(self) -> None:
        scheme = "https" if self.tls is not None else "http"
        ports = free_ports(2 * self._size)
        self.members = [
            EtcdMember(
                name=f"m{i}",
                client_url=f"{scheme}://127.0.0.1:{ports[2 * i]}",
                peer_url=f"http://127.0.0.1:{ports[2 * i + 1]}",
                data_dir=self.base_dir / f"m{i}",
            )
            for i in range(self._size)
        ]

    def _args(self, member: EtcdMember) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        args = [
            ETCD_BIN,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self._token}",
            # Fast elections: a killed leader is replaced in about a second.
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        if self.tls is not None:
            args += [f"--cert-file={self.tls.server_cert}", f"--key-file={self.tls.server_key}"]
            if self.tls.client_cert_auth:
                # etcd 3.4 requires a client certificate as soon as --trusted-ca-file is set.
                args += [f"--trusted-ca-file={self.tls.ca_file}", "--client-cert-auth"]
        return args + list(self.extra_args)

    def _spawn(self, member: EtcdMember) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with open(self.base_dir / f"{member.name}.log", "ab") as log:
            member.process = subprocess.Popen(
                self._args(member),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent if _on_main_thread() else None,  # noqa: PLW1509
            )

    def start(self) -> None:
        """Start every member and wait until the cluster serves reads and writes."""
        last_error: Exception | None = None
        for _ in range(3):
            try:
                for member in self.members:
                    self._spawn(member)
                self._wait_healthy(range(len(self.members)), write=True)
                break
            except Exception as exc:
                # Most likely a port taken by someone else in the meantime: retry on new ports.
                last_error = exc
                self._kill_all()
                self._remove_data()
                self._assign_ports()
        else:
            raise RuntimeError(f"etcd cluster did not start: {last_error}")
        if self.auth is not None:
            self._enable_auth(*self.auth)

    def kill(self, index: int) -> None:
        """SIGKILL one member (its data dir stays for `restart`)."""
        member = self.members[index]
        if member.process is not None:
            with contextlib.suppress(ProcessLookupError):
                member.process.send_signal(signal.SIGKILL)
            member.process.wait(timeout=10)
            member.process = None

    def restart(self, index: int) -> None:
        """Start a killed member again on its data dir; returns when it serves reads."""
        member = self.members[index]
        if member.is_running:
            return
        self._spawn(member)
        self._wait_healthy([index], write=False)

    def heal(self) -> None:
        """Restart every member that is not running (all at once: one alone may lack a quorum)."""
        dead = [i for i, m in enumerate(self.members) if not m.is_running]
        for index in dead:
            self._spawn(self.members[index])
        self._wait_healthy(dead, write=False)

    def wait_writable(self) -> None:
        """Wait until every running member takes a put and answers a linearizable read (after a
        kill, the survivors may be electing a raft leader: ~1 s here, more on a loaded machine)."""
        self._wait_healthy([i for i, m in enumerate(self.members) if m.is_running], write=True)

    def stop(self) -> None:
        """Kill all members and remove their data dirs. Idempotent."""
        self._kill_all()
        self._remove_data()

    def leader_index(self) -> int:
        """Index of the member that is the raft leader now."""
        for index, member in enumerate(self.members):
            if not member.is_running:
                continue
            with contextlib.suppress(OSError, ValueError):
                status = self._post(member.client_url, "/v3/maintenance/status", {}, 1.0)
                if status.get("leader") == status.get("header", {}).get("member_id"):
                    return index
        raise RuntimeError("no etcd leader")

    def etcdctl(self, *args: str) -> str:
        """Run etcdctl against the running members (as the auth user when auth is on)."""
        endpoints = ",".join(m.client_url for m in self.members if m.is_running)
        cmd = [ETCDCTL_BIN, f"--endpoints={endpoints}", "--dial-timeout=3s"]
        if self.tls is not None:
            cmd += [
                f"--cacert={self.tls.ca_file}",
                f"--cert={self.tls.client_cert}",
                f"--key={self.tls.client_key}",
            ]
        if self._auth_enabled and self.auth is not None:
            cmd.append(f"--user={self.auth[0]}:{self.auth[1]}")
        env = {**os.environ, "ETCDCTL_API": "3"}
        result = subprocess.run(
            [*cmd, *args], env=env, capture_output=True, text=True, timeout=20, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    # -- internals -----------------------------------------------------------------------------

    def _enable_auth(self, user: str, password: str) -> None:
        self.etcdctl("user", "add", f"{user}:{password}", "--interactive=false")
        if user != "root":
            self.etcdctl("user", "add", f"root:{password}", "--interactive=false")
        self.etcdctl("role", "add", "root")
        self.etcdctl("user", "grant-role", "root", "root")
        if user != "root":
            self.etcdctl("user", "grant-role", user, "root")
        self.etcdctl("auth", "enable")
        self._auth_enabled = True

    def _kill_all(self) -> None:
        for index in range(len(self.members)):
            with contextlib.suppress(Exception):
                self.kill(index)

    def _remove_data(self) -> None:
        for member in self.members:
            shutil.rmtree(member.data_dir, ignore_errors=True)

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        ctx = ssl.create_default_context(cafile=str(self.tls.ca_file))
        ctx.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return ctx

    def _post(
        self, url: str, path: str, body: dict[str, Any], timeout_s: float, token: str | None = None
    ) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = token
        request = urllib.request.Request(
            url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=timeout_s, context=self._ssl_context()) as r:
            answer: dict[str, Any] = json.loads(r.read())
            return answer

    def _token_for(self, url: str) -> str | None:
        if not self._auth_enabled or self.auth is None:
            return None
        answer = self._post(
            url, "/v3/auth/authenticate", {"name": self.auth[0], "password": self.auth[1]}, 2.0
        )
        token = answer.get("token")
        return token if isinstance(token, str) else None

    def _wait_healthy(self, indexes: range | list[int], *, write: bool) -> None:
        """Wait until each member in `indexes` answers a linearizable read (so it has a leader
        and has caught up), and, with `write`, until a put goes through."""
        deadline = time.monotonic() + START_TIMEOUT_S
        key = base64.b64encode(b"__pgwarden_health").decode()
        for index in list(indexes):
            member = self.members[index]
            while True:
                if member.process is None or member.process.poll() is not None:
                    raise RuntimeError(f"etcd member {member.name} exited; see its log")
                try:
                    token = self._token_for(member.client_url)
                    if write:
                        self._post(member.client_url, "/v3/kv/put", {"key": key}, 1.0, token)
                    self._post(member.client_url, "/v3/kv/range", {"key": key}, 1.0, token)
                    break
                except (OSError, ValueError, urllib.error.URLError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"etcd member {member.name} not healthy") from None
                    time.sleep(0.05)


def _on_main_thread() -> bool:
    # PR_SET_PDEATHSIG fires when the parent *thread* ends: only safe from the main thread.
    return threading.current_thread() is threading.main_thread()


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the test runner dies, so that no etcd
    outlives a crashed or killed pytest."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def etcd_cluster(
    size: int,
    base_dir: Path,
    *,
    tls: TlsFiles | None = None,
    auth: tuple[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> EtcdCluster:
    """An unstarted cluster of `size` members with data and logs under `base_dir`.
    `auth=(user, password)` creates that user (and root) with the root role and enables auth."""
    return EtcdCluster(size, base_dir, tls=tls, auth=auth, extra_args=extra_args)


@contextlib.contextmanager
def running_cluster(
    size: int,
    base_dir: Path,
    *,
    tls: TlsFiles | None = None,
    auth: tuple[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[EtcdCluster]:
    """A started cluster, stopped (and its data removed) on exit, even on failure."""
    cluster = etcd_cluster(size, base_dir, tls=tls, auth=auth, extra_args=extra_args)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# -- pytest fixtures (re-export them from a conftest) -------------------------------------------


@pytest.fixture(scope="session")
def etcd3_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A 3-member cluster shared by the session. Use `etcd3` in tests."""
    with running_cluster(3, tmp_path_factory.mktemp("etcd3")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def etcd1_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A single-member cluster shared by the session. Use `etcd1` in tests."""
    with running_cluster(1, tmp_path_factory.mktemp("etcd1")) as cluster:
        yield cluster


@pytest.fixture
def etcd3(etcd3_cluster: EtcdCluster) -> Iterator[EtcdCluster]:
    """The shared 3-member cluster, all members running; killed members restart afterwards."""
    etcd3_cluster.heal()
    yield etcd3_cluster
    etcd3_cluster.heal()


@pytest.fixture
def etcd1(etcd1_cluster: EtcdCluster) -> Iterator[EtcdCluster]:
    """The shared single-member cluster, running; restarted afterwards if a test killed it."""
    etcd1_cluster.heal()
    yield etcd1_cluster
    etcd1_cluster.heal()


# -- network fault helpers (asyncio, loopback only) ---------------------------------------------


class BlackHole:
    """A TCP server on loopback that accepts connections and never answers a byte."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> BlackHole:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)  # keep it open, say nothing

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class TcpProxy:
    """A TCP forwarder from a loopback port to `target_port`. `cut()` resets every open
    connection at once; `freeze()` silently stops forwarding on every open connection while
    keeping it open (a dead peer behind a live-looking socket). New connections still work."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.connections = 0
        self._epoch = 0  # connections opened before the last freeze() forward nothing
        self._open = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            async with asyncio.timeout(5):
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except (OSError, TimeoutError):
            writer.close()
            return
        self._writers |= {writer, up_writer}
        pipes = []
        for src, dst, name in ((reader, up_writer, "up"), (up_reader, writer, "down")):
            pipe = self._pipe(src, dst, self._epoch)
            task = asyncio.create_task(pipe, name=f"tcp-proxy-{name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            pipes.append(task)
        self._open += 1
        try:
            await asyncio.wait(pipes)
        finally:
            self._open -= 1

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, epoch: int) -> None:
        try:
            while data := await src.read(65536):
                if epoch != self._epoch:
                    continue  # frozen: swallow the data, keep the connection
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            dst.close()

    @property
    def open_connections(self) -> int:
        """Connections not yet closed in both directions."""
        return self._open

    def freeze(self) -> None:
        """Stop forwarding on every open connection, silently (no FIN, no RST)."""
        self._epoch += 1

    def cut(self) -> None:
        """Reset every open connection (RST, no FIN handshake)."""
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
        self._writers.clear()

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
