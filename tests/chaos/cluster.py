"""A pgwarden cluster whose hosts are network namespaces: the DCS hosts, N member hosts, a client.

Each member host runs its agent (as root, `python -m agent run --config`) and, through the
agent, its PostgreSQL as the `postgres` OS user. The DCS is either 3 etcd hosts, each running
one etcd member (`dcs="etcd"`), or one host `k` running the in-tree test Kubernetes API server
(`dcs="kubernetes"`, tests/k8s_apiserver, lock kind `endpoints`), with one pod object per
member whose podIP is the member host's address. Since every host has its own namespace,
fixed ports (5432, 8008, 2379, 2380, 6443) cannot collide.

The test API server keeps its objects in memory only: killing it would lose the leader, the
member records and the cluster's `initialize` record, which a real API server never does. So
it is only ever frozen (SIGSTOP/SIGCONT) or cut off, never killed, while a run lasts.

Processes are started with `ip netns exec`, which execs the command: the Popen pid is the
agent's (or etcd's) own pid, so signals reach it directly. `stop` kills everything left in the
namespaces (fencers and orphaned postmasters too) and deletes them.

The observing methods (`cluster_view`, `primary`, `converged`, SQL helpers) open sockets, so
they must run while the calling thread is in the client namespace (`netns.entered`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import yaml

from tests.chaos.delay_proxy import redirect_rules, write_control
from tests.chaos.fuse_fs import FuseStore
from tests.chaos.netns import SUBNET, Host, Network, entered
from tests.chaos.stepped_clock import write_offset

ETCD_BIN = "/usr/bin/etcd"
PG_BIN = "/usr/lib/postgresql/15/bin"
REPO = Path(__file__).resolve().parents[2]
# The directory whose `agent` package the agents run (`python -m agent` from there): the
# checkout by default; CHAOS_AGENT_SRC=<dir> runs another version of the agent (a copy of an
# older commit, for before/after figures) against the same harness.
AGENT_SRC = Path(os.environ.get("CHAOS_AGENT_SRC") or REPO)
PG_PORT = 5432
API_PORT = 8008
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
KUBE_PORT = 6443
PROXY_PORT = 15999  # the delaying proxy in each member's namespace (delay_proxies)
KUBE_NAMESPACE = "default"
KUBE_AGENT_TOKEN = "chaos-agent-token"  # the agents' bearer token (user pgwarden)
KUBE_ADMIN_TOKEN = "chaos-admin-token"  # the harness's own requests (user admin)
KUBE_LABELS = {"app": "pgwarden", "cluster-name": "chaos"}
TOKEN = "chaos-token"
TABLE = "pgwarden_probe"

# The quick profile's timings (the timing rule holds: 1 + 2 * 1.5 + 1 <= 6).
QUICK_TIMING: dict[str, float] = {
    "ttl_s": 6.0,
    "loop_wait_s": 1.0,
    "retry_timeout_s": 1.5,
    "fence_margin_s": 1.0,
    "primary_start_timeout_s": 5.0,
    "switchover_timeout_s": 5.0,
    "peer_check_timeout_s": 0.3,
}


@dataclass(slots=True)
class Proc:
    """A process this cluster started in one host's namespace."""

    host: Host
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    cwd: Path = REPO

    def start(self) -> None:
        if self.running:
            return
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                self.host.exec_args(*self.argv),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap (SIGCONT too, so a frozen process dies at once)."""
        if self.popen is None:
            return
        self.signal(signal.SIGKILL)
        self.signal(signal.SIGCONT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)

    def wait(self, timeout: float) -> bool:
        """True when it exited within `timeout`."""
        if self.popen is None:
            return True
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True


@dataclass(slots=True, kw_only=True)
class Member:
    name: str
    host: Host
    base: Path
    agent: Proc
    # The data directory on a FUSE store that can hang every write (ChaosCluster.fuse_storage).
    store: FuseStore | None = None
    # The transparent delaying proxy every outgoing TCP connection of the member goes through
    # (ChaosCluster.delay_proxies; tests/chaos/delay_proxy.py).
    proxy: Proc | None = None

    @property
    def delay_control(self) -> Path:
        """The proxy's control file: one-way delay per destination address."""
        return self.base / "delay.json"

    @property
    def clock_offset(self) -> Path:
        """The stepped wall clock's offset file (ChaosCluster.stepped_clocks)."""
        return self.base / "clock.offset"

    @property
    def address(self) -> str:
        return self.host.address

    @property
    def api_url(self) -> str:
        return f"http://{self.address}:{API_PORT}"

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid


