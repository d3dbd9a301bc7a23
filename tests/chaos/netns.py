"""Network namespaces for the chaos suite: one per host, wired through a bridge namespace.

Layout of one run (`<tag>` = `pgw-<pid>-<random>`, so that concurrent runs never collide and a
crashed run's leftovers can be told apart from a live run's by its pid):

    <tag>-br   the bridge `br0` and one veth end per host; no address, no route anywhere else
    <tag>-n1.. one per PostgreSQL member (its PostgreSQL and its agent)
    <tag>-e1.. one per etcd member
    <tag>-c    the test client (workload, probes)

Every host namespace has `lo` up and `eth0` with one address of SUBNET. The subnet exists only
inside these namespaces: nothing is added to the host's own namespace, so it is never routed to
the host's real interfaces. Deleting the namespaces deletes every link with them.

Faults are iptables DROP rules inside a host's namespace, removed by `heal`: both directions
(`drop_between`: one namespace's rules cut a pair), one direction only (`drop_one_way`: the
host's packets to the others, or theirs to it), or a random share of the packets both ways
(`drop_randomly`: `-m statistic --mode random`). All namespaces share the host's
CLOCK_MONOTONIC.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

PREFIX = "pgw-"
SUBNET = "10.213.7"  # /24, inside the run's own namespaces only
NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be used here (not root, or `ip netns` fails)."""


