"""The fencer: a tiny separate process that stops PostgreSQL when the primary's lease runs out.

Why a process: the deadline by which a primary must stop accepting writes
(`last renewal sent + ttl - fence_margin`, DESIGN.md section 3) must hold even when the agent
cannot act: its event loop stalls, a DCS call hangs, the agent is frozen (SIGSTOP) or killed
(SIGKILL) while PostgreSQL keeps running. A thread would freeze with the agent; this process
runs in a session of its own, imports only the standard library, and needs nothing from the
agent but the deadline, which every successful renewal moves forward.

Protocol: lines on a Unix socket, each answered by one line, as many as the agent likes on
one connection (issue 15: a connection per renewal cost about 3-4% of an idle leader's CPU).
    ARM <deadline>    deadline on CLOCK_MONOTONIC (shared by all processes of a host)
    DISARM            PostgreSQL is not a primary any more
    STATUS            -> "OK <armed|disarmed|fenced> <seconds left or ->"
    ADOPT <pid>       a restarted agent takes over this fencer; the status, then this fencer's
                      kind (`spawned` or `external`) and an id that a new fencer changes
    CHECK <pid> <start ticks> <data dir as dev:ino, or ->
                      -> the status if this fencer sees that process (the agent) and the same
                      data directory, and (when it exists) may read it and signal its owner's
                      processes, else ERR: a sidecar without the pod's process namespace, the
                      data volume or PostgreSQL's uid could not fence anything
Only a whole line is acted on: a connection that closes (its agent died, froze and was
killed) changes nothing, and an armed deadline stays armed. Connections are served without
blocking, so a client that connects and stays silent cannot delay the fence.
At the deadline it asks the postmaster for a fast shutdown (client backends terminated, WAL
senders ship what was committed), and after a grace of half the fence margin kills the
postmaster, each of its children and their process groups with SIGKILL (agent/proctree.py:
every PostgreSQL child runs in a session of its own): either way no backend acknowledges a
commit once the lease may have expired for the others. It then reports `fenced` until re-armed
or disarmed, and while fenced it stops again, within FENCED_CHECK_INTERVAL_S, any postmaster of
the data directory that runs without `standby.signal` (a primary): an agent frozen between its
last lease check and `pg_ctl start` or a promote, resumed after the deadline, would otherwise
run a primary beside the new leader for as long as that call and its check after it take
(chaos finding 18). A standby may start (the fenced agent rejoins as one); the agent disarms
once it has seen the fencing, from a fresh view of the DCS.
It exits once its agent is gone and it is not armed; while armed it outlives the agent and
fences at the deadline.

`--external` (no `--agent-pid`): a fencer not started by the agent, in a container of its own
in the pod (its own CPU quota; docs/kubernetes.md, "The fencer in its own container"). It
never exits because an agent is gone (the agent may be restarted), and asked to stop
(SIGTERM) while armed it keeps guarding the deadline: it exits once disarmed or fenced.
"""

from __future__ import annotations

# The C modules behind `signal` and `socket`: the same calls without those modules' enum
# classes (and selectors, argparse, pathlib, contextlib): the fencer stays about 4 MB
# smaller (bench/footprint.py). `_signal` is loaded at start-up anyway.
import _signal  # type: ignore[import-not-found]  # no stub; ints and signal()
import _socket
import os
import select
import sys
import time

from agent.proctree import dir_id, kill_postmaster_tree, pid_alive, start_ticks

AGENT_CHECK_INTERVAL_S = 0.5
LINE_MAX = 256  # a longer line is not the agent's: its connection is closed
MAX_CONNECTIONS = 8  # beyond, the least recently used connection is closed
# While fenced: how often a postmaster started as a primary is looked for. PostgreSQL takes
# longer than this from its start to accepting connections (crash recovery, the checkpoint).
FENCED_CHECK_INTERVAL_S = 0.02


def _log(message: str) -> None:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    print(f"{stamp} fencer[{os.getpid()}] {message}", file=sys.stderr, flush=True)