@dataclass(slots=True, kw_only=True)
class EtcdNode:
    name: str
    host: Host
    proc: Proc

    @property
    def client_url(self) -> str:
        return f"http://{self.host.address}:{ETCD_CLIENT_PORT}"


@dataclass(slots=True, kw_only=True)
class ApiServer:
    """The test Kubernetes API server on its own host (state in memory: never kill it)."""

    host: Host
    proc: Proc

    @property
    def url(self) -> str:
        return f"http://{self.host.address}:{KUBE_PORT}"


@dataclass(slots=True, kw_only=True)
class ChaosCluster:
    """Namespaces, DCS and agents of one chaos run. `start` builds it, `stop` removes it all."""

    size: int = 3
    dcs: str = "etcd"  # "etcd" (3 etcd hosts) or "kubernetes" (the test API server's host)
    etcd_size: int = 3
    timing: dict[str, float] = field(default_factory=lambda: dict(QUICK_TIMING))
    synchronous_mode: str = "off"  # seeds the DCS config at bootstrap: off, on or quorum
    failsafe_mode: bool = False  # seeds the DCS config's failsafe_mode (ha.failsafe_mode)
    # Each member's data directory is a FUSE passthrough of `<base>/store` whose writes and
    # fsyncs can be hung on command (tests/chaos/fuse_fs.py); the storage-hang scenarios.
    fuse_storage: bool = False
    # Every member's outgoing TCP connections to the other hosts (etcd, the other members'
    # PostgreSQL and REST API) go through a delaying proxy in its namespace, from the start
    # (tests/chaos/delay_proxy.py); the slow-network scenarios set its delays.
    delay_proxies: bool = False
    # Every agent runs with a wall clock that can be stepped (tests/chaos/stepped_clock.py;
    # `step_wall_clock`); the random mix's clock-step faults.
    stepped_clocks: bool = False
    # Extra keys of the agents' `ha` section (e.g. maximum_lag_on_failover_bytes).
    ha_extra: dict[str, object] = field(default_factory=dict)
    # Hosts on the bridge with no member: s1, s2, ... (a scenario starts what it needs there,
    # e.g. a second agent configured with a member's name: tests/chaos/nemesis_unlisted.py).
    spare_hosts: int = 0
    pg_bin: str = PG_BIN  # the members' postgresql.bin_dir (tests/support/pgversions.py)
    base: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="pgw-chaos-", dir="/tmp"))
    )
    network: Network = field(init=False)
    members: list[Member] = field(default_factory=list)
    etcd: list[EtcdNode] = field(default_factory=list)
    apiserver: ApiServer | None = None

    def __post_init__(self) -> None:
        if self.dcs not in ("etcd", "kubernetes"):
            raise ValueError(f"dcs must be etcd or kubernetes, got {self.dcs!r}")
        keys = [f"n{i + 1}" for i in range(self.size)]
        if self.dcs == "etcd":
            keys += [f"e{i + 1}" for i in range(self.etcd_size)]
        else:
            keys.append("k")
        keys += [f"s{i + 1}" for i in range(self.spare_hosts)]
        self.network = Network(keys=(*keys, "c"))

    @property
    def client(self) -> Host:
        return self.network.hosts["c"]

    @property
    def member_keys(self) -> list[str]:
        return [m.host.key for m in self.members]

    @property
    def etcd_keys(self) -> list[str]:
        return [e.host.key for e in self.etcd]

    @property
    def dcs_keys(self) -> list[str]:
        """The hosts of the DCS: the etcd hosts, or the API server's."""
        return self.etcd_keys if self.dcs == "etcd" else ["k"]

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Namespaces, then the DCS, then the agents. Everything is removed again on failure."""
        try:
            os.chmod(self.base, 0o755)
            self.network.create()
            if self.dcs == "etcd":
                self._start_etcd()
            else:
                self._start_apiserver()
            for i in range(self.size):
                host = self.network.hosts[f"n{i + 1}"]
                base = self.base / f"pg-{i}"
                member = Member(
                    name=f"pg-{i}",
                    host=host,
                    base=base,
                    agent=Proc(
                        host=host,
                        argv=[
                            sys.executable,
                            "-m",
                            *(
                                ["tests.chaos.stepped_clock", str(base / "clock.offset")]
                                if self.stepped_clocks
                                else ["agent"]
                            ),
                            "run",
                            "--config",
                            str(base / "pgwarden.yaml"),
                        ],
                        log=base / "agent.log",
                        cwd=AGENT_SRC,
                    ),
                )
                self._prepare(member)
                self.members.append(member)
                if self.delay_proxies:
                    self._start_proxy(member)
                member.agent.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill every process of the run and delete its namespaces. Safe to call twice."""
        for member in self.members:
            member.agent.signal(signal.SIGCONT)
        for member in self.members:
            if member.store is not None:  # hung processes cannot die while it stays blocked
                member.store.unblock()
        self.network.destroy()  # SIGKILLs whatever still runs in each namespace
        for member in self.members:
            member.agent.kill()
            if member.store is not None:
                member.store.stop()
        for member in self.members:
            if member.proxy is not None:
                member.proxy.kill()
        for node in self.etcd:
            node.proc.kill()
        if self.apiserver is not None:
            self.apiserver.proc.kill()

    def remove_files(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def _start_etcd(self) -> None:
        (self.base / "etcd").mkdir(exist_ok=True)
        initial = ",".join(
            f"etcd{i + 1}=http://{self.network.hosts[f'e{i + 1}'].address}:{ETCD_PEER_PORT}"
            for i in range(self.etcd_size)
        )
        for i in range(self.etcd_size):
            host = self.network.hosts[f"e{i + 1}"]
            name = f"etcd{i + 1}"
            client = f"http://{host.address}:{ETCD_CLIENT_PORT}"
            peer = f"http://{host.address}:{ETCD_PEER_PORT}"
            argv = [
                ETCD_BIN,
                f"--name={name}",
                f"--data-dir={self.base / 'etcd' / name}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={initial}",
                "--initial-cluster-state=new",
                "--initial-cluster-token=pgw-chaos",
                "--heartbeat-interval=50",
                "--election-timeout=500",
            ]
            node = EtcdNode(
                name=name, host=host, proc=Proc(host=host, argv=argv, log=self.base / f"{name}.log")
            )
            self.etcd.append(node)
            node.proc.start()

    def _start_apiserver(self) -> None:
        """The API server on host `k`, then (from the client host) the selector-less primary
        Service `chaos` and one Running pod per member with the member host's address as its
        podIP, as a StatefulSet would have them before the agents start."""
        host = self.network.hosts["k"]
        argv = [
            sys.executable,
            "-m",
            "tests.k8s_apiserver",
            "--host",
            host.address,
            "--port",
            str(KUBE_PORT),
            "--token",
            f"{KUBE_AGENT_TOKEN}=pgwarden",
            "--token",
            f"{KUBE_ADMIN_TOKEN}=admin",
        ]
        self.apiserver = ApiServer(
            host=host, proc=Proc(host=host, argv=argv, log=self.base / "apiserver.log")
        )
        self.apiserver.proc.start()
        with entered(self.client.netns):
            deadline = time.monotonic() + 15.0
            while True:
                try:
                    self.kube_request("GET", "/healthz")
                    break
                except OSError:
                    if time.monotonic() > deadline or not self.apiserver.proc.running:
                        raise RuntimeError("the test API server did not start") from None
                    time.sleep(0.05)
            ns = KUBE_NAMESPACE
            self.kube_request(
                "POST",
                f"/api/v1/namespaces/{ns}/services",
                {"metadata": {"name": "chaos"}, "spec": {"ports": [{"port": PG_PORT}]}},
            )
            for i in range(self.size):
                self.kube_request(
                    "POST",
                    f"/api/v1/namespaces/{ns}/pods",
                    {
                        "metadata": {"name": f"pg-{i}", "labels": dict(KUBE_LABELS)},
                        "spec": {"containers": [{"name": "postgres", "image": "pgwarden"}]},
                        "status": {
                            "phase": "Running",
                            "podIP": self.network.hosts[f"n{i + 1}"].address,
                        },
                    },
                )
        self.kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "chaos", "cluster": {"server": self.apiserver.url}}],
                    "users": [{"name": "agent", "user": {"token": KUBE_AGENT_TOKEN}}],
                    "contexts": [
                        {
                            "name": "chaos",
                            "context": {"cluster": "chaos", "user": "agent", "namespace": ns},
                        }
                    ],
                    "current-context": "chaos",
                }
            )
        )

    @property
    def kubeconfig(self) -> Path:
        return self.base / "kubeconfig.json"

    def kube_request(self, method: str, path: str, body: object = None) -> object:
        """One admin request to the API server (the calling thread must be in the client
        namespace; raises OSError when unreachable)."""
        assert self.apiserver is not None
        request = urllib.request.Request(
            self.apiserver.url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={
                "Authorization": f"Bearer {KUBE_ADMIN_TOKEN}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=2.0) as response:
            raw = response.read()
        try:
            return json.loads(raw) if raw else None
        except ValueError:  # /healthz answers a plain "ok"
            return raw.decode(errors="replace")

    def _prepare(self, member: Member) -> None:
        member.base.mkdir(parents=True, exist_ok=True)
        os.chmod(member.base, 0o755)
        entry = pwd.getpwnam("postgres")
        os.chown(member.base, entry.pw_uid, entry.pw_gid)
        if self.fuse_storage:
            member.store = FuseStore(
                source=member.base / "store",
                mountpoint=member.data_dir,
                control=member.base / "storage.blocked",
                log=member.base / "fuse.log",
            )
            member.store.start(owner=(entry.pw_uid, entry.pw_gid))
        (member.base / "pgwarden.yaml").write_text(
            yaml.safe_dump(self.config_for(member), sort_keys=False)
        )

    def _start_proxy(self, member: Member) -> None:
        """The member's delaying proxy, and the REDIRECT rule that sends it every connection
        the member opens to another host of the run."""
        write_control(member.delay_control, {})
        member.proxy = Proc(
            host=member.host,
            argv=[
                sys.executable,
                "-m",
                "tests.chaos.delay_proxy",
                str(PROXY_PORT),
                str(member.delay_control),
            ],
            log=member.base / "proxy.log",
        )
        member.proxy.start()
        for rule in redirect_rules(PROXY_PORT, member.address, f"{SUBNET}.0/24"):
            member.host.iptables(*rule)
        deadline = time.monotonic() + 10.0
        while not self._listening(member, PROXY_PORT):
            if time.monotonic() > deadline or not member.proxy.running:
                raise RuntimeError(f"the delaying proxy of {member.name} did not start")
            time.sleep(0.05)

    @staticmethod
    def _listening(member: Member, port: int) -> bool:
        done = subprocess.run(
            member.host.exec_args("ss", "-Hltn", f"sport = :{port}"),
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return bool(done.stdout.strip())

    def set_delays(self, index: int, delays: dict[str, object]) -> None:
        """One-way delay (or `{"delay_s", "rate_bps"}`) per destination address for member
        `index`'s outgoing traffic (tests/chaos/delay_proxy.py)."""
        write_control(self.members[index].delay_control, delays)

    def step_wall_clock(self, index: int, offset_s: float) -> None:
        """Member `index`'s agent's wall clock is the host's plus `offset_s` from now on (0:
        back to the host's); needs `stepped_clocks`."""
        if not self.stepped_clocks:
            raise RuntimeError("a wall clock step needs ChaosCluster(stepped_clocks=True)")
        write_offset(self.members[index].clock_offset, offset_s)

    def config_for(self, member: Member) -> dict[str, object]:
        """The agent's configuration: addresses on the bridge, trust only from the subnet."""
        subnet = f"{SUBNET}.0/24"
        return {
            "name": member.name,
            "cluster": "chaos",
            "namespace": "pgwarden",
            "run_dir": str(member.base / "run"),
            "dcs": self._dcs_config(member),
            "postgresql": {
                "bin_dir": self.pg_bin,
                "data_dir": str(member.data_dir),
                "listen_host": member.address,
                "connect_host": member.address,
                "port": PG_PORT,
                "os_user": "postgres",
                # No passwords in tests: trust, but only from the run's own namespaces.
                "pg_hba": [
                    f"host replication replicator {subnet} trust",
                    f"host all postgres {subnet} trust",
                ],
                "parameters": {
                    "shared_buffers": "32MB",
                    "max_connections": 40,
                    "wal_keep_size": "128MB",
                },
            },
            "api": {"listen_host": member.address, "port": API_PORT, "token": TOKEN},
            "timing": dict(self.timing),
            "ha": self._ha_config(),
            "log": {"format": "json", "level": "info"},
        }

    def _dcs_config(self, member: Member) -> dict[str, object]:
        if self.dcs == "etcd":
            return {"kind": "etcd", "etcd": {"endpoints": [n.client_url for n in self.etcd]}}
        return {
            "kind": "kubernetes",
            "kubernetes": {
                "namespace": KUBE_NAMESPACE,
                "lock": "endpoints",
                "pod_name": member.name,
                "pod_ip": member.address,
                "kubeconfig": str(self.kubeconfig),
                "labels": dict(KUBE_LABELS),
            },
        }

    def _ha_config(self) -> dict[str, object]:
        ha: dict[str, object] = {"synchronous_mode": self.synchronous_mode, **self.ha_extra}
        if self.failsafe_mode:  # only when asked: an agent without failsafe rejects the key
            ha["failsafe_mode"] = True
        return ha

    # ------------------------------------------------------------------ processes

    def start_agent(self, index: int) -> None:
        """Start the member's agent again if it is not running."""
        self.members[index].agent.start()

    def restart_dead_agents(self) -> list[str]:
        """Start dead agents again (and first their delaying proxies: a host whose processes
        were all killed lost its proxy, and its REDIRECT rule would blackhole every
        connection)."""
        started = []
        for member in self.members:
            if member.proxy is not None and not member.proxy.running:
                member.proxy.start()
                time.sleep(0.3)  # listening before the agent connects (a cold start is ~0.2 s)
        for member in self.members:
            member.agent.signal(signal.SIGCONT)
            if not member.agent.running:
                member.agent.start()
                started.append(member.name)
        return started

    def kill_fencer(self, index: int) -> list[int]:
        """SIGKILL the member's fencer process(es) (an `agent.fencer` argument, in its
        namespace): removes the protection that stops PostgreSQL when the agent is gone, so a
        scenario can show its assertion depends on it (CHAOS_UNFENCED=1)."""
        member = self.members[index]
        done = subprocess.run(
            ["ip", "netns", "pids", member.host.netns],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        killed = []
        for word in done.stdout.split():
            with contextlib.suppress(OSError, ValueError):
                with open(f"/proc/{int(word)}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                if b"agent.fencer" in argv:
                    os.kill(int(word), signal.SIGKILL)
                    killed.append(int(word))
        return killed

    def kill_postgres(self, index: int) -> None:
        pid = self.members[index].postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def restart_dead_etcd(self) -> list[str]:
        started = []
        for node in self.etcd:
            node.proc.signal(signal.SIGCONT)
            if not node.proc.running:
                node.proc.start()
                started.append(node.name)
        return started

    def resume_dcs(self) -> list[str]:
        """SIGCONT every DCS process and start dead etcd members. A dead API server is not
        started again (its state is gone): raise, since the run can no longer be judged."""
        started = self.restart_dead_etcd()
        if self.apiserver is not None:
            self.apiserver.proc.signal(signal.SIGCONT)
            if not self.apiserver.proc.running:
                raise RuntimeError("the test API server died; its in-memory state is lost")
        return started

    # ------------------------------------------------------------------ observing (client ns)

    def etcd_leader(self) -> int | None:
        """Index of the etcd raft leader, asked over the v3 HTTP gateway; None if unknown."""
        for index, node in enumerate(self.etcd):
            if not node.proc.running:
                continue
            request = urllib.request.Request(
                node.client_url + "/v3/maintenance/status", data=b"{}", method="POST"
            )
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(request, timeout=1.0) as response:
                    status = json.loads(response.read())
                if status.get("leader") == status.get("header", {}).get("member_id"):
                    return index
        return None

    async def cluster_view(self, session: aiohttp.ClientSession) -> dict[str, object] | None:
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

    async def primaries(self, session: aiohttp.ClientSession) -> list[int]:
        """Members whose /primary probe says 200 (lease held, PostgreSQL writable)."""
        found = []
        for index, member in enumerate(self.members):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(
                    member.api_url + "/primary", timeout=aiohttp.ClientTimeout(total=0.5)
                ) as resp:
                    if resp.status == 200:
                        found.append(index)
        return found

    async def converged(self, session: aiohttp.ClientSession) -> int | None:
        """The primary's index when one member leads as a running primary, all others stream
        on its timeline, and exactly one /primary probe agrees; else None."""
        view = await self.cluster_view(session)
        if view is None:
            return None
        members = view.get("members")
        if not isinstance(members, list) or len(members) != len(self.members):
            return None
        leaders = [m for m in members if m.get("leader")]
        if len(leaders) != 1 or leaders[0].get("role") != "primary":
            return None
        if leaders[0].get("state") != "running":
            return None
        timeline = leaders[0].get("timeline")
        for m in members:
            if not m.get("leader") and (
                m.get("state") != "streaming" or m.get("timeline") != timeline
            ):
                return None
        primaries = await self.primaries(session)
        if len(primaries) != 1 or self.members[primaries[0]].name != leaders[0].get("name"):
            return None
        return primaries[0]

    async def why_not_converged(self) -> str:
        """What /cluster (first member that answers) and each /primary say now: for the
        message of a convergence that did not come."""
        async with aiohttp.ClientSession() as session:
            view = await self.cluster_view(session)
            primaries = await self.primaries(session)
        members = view.get("members") if view is not None else None
        if not isinstance(members, list):
            return f"no /cluster answer; /primary 200 from {primaries}"
        states = ", ".join(
            f"{m.get('name')}{' (leader)' if m.get('leader') else ''} {m.get('role')} "
            f"{m.get('state')} tl {m.get('timeline')}"
            for m in members
            if isinstance(m, dict)
        )
        names = [self.members[i].name for i in primaries]
        return f"/cluster: {states}; /primary 200 from {names}"

    async def wait_converged(self, timeout: float) -> tuple[int | None, float]:
        """(primary index or None on timeout, seconds waited)."""
        start = time.monotonic()
        async with aiohttp.ClientSession() as session:
            while True:
                primary = await self.converged(session)
                if primary is not None or time.monotonic() - start > timeout:
                    return primary, time.monotonic() - start
                await asyncio.sleep(0.2)

    async def connect(self, index: int, timeout: float = 3.0) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=self.members[index].address,
            port=PG_PORT,
            user="postgres",
            database="postgres",
            timeout=timeout,
        )

    async def ensure_table(self, index: int) -> None:
        conn = await self.connect(index)
        try:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (value bigint PRIMARY KEY, writer text, "
                "at timestamptz DEFAULT now())"
            )
        finally:
            await conn.close()

    async def values(self, index: int) -> set[int]:
        conn = await self.connect(index)
        try:
            async with asyncio.timeout(10):
                rows = await conn.fetch(f"SELECT value FROM {TABLE}")
            return {int(r["value"]) for r in rows}
        finally:
            await conn.close()

    async def wal_position(self, index: int, *, primary: bool) -> int:
        """The primary's current WAL position, or a replica's replay position (bytes)."""
        conn = await self.connect(index)
        try:
            query = (
                "SELECT pg_current_wal_lsn() - '0/0'"
                if primary
                else "SELECT pg_last_wal_replay_lsn() - '0/0'"
            )
            async with asyncio.timeout(5):
                value = await conn.fetchval(query)
            return int(value or 0)
        finally:
            await conn.close()

    def logs_tail(self, lines: int = 40) -> str:
        """The last lines of each agent log (for failure messages and the report)."""
        out = []
        for member in self.members:
            path = member.base / "agent.log"
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {member.name} ({member.address})\n" + "\n".join(text))
        return "\n".join(out)