def run(*args: str, timeout: float = 10.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (never a shell) with a timeout; raise with its stderr when it fails."""
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def probe_support() -> str | None:
    """None when namespaces, veths, bridges and iptables work here; otherwise why not."""
    if os.geteuid() != 0:
        return "the chaos suite needs root (network namespaces, iptables)"
    name = f"{PREFIX}{os.getpid()}-probe{secrets.token_hex(2)}"
    try:
        run("ip", "netns", "add", name)
        try:
            run("ip", "-n", name, "link", "add", "br0", "type", "bridge")
            run(
                "ip",
                "netns",
                "exec",
                name,
                "iptables",
                "-w",
                "-A",
                "INPUT",
                "-s",
                "10.0.0.1",
                "-j",
                "DROP",
            )
        finally:
            run("ip", "netns", "del", name, check=False)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"network namespaces are not usable here: {exc}"
    return None


def _libc_setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the calling thread in namespace `name` (sockets it creates live there), then return.

    A network namespace is a per-thread attribute, and a socket stays in the namespace it was
    created in; so the test's event loop, run in this thread, talks from the client host.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"{NETNS_DIR}/{name}", os.O_RDONLY)
    try:
        _libc_setns(target)
        try:
            yield
        finally:
            _libc_setns(own)
    finally:
        os.close(target)
        os.close(own)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_namespace_processes(name: str) -> None:
    """SIGKILL every process in namespace `name` (SIGCONT first: frozen ones die too)."""
    done = run("ip", "netns", "pids", name, check=False)
    for word in done.stdout.split():
        with contextlib.suppress(ValueError, ProcessLookupError):
            pid = int(word)
            os.kill(pid, signal.SIGKILL)
            os.kill(pid, signal.SIGCONT)


def delete_namespace(name: str) -> None:
    kill_namespace_processes(name)
    run("ip", "netns", "del", name, check=False)


def cleanup_leftovers() -> list[str]:
    """Delete the namespaces of chaos runs whose pytest process is gone; returns their names."""
    if not os.path.isdir(NETNS_DIR):
        return []
    removed = []
    for name in sorted(os.listdir(NETNS_DIR)):
        if not name.startswith(PREFIX):
            continue
        pid_text = name[len(PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and _pid_alive(int(pid_text)) and int(pid_text) != os.getpid():
            continue  # a live run of someone else
        if pid_text.isdigit() and int(pid_text) == os.getpid():
            continue  # ours: torn down by its owner
        delete_namespace(name)
        removed.append(name)
    return removed


@dataclass(frozen=True, slots=True, kw_only=True)
class Host:
    """One namespace with one address on the bridge."""

    key: str  # short name inside the run: n1, e2, c
    netns: str
    address: str

    def exec_args(self, *argv: str) -> list[str]:
        """`argv` run inside this host's namespace (ip netns exec execs it: same pid)."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def iptables(self, *args: str) -> None:
        run(*self.exec_args("iptables", "-w", *args))


@dataclass(slots=True, kw_only=True)
class Network:
    """The namespaces of one run. `create` builds them, `destroy` removes them (idempotent)."""

    keys: tuple[str, ...]
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}-{secrets.token_hex(2)}")
    hosts: dict[str, Host] = field(default_factory=dict)
    cut: set[str] = field(default_factory=set)  # hosts that carry DROP rules now

    @property
    def bridge_ns(self) -> str:
        return f"{self.tag}-br"

    def create(self) -> None:
        try:
            self._create()
        except BaseException:
            self.destroy()
            raise

    def _create(self) -> None:
        br = self.bridge_ns
        run("ip", "netns", "add", br)
        run("ip", "-n", br, "link", "set", "lo", "up")
        run("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", br, "link", "set", "br0", "up")
        for number, key in enumerate(self.keys, start=11):
            host = Host(key=key, netns=f"{self.tag}-{key}", address=f"{SUBNET}.{number}")
            run("ip", "netns", "add", host.netns)
            self.hosts[key] = host
            run("ip", "-n", host.netns, "link", "set", "lo", "up")
            # Both ends are created inside namespaces: nothing ever appears in the host's own.
            run(
                "ip",
                "-n",
                br,
                "link",
                "add",
                key,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host.netns,
            )
            run("ip", "-n", br, "link", "set", key, "master", "br0")
            run("ip", "-n", br, "link", "set", key, "up")
            run("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            run("ip", "-n", host.netns, "link", "set", "eth0", "up")

    def destroy(self) -> None:
        for host in self.hosts.values():
            delete_namespace(host.netns)
        delete_namespace(self.bridge_ns)
        self.hosts.clear()
        self.cut.clear()

    # ------------------------------------------------------------------ faults

    def drop_between(self, key: str, others: Iterable[str]) -> None:
        """Cut `key` from each of `others`, both directions (rules in `key`'s namespace)."""
        host = self.hosts[key]
        for other in others:
            address = self.hosts[other].address
            host.iptables("-A", "INPUT", "-s", address, "-j", "DROP")
            host.iptables("-A", "OUTPUT", "-d", address, "-j", "DROP")
        self.cut.add(key)

    def drop_one_way(self, key: str, others: Iterable[str], *, outgoing: bool) -> None:
        """Drop only `key`'s packets to each of `others` (`outgoing`), or only theirs to `key`;
        the other direction passes. Rules in `key`'s namespace."""
        host = self.hosts[key]
        for other in others:
            address = self.hosts[other].address
            if outgoing:
                host.iptables("-A", "OUTPUT", "-d", address, "-j", "DROP")
            else:
                host.iptables("-A", "INPUT", "-s", address, "-j", "DROP")
        self.cut.add(key)

    def drop_randomly(self, key: str, others: Iterable[str], probability: float) -> None:
        """Drop each packet between `key` and each of `others`, either way, with
        `probability` (independently per packet and per direction)."""
        if not 0.0 < probability < 1.0:
            raise ValueError(f"drop probability {probability} is not in (0, 1)")
        host = self.hosts[key]
        share = f"{probability:.4f}"
        for other in others:
            address = self.hosts[other].address
            for chain, side in (("INPUT", "-s"), ("OUTPUT", "-d")):
                host.iptables(
                    "-A", chain, side, address, "-m", "statistic", "--mode", "random",
                    "--probability", share, "-j", "DROP",
                )  # fmt: skip
        self.cut.add(key)

    def isolate(self, key: str) -> None:
        """Cut `key` from every other host (loopback keeps working)."""
        self.drop_between(key, [k for k in self.hosts if k != key])

    def heal(self) -> None:
        """Remove every DROP rule this run added."""
        for key in sorted(self.cut):
            host = self.hosts[key]
            host.iptables("-F", "INPUT")
            host.iptables("-F", "OUTPUT")
        self.cut.clear()


def wait_for(predicate: object, timeout: float, interval: float = 0.05) -> bool:
    """Poll a zero-argument callable until it returns true (synchronous helper)."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