def postmaster_pid(data_dir: str) -> int | None:
    """The live postmaster's pid from postmaster.pid, or None."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid"), encoding="utf-8") as handle:
            pid = int(handle.readline().strip())
    except (OSError, ValueError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read()
    except OSError:
        return None
    return pid if b"postgres" in cmdline else None


def cannot_fence(data_dir: str) -> str | None:
    """Why this process could not stop a postmaster of `data_dir`, or None. PostgreSQL runs
    as the owner of its data directory (it refuses any other), a directory of mode 0700 or
    0750: its postmaster.pid is read here only with that owner's (or its group's) access, and
    its processes are signalled only by the same uid or with CAP_KILL. A sidecar under
    another uid saw the directory and the agent, was armed, and at the deadline found no
    postmaster.pid it could read: "no postmaster running", and the primary ran on."""
    try:
        owner = os.stat(data_dir).st_uid
    except OSError as exc:
        return f"cannot stat {data_dir}: {exc.strerror}"
    me = os.geteuid()
    if not os.access(data_dir, os.R_OK | os.X_OK):
        return f"uid {me} cannot read {data_dir} (owned by uid {owner}): no postmaster.pid"
    if owner not in (me, os.getuid()) and not _may_kill_any():
        return f"uid {me} without CAP_KILL cannot signal uid {owner}, the owner of {data_dir}"
    return None


def _may_kill_any() -> bool:
    """CAP_KILL (capability 5) in this process's effective set."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 5 & 1)
    except (OSError, ValueError, IndexError):
        return False
    return False


def _wait_gone(pid: int, seconds: float) -> bool:
    """Whether `pid` exits within `seconds`. A zombie has exited: the postmaster's parent is
    the agent, which does not reap it while frozen or after it died unreaped."""
    give_up = time.monotonic() + seconds
    while time.monotonic() < give_up:
        if not pid_alive(pid):
            return True
        time.sleep(0.01)
    return not pid_alive(pid)


def fence_postgres(data_dir: str, grace_s: float) -> str:
    """Make PostgreSQL of `data_dir` stop accepting writes now. Returns what was done.

    First a fast shutdown (SIGINT): no new connection, every client backend is terminated,
    and the WAL senders ship every committed record to the standbys before they exit, so a
    commit acknowledged just before the deadline is not left on this node alone (the chaos
    suite lost such commits when the fencer killed at once). After `grace_s` (half the fence
    margin: still before the lease can expire for the others) whatever is left of the
    process group is killed with SIGKILL.
    """
    pid = postmaster_pid(data_dir)
    if pid is None:
        return "no postmaster running"
    try:
        os.kill(pid, _signal.SIGINT)
        if _wait_gone(pid, grace_s):
            return f"postmaster {pid} stopped by a fast shutdown"
        if os.getpgid(pid) == pid:
            # The backends are in sessions of their own (setsid): kill each of them too.
            kill_postmaster_tree(pid)
            return f"fast shutdown took over {grace_s}s: killed postmaster {pid} and children"
        # Not a group leader (started by someone else): immediate shutdown makes every
        # backend exit without committing; SIGKILL follows if the postmaster lingers.
        os.kill(pid, _signal.SIGQUIT)
        if _wait_gone(pid, 1.0):
            return f"postmaster {pid} stopped by an immediate shutdown"
        kill_postmaster_tree(pid)
        return f"postmaster {pid} and its children killed"
    except ProcessLookupError:
        return f"postmaster {pid} already gone"


