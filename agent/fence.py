"""The agent's side of the fencer (see agent/fencer.py for why it is a separate process).

`FenceClient.arm(deadline)` is called after every successful acquire or renewal with
`Timing.fence_deadline(send time)`; `disarm()` once PostgreSQL is no longer a primary. If the
fencer cannot be reached, `arm` raises `FenceUnavailable`: the executor then refuses to
promote, since nobody would stop a primary whose agent stalls.

One connection stays open across calls (issue 15: a new one per renewal cost 199 µs of the
agent's CPU and 66 µs of the fencer's, 80 and 28 µs on the open one; about 3-4% of an idle
leader's CPU, measured in issue 16's fencer session). It is dropped after any call that did
not end with an answer (a timeout, a cancellation), so that a late answer is never read as
the next call's; a call that finds it closed by the other end (the fencer restarted) is made
again once on a new connection, within the same time limit, as every call used to be. What
the fencer does is unchanged by any of this: a closed connection leaves its deadline as it
was.

Where the fencer comes from (`fencer.mode`): `spawn` (the default) starts it as a child in a
session of its own, and starts it again if it dies; `external` never starts one: a fencer in
a container of its own in the pod (docs/kubernetes.md) must be listening, and until it
answers, and shows that it sees this agent's process and data directory, every call fails
and the agent does not lead. A spawning client that finds an external fencer on its socket
uses it and never starts one over it. Every fencer of this protocol, spawned or external, is
CHECKed at each new connection: it must guard this agent's data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import structlog

from agent.proctree import dir_id, start_ticks

CALL_TIMEOUT_S = 0.5
SPAWN_TIMEOUT_S = 5.0
# A spawned fencer whose agent is gone exits (when not armed), and resets the connections it
# had not yet accepted: an agent restarted at once meets it on its way out. It is gone (its
# socket unlinked) in milliseconds; a reset for longer than this is not that.
EXITING_FENCER_S = 2.0
# How much more than the deadline less the send time an ARM's answer may say is left (it is
# printed to the millisecond) before the fencer's monotonic clock is taken to lag ours.
CLOCK_SLACK_S = 0.01

_log = structlog.get_logger("pgwarden.fence")


# `python -I -S`: no site-packages scan and no .pth hooks (the editable install's finder
# alone imported pathlib, re, urllib); the fencer imports only agent/fencer.py and
# agent/proctree.py from the directory holding the `agent` package. "agent.fencer" stays an
# argument of its own, as with `-m`, so that tools find the process by it.
_BOOTSTRAP = (
    "import sys; root = sys.argv.pop(1); sys.argv.pop(1); sys.path.insert(0, root); "
    "from agent.fencer import main; sys.exit(main())"
)


def fencer_command() -> list[str]:
    """The command line that starts a fencer (its options follow)."""
    root = str(Path(__file__).resolve().parent.parent)
    return [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, root, "agent.fencer"]


class FenceUnavailable(Exception):
    """The fencer process could not be reached or started."""


class FenceState(StrEnum):
    ARMED = "armed"
    DISARMED = "disarmed"
    FENCED = "fenced"


@dataclass(frozen=True, slots=True, kw_only=True)
class FenceStatus:
    state: FenceState
    remaining_s: float | None


class Fence(Protocol):
    """What the HA loop needs of the fencer (FenceClient; a fake in the unit tests). Every
    call raises FenceUnavailable when the fencer cannot be reached."""

    async def arm(self, deadline: float) -> FenceStatus:
        """Fence PostgreSQL at `deadline` (monotonic) unless armed again or disarmed first."""

    async def disarm(self) -> FenceStatus:
        """PostgreSQL is no longer a primary: nothing to fence."""

    async def status(self) -> FenceStatus: ...


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class FenceClient:
    def __init__(
        self,
        *,
        run_dir: str,
        data_dir: str,
        grace_s: float = 0.5,
        socket_path: str | None = None,
        external: bool = False,
    ) -> None:
        self.socket_path = socket_path or str(Path(run_dir) / "fencer.sock")
        self.log_path = str(Path(run_dir) / "fencer.log")
        self.data_dir = data_dir
        self.grace_s = grace_s  # fast-shutdown time before SIGKILL (half the fence margin)
        self.external = external  # configured: never start a fencer
        self._process: asyncio.subprocess.Process | None = None
        # Waits for our spawned fencer to exit, to replace it at once (`_watch`).
        self._watch_task: asyncio.Task[None] | None = None
        self._stopping = False
        # The deadline the fencer held at its last answer (None: disarmed or fenced): what a
        # fencer respawned after a death is armed with, never a later one.
        self._held: float | None = None
        self._sent_at = 0.0
        self._stream: Stream | None = None
        self._lock = asyncio.Lock()  # one call at a time on the one connection
        self._fencer_id: str | None = None  # the id the fencer gave at our last ADOPT
        self._found_external = False  # an external fencer answered: never spawn over it
        self._legacy = False  # an older fencer: one line per connection, as it closes after it
        # The data directory's id (`dir_id`) an external fencer last confirmed it sees (CHECK).
        self._checked_dir: str | None = None

    async def _call(self, line: str) -> str:
        """`_call_once`; a fencer found dead (nothing listens on its socket: it was killed,
        OOM-killed, crashed) is first replaced by a new one armed with the deadline the dead
        one held, so that the agent need not give up its lease for it (issue 16)."""
        async with self._lock:
            try:
                return await self._call_once(line)
            except FenceUnavailable as exc:
                if not self._may_spawn(exc):
                    raise  # slow, not dead (a timeout): a second fencer must not be started
            held = self._held
            _log.warning("fencer_respawned", held_s=_remaining(held))
            try:
                await self._spawn()
            except OSError as exc:  # cannot start it (no memory, no pids): unreachable as before
                raise FenceUnavailable(f"fencer respawn: {exc!r}") from exc
            if held is not None:
                await self._call_once(f"ARM {held:.6f}")
            return await self._call_once(line)

    def _may_spawn(self, exc: FenceUnavailable) -> bool:
        """Whether a failed call may start a fencer: nothing listens on the socket, and no
        external fencer is meant to (configured, or one has answered there)."""
        if self.external or self._found_external:
            return False
        return isinstance(exc.__cause__, (ConnectionRefusedError, FileNotFoundError))

    async def _call_once(self, line: str) -> str:
        """One line answered, on the open connection or a new one, within CALL_TIMEOUT_S."""
        self._sent_at = time.monotonic()
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                reply = await self._exchange_reconnecting(line)
        except (OSError, TimeoutError) as exc:
            self._drop()
            raise FenceUnavailable(f"fencer at {self.socket_path}: {exc!r}") from exc
        except BaseException:  # cancelled mid-call: its answer must not be read as the next's
            self._drop()
            raise
        if not reply.startswith("OK"):
            raise FenceUnavailable(f"fencer answered {reply!r} to {line.split(maxsplit=1)[0]}")
        return reply

    async def _exchange_reconnecting(self, line: str) -> str:
        if self._stream is not None and self._check_outdated(line):
            self._drop()  # a new connection checks the directory the ARM is for
        if self._stream is not None:
            try:
                return await self._exchange(self._stream, line)
            except ConnectionError:  # closed at the other end: a fencer restarted
                self._drop()
        stream = None if self._legacy else await self._connect()
        if stream is None:  # an older fencer (an agent upgraded over it): a line per connection
            stream = await asyncio.open_unix_connection(self.socket_path)
            try:
                return await self._exchange(stream, line)
            finally:
                stream[1].close()
        self._stream = stream
        return await self._exchange(stream, line)

    @staticmethod
    async def _exchange(stream: Stream, line: str) -> str:
        reader, writer = stream
        writer.write(line.encode() + b"\n")
        await writer.drain()
        reply = await reader.readline()
        if not reply.endswith(b"\n"):
            raise ConnectionResetError("the fencer closed the connection")
        return reply.decode().strip()

    async def _connect(self) -> Stream | None:
        """A new connection to the fencer, adopted: it learns our pid (a spawned fencer
        exits once that process is gone), an external one shows that it sees our process
        and data directory (CHECK), and a fencer that is not the one we last talked to (a
        restarted sidecar, a respawn) is armed first with the deadline the other held.
        None for a fencer older than this protocol (it closed the connection after ADOPT)."""
        stream = await asyncio.open_unix_connection(self.socket_path)
        try:
            adopted = (await self._exchange(stream, f"ADOPT {os.getpid()}")).split()
            if adopted[:1] != ["OK"]:
                raise FenceUnavailable(f"fencer answered {' '.join(adopted)!r} to ADOPT")
            if len(adopted) < 5 and not self.external:  # an older fencer says neither below
                self._legacy = True
                stream[1].close()
                return None
            kind, ident = [*adopted[3:5], "spawned", "-"][:2]
            if kind == "external":
                if not self._found_external and not self.external:
                    _log.info("fencer_external_found", socket=self.socket_path)
                self._found_external = True
            elif self.external:
                raise FenceUnavailable(f"fencer.mode is external, found a {kind} fencer")
            # Spawned ones too: a fencer left on this socket by an agent of another data
            # directory (moved, or another member configured with this run_dir) was adopted
            # and armed, and at the deadline it would have stopped that directory's server.
            ticks, directory = start_ticks(os.getpid()), dir_id(self.data_dir)
            checked = await self._exchange(stream, f"CHECK {os.getpid()} {ticks} {directory}")
            if not checked.startswith("OK"):
                raise FenceUnavailable(f"fencer answered {checked!r} to CHECK")
            self._checked_dir = directory
            known, self._fencer_id = self._fencer_id, ident
            if known is not None and ident != known and self._held is not None:
                armed = await self._exchange(stream, f"ARM {self._held:.6f}")
                _log.warning("fencer_rearmed", answer=armed, held_s=_remaining(self._held))
        except BaseException:
            stream[1].close()
            raise
        return stream

    def _check_outdated(self, line: str) -> bool:
        """Whether an ARM must wait for a new CHECK: the data directory is not the one the
        external fencer confirmed. A member's first start finds none (`-`: a fresh volume,
        before initdb or a clone), and a fencer without the data volume, or pointed at another
        path, finds none either: the two matched, and a fencer that could stop nothing was
        armed for the primary bootstrapped next."""
        if self._checked_dir is None or not line.startswith("ARM"):
            return False
        return dir_id(self.data_dir) != self._checked_dir

    def _drop(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream = None

    def _parse(self, reply: str) -> FenceStatus:
        _, state, remaining = [*reply.split(), "-", "-"][:3]
        status = FenceStatus(
            state=FenceState(state),
            remaining_s=None if remaining == "-" else float(remaining),
        )
        if status.state != FenceState.ARMED or status.remaining_s is None:
            self._held = None
        else:  # measured from before the call was sent, rounded down: never later than its own
            self._held = self._sent_at + status.remaining_s - 0.001
        return status

    async def start(self) -> FenceStatus:
        """Adopt a running fencer (a previous agent's, still guarding its deadline, or the
        pod's external one) or spawn one (not when external: FenceUnavailable then)."""
        async with self._lock:
            give_up = time.monotonic() + EXITING_FENCER_S
            while True:
                try:
                    return self._parse(await self._call_once("STATUS"))
                except FenceUnavailable as exc:
                    if self._may_spawn(exc):
                        break
                    reset = isinstance(exc.__cause__, (ConnectionResetError, BrokenPipeError))
                    if not reset or time.monotonic() >= give_up:
                        raise
                await asyncio.sleep(0.05)  # a fencer on its way out (EXITING_FENCER_S)
            await self._spawn()
            return self._parse(await self._call_once("STATUS"))

    async def _spawn(self) -> None:
        """Start a fencer and wait until it answers."""
        self._legacy = False  # ours is of this version
        Path(self.socket_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115, ASYNC230 - a child inherits it; instant
        try:
            self._process = await asyncio.create_subprocess_exec(
                *fencer_command(),
                "--socket",
                self.socket_path,
                "--data-dir",
                self.data_dir,
                "--agent-pid",
                str(os.getpid()),
                "--grace",
                str(self.grace_s),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a signal to the agent's group must not reach it
            )
        finally:
            log.close()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + SPAWN_TIMEOUT_S
        while True:
            try:
                await self._call_once("STATUS")
                break
            except FenceUnavailable:
                if loop.time() > give_up or self._process.returncode is not None:
                    raise
                await asyncio.sleep(0.02)
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.create_task(self._watch(), name="fencer-watch")

    async def _watch(self) -> None:
        """Replace our spawned fencer the moment it exits (killed, OOM-killed, crashed),
        armed with the deadline it held: waiting for the next call (the next renewal, up to
        loop_wait_s later) left the primary unguarded meanwhile, and an agent that stalled
        in that window would never be fenced (chaos, session 24's hunt)."""
        while not self._stopping and self._process is not None:
            process = self._process
            await process.wait()
            if self._stopping or process is not self._process:
                continue  # stopped by us, or replaced meanwhile by a call's respawn
            async with self._lock:
                if self._stopping or process is not self._process:
                    continue
                held = self._held
                _log.warning("fencer_respawned", held_s=_remaining(held), exit=process.returncode)
                self._drop()
                try:
                    await self._spawn()
                    if held is not None:
                        await self._call_once(f"ARM {held:.6f}")
                except (FenceUnavailable, OSError) as exc:
                    _log.error("fencer_respawn_failed", error=repr(exc))
                    return  # the next call tries again

    async def arm(self, deadline: float) -> FenceStatus:
        held = self._held
        status = self._parse(await self._call(f"ARM {deadline:.6f}"))
        if status.state == FenceState.ARMED:
            left = status.remaining_s
            if left is not None and left > deadline - self._sent_at + CLOCK_SLACK_S:
                # More left than there was when we sent it: its CLOCK_MONOTONIC runs behind
                # ours, and it would fence that much after the deadline. What a fencer
                # started next is armed with stays what was held before, not that late one.
                self._held = held
                raise FenceUnavailable(
                    f"the fencer's clock is {left - (deadline - self._sent_at):.3f} s behind "
                    "this agent's (another time namespace?): it would fence late"
                )
            self._held = deadline
        return status

    async def disarm(self) -> FenceStatus:
        return self._parse(await self._call("DISARM"))

    async def status(self) -> FenceStatus:
        return self._parse(await self._call("STATUS"))

    async def stop(self) -> None:
        """Close the connection and ask our fencer to exit (only once disarmed: an armed
        fencer fences as it stops). An external fencer is not ours to stop."""
        self._stopping = True
        self._drop()
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._process.wait()
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return round(deadline - time.monotonic(), 3)