class Fencer:
    def __init__(
        self, socket_path: str, data_dir: str, agent_pid: int | None, grace_s: float
    ) -> None:
        self.socket_path = socket_path
        self.data_dir = data_dir
        self.grace_s = grace_s
        self.external = agent_pid is None  # a sidecar: serves until stopped
        self.agent_pid = agent_pid
        self.deadline: float | None = None
        self.fenced = False
        self.last_refence = ""
        self.stop = False
        self.ident = f"{os.getpid()}.{time.monotonic_ns()}"
        # Open connections by fd: the socket and the bytes of a line not yet complete.
        self.conns: dict[int, tuple[_socket.socket, bytes]] = {}

    def handle(self, line: str) -> str:
        verb, _, arg = line.strip().partition(" ")
        try:
            if verb == "ARM":
                self.deadline = float(arg)
                self.fenced = False
                return f"OK armed {self.deadline - time.monotonic():.3f}"
            if verb == "DISARM":
                self.deadline = None
                self.fenced = False
                return "OK disarmed -"
            if verb == "STATUS":
                return self.status()
            if verb == "ADOPT":
                self.agent_pid = int(arg)  # watched only by a spawned fencer (`_done`)
                kind = "external" if self.external else "spawned"
                return f"{self.status()} {kind} {self.ident}"
            if verb == "CHECK":
                return self.check(*arg.split())
        except (ValueError, TypeError):
            return f"ERR bad argument {arg!r}"
        return f"ERR unknown verb {verb!r}"

    def check(self, pid: str, ticks: str, data_dir: str) -> str:
        """Whether this fencer sees the agent's process and its data directory (a sidecar
        started without `shareProcessNamespace` or without the data volume cannot fence)."""
        if start_ticks(int(pid)) != int(ticks):
            return f"ERR agent process {pid} is not visible here (no shared process namespace?)"
        if data_dir != dir_id(self.data_dir):
            return f"ERR {self.data_dir} is not the agent's data directory here (not mounted?)"
        refusal = None if data_dir == "-" else cannot_fence(self.data_dir)
        if refusal is not None:
            return f"ERR {refusal}"
        return self.status()

    def status(self) -> str:
        if self.fenced:
            return "OK fenced -"
        if self.deadline is None:
            return "OK disarmed -"
        return f"OK armed {self.deadline - time.monotonic():.3f}"

    def fire(self) -> None:
        # How late it woke and how long the stop took: a fencer starved of CPU (a container's
        # quota it shares with PostgreSQL and the agent) fences late, and says so.
        started = time.monotonic()
        late = started - self.deadline if self.deadline is not None else 0.0
        done = self.try_fence()
        took = time.monotonic() - started
        _log(f"fence deadline reached ({late:.3f} s late, took {took:.3f} s): {done}")
        self.deadline = None
        self.fenced = True

    def refence_primary(self) -> None:
        """While fenced: stop a postmaster that runs as a primary (no standby.signal)."""
        if os.path.exists(os.path.join(self.data_dir, "standby.signal")):
            return
        if postmaster_pid(self.data_dir) is None:
            return
        done = self.try_fence()
        if done != self.last_refence:  # a stop that keeps failing is said once, not 50/s
            _log(f"a primary started while fenced: {done}")
        self.last_refence = done

    def try_fence(self) -> str:
        """`fence_postgres`, whose failure to signal (EPERM: a sidecar that runs as another
        user than the postmaster) is said, not raised: a fencer that died of it would fence
        nothing more, while this one stays fenced and tries again every 20 ms."""
        try:
            return fence_postgres(self.data_dir, self.grace_s)
        except OSError as err:
            return f"could not stop PostgreSQL: {err}"

    def _done(self) -> bool:
        """Whether to stop serving: asked to (SIGTERM), or our agent is gone; either only
        once nothing is armed, except that a spawned fencer asked to stop fences first."""
        if self.stop:
            return not self.external or self.deadline is None
        if self.external or self.deadline is not None:
            return False
        if not pid_alive(self.agent_pid or 0):
            _log("agent gone and not armed: exiting")
            return True
        return False

    def serve(self) -> None:
        _unlink(self.socket_path)
        server = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        server.bind(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        server.listen(16)
        server.setblocking(False)
        _signal.signal(_signal.SIGTERM, lambda *_: setattr(self, "stop", True))
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
        agent = "external" if self.external else f"agent {self.agent_pid}"
        _log(f"serving {self.socket_path} for {self.data_dir}, {agent}")
        try:
            while not self._done():
                timeout = AGENT_CHECK_INTERVAL_S
                if self.deadline is not None:
                    timeout = max(0.0, min(timeout, self.deadline - time.monotonic()))
                elif self.fenced:
                    timeout = FENCED_CHECK_INTERVAL_S
                watched = [server, *(conn for conn, _ in self.conns.values())]
                try:
                    readable, _, _ = select.select(watched, [], [], timeout)
                except InterruptedError:
                    readable = []  # a signal (SIGTERM sets `stop`): look again
                for sock in readable:
                    if sock is server:
                        self._accept(server)
                    elif sock.fileno() in self.conns:  # not closed by an accept just now
                        self._read(sock)
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    self.fire()
                elif self.fenced:
                    self.refence_primary()
            if self.stop and self.deadline is not None:
                # Asked to stop while armed: nobody would fence after us, so fence now.
                self.fire()
        finally:
            for conn, _ in self.conns.values():
                conn.close()
            server.close()
            _unlink(self.socket_path)

    def _accept(self, server: _socket.socket) -> None:
        try:
            fd, _ = server._accept()  # type: ignore[attr-defined]  # socket.accept's core
        except OSError:  # BlockingIOError: another wake-up took it; EMFILE: try later
            return
        conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
        conn.setblocking(False)
        if len(self.conns) >= MAX_CONNECTIONS:
            self._close(next(iter(self.conns)))  # the least recently used
        self.conns[fd] = (conn, b"")

    def _read(self, conn: _socket.socket) -> None:
        """Answer every whole line received on `conn`; close it on end of file (a partial
        line is dropped, never acted on), an error, or a line longer than LINE_MAX."""
        fd = conn.fileno()
        try:
            chunk = conn.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._close(fd)
            return
        pending = self.conns.pop(fd)[1] + chunk
        self.conns[fd] = (conn, pending)  # now the most recently used
        while b"\n" in pending:
            line, _, pending = pending.partition(b"\n")
            reply = self.handle(line.decode("ascii", "replace")).encode() + b"\n"
            try:
                sent = conn.send(reply)
            except OSError:  # the client is gone, or does not read its answers
                sent = 0
            if sent != len(reply):
                self._close(fd)
                return
        if len(pending) > LINE_MAX:
            self._close(fd)
            return
        self.conns[fd] = (conn, pending)

    def _close(self, fd: int) -> None:
        conn, _ = self.conns.pop(fd)
        conn.close()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:  # contextlib would be one more module to import
        return


USAGE = (
    "usage: pgwarden-fencer --socket PATH --data-dir DIR (--agent-pid PID | --external) "
    "[--grace SECONDS]"
)


def parse_args(argv: list[str]) -> tuple[str, str, int | None, float]:
    """(socket, data dir, agent pid or None for --external, grace) from `--name value` pairs
    and the `--external` flag (argparse is several MB of imports for five options). Raises
    ValueError naming what is wrong."""
    external = "--external" in argv
    argv = [arg for arg in argv if arg != "--external"]
    if len(argv) % 2:
        raise ValueError(f"{argv[-1]}: expected a value")
    given = dict(zip(argv[::2], argv[1::2], strict=True))
    unknown = set(given) - {"--socket", "--data-dir", "--agent-pid", "--grace"}
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]}")
    required = ("--socket", "--data-dir") + (() if external else ("--agent-pid",))
    missing = [name for name in required if name not in given]
    if missing:
        alternative = " (or --external)" if missing[0] == "--agent-pid" else ""
        raise ValueError(f"{missing[0]} is required{alternative}")
    if external and "--agent-pid" in given:
        raise ValueError("--agent-pid and --external exclude each other")
    try:
        pid = None if external else int(given["--agent-pid"])
        grace = float(given.get("--grace", "0.5"))  # seconds a fast shutdown gets before SIGKILL
    except ValueError as exc:
        raise ValueError(f"bad number: {exc}") from None
    return given["--socket"], given["--data-dir"], pid, grace


def main(argv: list[str] | None = None) -> int:
    try:
        socket_path, data_dir, agent_pid, grace = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"{USAGE}\npgwarden-fencer: error: {exc}", file=sys.stderr)
        return 2
    Fencer(socket_path, data_dir, agent_pid, grace).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
