"""The fencer's connection and where it comes from (issues 15 and 16): one connection carries
every call and changes nothing when it breaks; an external fencer (a container of its own in
the pod) is never started by the agent, and is refused unless it sees the agent's process and
data directory.

The stand-in postmaster of test_fencer.py; the real fencer process, spawned by the client or
started here as a sidecar would be (`--external`).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.app import _start_fence
from agent.fence import FenceClient, FenceState, FenceUnavailable
from tests.integration.test_fencer import postmaster, wait_dead
from tests.support.fencer import Sidecar

pytestmark = pytest.mark.integration

__all__ = ["postmaster"]  # the fixture, shared with test_fencer.py


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    car = Sidecar(tmp_path / "run", tmp_path)
    yield car
    car.stop()


def _socket_fds(pid: int) -> int:
    return sum(os.readlink(fd).startswith("socket:") for fd in Path(f"/proc/{pid}/fd").iterdir())


def _inode(stream: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> int:
    """The client socket's inode: a new connection has another (a file descriptor number
    may be reused)."""
    return os.fstat(stream[1].get_extra_info("socket").fileno()).st_ino


def _ask(path: Path, line: str) -> str:
    """One line to a fencer on a connection of its own; its answer."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(path))
        conn.sendall(line.encode() + b"\n")
        with conn.makefile("rb") as reader:
            return reader.readline().decode().strip()


def _fencer_pid(log: Path) -> int:
    [pid] = re.findall(r"fencer\[(\d+)\] serving", log.read_text())
    return int(pid)


# ------------------------------------------------------------------ one connection


async def test_one_connection_carries_every_call_and_the_fencer_keeps_it_open(
    tmp_path: Path, postmaster: subprocess.Popen[bytes]
) -> None:
    client = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path))
    await client.start()
    try:
        assert client._stream is not None
        first = _inode(client._stream)
        for _ in range(20):
            assert (await client.arm(time.monotonic() + 5)).state == FenceState.ARMED
        assert client._stream is not None
        assert _inode(client._stream) == first, "reconnected"
        # The listening socket and our one connection.
        assert _socket_fds(_fencer_pid(tmp_path / "run" / "fencer.log")) == 2
    finally:
        await client.disarm()
        await client.stop()


async def test_lines_on_one_connection_are_each_answered_and_a_partial_line_never_counts(
    tmp_path: Path, postmaster: subprocess.Popen[bytes], sidecar: Sidecar
) -> None:
    """A connection that closes mid-line (its agent died while writing) changes nothing: the
    deadline armed stays armed, and the cut line, had it been read, would have moved it."""
    sidecar.start()
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(sidecar.socket))
        reader = conn.makefile("rb")
        conn.sendall(f"ARM {time.monotonic() + 100:.6f}\n".encode())
        assert 99 < float(reader.readline().split()[2]) <= 100
        conn.sendall(f"ARM {time.monotonic() + 0.6:.6f}\n".encode())
        assert 0 < float(reader.readline().split()[2]) <= 0.6
        conn.sendall(b"STATUS\nSTATUS\n")
        assert reader.readline().startswith(b"OK armed")
        assert reader.readline().startswith(b"OK armed")
        conn.sendall(f"ARM {time.monotonic() + 100:.6f}".encode())  # no end of line: cut
        reader.close()
    assert await asyncio.to_thread(wait_dead, postmaster, 2.0), "the cut line moved the deadline"


async def test_a_client_that_connects_and_stays_silent_does_not_delay_the_fence(
    tmp_path: Path, postmaster: subprocess.Popen[bytes]
) -> None:
    """An agent frozen right after it connected (or anything else on the socket) holds a
    connection open without a word: the fencer must still fire on time."""
    client = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path))
    await client.start()
    silent = socket.socket(socket.AF_UNIX)
    try:
        await client.arm(time.monotonic() + 0.4)
        await asyncio.sleep(0.35)
        silent.connect(client.socket_path)
        silent.sendall(b"ARM 1")  # and nothing more
        assert await asyncio.to_thread(wait_dead, postmaster, 2.0)
        log = (tmp_path / "run" / "fencer.log").read_text()
        [late] = re.findall(r"fence deadline reached \(([\d.]+) s late", log)
        assert float(late) < 0.2, log
    finally:
        silent.close()
        await client.disarm()
        await client.stop()


async def test_a_fencer_left_on_the_socket_for_another_data_directory_is_never_adopted(
    tmp_path: Path,
) -> None:
    """A spawned fencer still running on our socket for another data directory (the data
    directory moved and the agent restarted within the old fencer's life, or two members
    configured with one run_dir): armed by us, it would stop that directory's server at our
    deadline, not ours."""
    run = str(tmp_path / "run")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = FenceClient(run_dir=run, data_dir=str(tmp_path / "a"))
    other = FenceClient(run_dir=run, data_dir=str(tmp_path / "b"))
    try:
        await first.start()
        with pytest.raises(FenceUnavailable, match="not the agent's data directory"):
            await other.start()
        with pytest.raises(FenceUnavailable, match="not the agent's data directory"):
            await other.arm(time.monotonic() + 5)
        assert (await first.status()).state == FenceState.DISARMED
    finally:
        await other.stop()
        await first.stop()


# ------------------------------------------------------------------ an external fencer


async def test_an_external_client_never_starts_a_fencer_and_leads_only_once_one_answers(
    tmp_path: Path, postmaster: subprocess.Popen[bytes], sidecar: Sidecar
) -> None:
    client = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path), external=True)
    assert await _start_fence(client) == "unavailable"  # the agent starts all the same
    with pytest.raises(FenceUnavailable):
        await client.arm(time.monotonic() + 5)  # an acquire is undone, nothing promoted
    assert not sidecar.socket.exists(), "a fencer was started"
    sidecar.start()
    assert (await client.arm(time.monotonic() + 0.5)).state == FenceState.ARMED
    assert await asyncio.to_thread(wait_dead, postmaster, 2.0), "the external fencer did not fence"
    await client.disarm()
    await client.stop()


async def test_a_restarted_external_fencer_is_armed_again_with_the_deadline_the_old_one_held(
    tmp_path: Path, postmaster: subprocess.Popen[bytes], sidecar: Sidecar
) -> None:
    """The kubelet restarts a sidecar that died: the new one starts disarmed. The agent's
    next call finds its connection closed, connects to the new fencer and arms it with the
    deadline the old one held, never a later one."""
    first = sidecar.start()
    client = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path), external=True)
    await client.start()
    deadline = time.monotonic() + 1.5
    await client.arm(deadline)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    sidecar.start()
    status = await client.status()
    assert status.state == FenceState.ARMED
    assert status.remaining_s is not None
    assert status.remaining_s <= deadline - time.monotonic() + 0.01, "armed later than held"
    assert await asyncio.to_thread(wait_dead, postmaster, 2.5), "the new fencer did not fence"
    await client.stop()


async def test_a_spawning_client_that_found_an_external_fencer_never_starts_one_over_it(
    tmp_path: Path, postmaster: subprocess.Popen[bytes], sidecar: Sidecar
) -> None:
    """Two fencers on one socket path: the one started over the other would leave an orphan
    armed with an old deadline, firing at it under a healthy primary."""
    car = sidecar.start()
    client = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path))
    await client.start()
    os.kill(car.pid, signal.SIGKILL)
    car.wait()
    with pytest.raises(FenceUnavailable):
        await client.status()
    assert not (tmp_path / "run" / "fencer.log").exists(), "a fencer was spawned"
    await client.stop()


async def test_an_external_fencer_that_does_not_see_the_agents_data_directory_is_refused(
    tmp_path: Path, sidecar: Sidecar
) -> None:
    sidecar.data_dir = tmp_path / "elsewhere"  # the data volume not mounted in the sidecar
    sidecar.data_dir.mkdir()
    sidecar.start()
    client = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path), external=True)
    with pytest.raises(FenceUnavailable, match="not the agent's data directory"):
        await client.start()
    with pytest.raises(FenceUnavailable, match="not the agent's data directory"):
        await client.arm(time.monotonic() + 5)


async def test_an_external_fencer_without_the_data_volume_is_refused_once_the_directory_exists(
    tmp_path: Path, sidecar: Sidecar
) -> None:
    """A member's first start: its data directory does not exist yet (a fresh volume, before
    initdb), nor does it in a sidecar without the data volume (or pointed at another path).
    The two `-` matched, and the primary bootstrapped next was armed on a fencer that could
    stop nothing: an ARM for a directory that is not the one checked is checked again."""
    sidecar.data_dir = tmp_path / "not-mounted" / "pgdata"
    sidecar.start()
    data_dir = tmp_path / "volume" / "pgdata"
    client = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(data_dir), external=True)
    try:
        assert (await client.start()).state == FenceState.DISARMED  # nothing to fence yet
        data_dir.mkdir(parents=True)  # initdb
        with pytest.raises(FenceUnavailable, match="not the agent's data directory"):
            await client.arm(time.monotonic() + 5)
    finally:
        await client.stop()
    assert _ask(sidecar.socket, "STATUS") == "OK disarmed -", "armed all the same"


async def test_an_external_fencer_is_checked_again_for_a_directory_made_after_it_connected(
    tmp_path: Path, postmaster: subprocess.Popen[bytes], sidecar: Sidecar
) -> None:
    """The same first start with the data volume in both containers: the new directory is
    checked, on a new connection, before the fencer is armed for it, and is found there: the
    fencer is armed and fences (the check refuses only a fencer that cannot fence)."""
    data_dir = tmp_path / "pgdata"
    sidecar.data_dir = data_dir
    sidecar.start()
    client = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(data_dir), external=True)
    try:
        await client.start()
        assert client._stream is not None
        checked = _inode(client._stream)  # the connection that checked `-`
        data_dir.mkdir()
        os.rename(tmp_path / "postmaster.pid", data_dir / "postmaster.pid")
        assert (await client.arm(time.monotonic() + 0.5)).state == FenceState.ARMED
        assert client._stream is not None
        assert _inode(client._stream) != checked, "armed for a directory it never checked"
        assert await asyncio.to_thread(wait_dead, postmaster, 2.0), "not fenced"
        await client.disarm()
    finally:
        await client.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a fencer as nobody")
async def test_an_external_fencer_that_runs_as_another_user_than_postgresql_is_refused() -> None:
    """A sidecar without the pod's runAsUser: it sees the agent and the data directory, but
    cannot read postmaster.pid in it (mode 0700), so its fence would find no postmaster."""
    base = Path(tempfile.mkdtemp(prefix="pgwarden-fencer-uid-"))  # tmp_path: root's only
    try:
        base.chmod(0o755)
        data_dir, run = base / "pgdata", base / "run"
        data_dir.mkdir(mode=0o700)
        run.mkdir(mode=0o777)
        run.chmod(0o777)
        car = Sidecar(run, data_dir)
        try:
            car.start("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
            client = FenceClient(run_dir=str(run), data_dir=str(data_dir), external=True)
            with pytest.raises(FenceUnavailable, match="cannot read"):
                await client.start()
            with pytest.raises(FenceUnavailable, match="cannot read"):
                await client.arm(time.monotonic() + 5)
            assert _ask(car.socket, "STATUS") == "OK disarmed -", "armed all the same"
        finally:
            car.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a fencer as nobody")
async def test_an_external_fencer_that_cannot_read_a_directory_made_later_is_refused() -> None:
    """The first start again, the sidecar under another uid than PostgreSQL: with no data
    directory yet there was nothing it could fail to read, and it passed its CHECK; once the
    directory exists (mode 0700, PostgreSQL's), the ARM for it is checked again on a new
    connection and refused, instead of arming a fencer that would find no postmaster."""
    base = Path(tempfile.mkdtemp(prefix="pgwarden-fencer-later-"))  # tmp_path: root's only
    try:
        base.chmod(0o755)
        data_dir, run = base / "pgdata", base / "run"
        run.mkdir(mode=0o777)
        run.chmod(0o777)
        car = Sidecar(run, data_dir)
        client = FenceClient(run_dir=str(run), data_dir=str(data_dir), external=True)
        try:
            car.start("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
            assert (await client.start()).state == FenceState.DISARMED  # nothing to fence yet
            data_dir.mkdir(mode=0o700)  # initdb
            with pytest.raises(FenceUnavailable, match="cannot read"):
                await client.arm(time.monotonic() + 5)
            assert _ask(car.socket, "STATUS") == "OK disarmed -", "armed all the same"
        finally:
            await client.stop()
            car.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _fake_postmaster(data_dir: Path, *user: str) -> subprocess.Popen[bytes]:
    """A process titled postgres, leading its own session, named in `data_dir`'s pid file."""
    proc = subprocess.Popen(
        [*user, "bash", "-c", "trap '' INT; exec -a postgres sleep 300"], start_new_session=True
    )
    (data_dir / "postmaster.pid").write_text(f"{proc.pid}\n{data_dir}\n")
    return proc


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run processes as two users")
async def test_a_fencer_refused_the_signal_at_its_deadline_stays_fenced_and_tries_again() -> None:
    """EPERM at the deadline (a postmaster of another user) is logged, not fatal: the fencer
    stays up and fenced and stops the primary once it can (it died of it before)."""
    base = Path(tempfile.mkdtemp(prefix="pgwarden-fencer-eperm-"))
    nobody = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        base.chmod(0o755)
        data_dir, run = base / "pgdata", base / "run"
        data_dir.mkdir(mode=0o755)
        run.mkdir(mode=0o777)
        run.chmod(0o777)
        procs.append(_fake_postmaster(data_dir))  # root's: nobody cannot signal it
        car = Sidecar(run, data_dir)
        try:
            fencer = car.start(*nobody)
            assert _ask(car.socket, f"ARM {time.monotonic() + 0.2}").startswith("OK armed")
            await asyncio.sleep(0.6)
            assert fencer.poll() is None, car.log.read_text()
            assert _ask(car.socket, "STATUS") == "OK fenced -"
            assert "could not stop PostgreSQL" in car.log.read_text()
            assert procs[0].poll() is None
            procs.append(_fake_postmaster(data_dir, *nobody))  # one it may stop
            assert wait_dead(procs[1], 2.0), "the fenced fencer did not try again"
            assert car.log.read_text().count("could not stop PostgreSQL") <= 2, "said 50/s"
        finally:
            car.stop()
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a time namespace")
async def test_an_external_fencer_whose_monotonic_clock_lags_the_agents_is_never_taken_as_armed(
    tmp_path: Path, sidecar: Sidecar
) -> None:
    """Deadlines are CLOCK_MONOTONIC values, the same for every process of a host unless a
    time namespace offsets it (a restored checkpoint, a runtime that sets one): a fencer 30 s
    behind would fence 30 s after the deadline. Its answer to ARM shows it."""
    sidecar.start("unshare", "--time", "--fork", "--monotonic=-30")
    client = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path), external=True)
    try:
        await client.start()
        with pytest.raises(FenceUnavailable, match=r"clock is (29|3[0-9])\.[0-9]+ s behind"):
            await client.arm(time.monotonic() + 5)
        # A fencer started next (the sidecar restarted) is never armed with that late one.
        assert client._held is None
    finally:
        await client.stop()


async def test_an_external_fencer_in_a_process_namespace_of_its_own_is_refused(
    tmp_path: Path, sidecar: Sidecar
) -> None:
    """A sidecar without `shareProcessNamespace`: it cannot see, let alone signal, the
    postmaster, so its fence would do nothing."""
    sidecar.start("unshare", "--pid", "--fork", "--mount-proc")
    client = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path), external=True)
    with pytest.raises(FenceUnavailable, match="not visible here"):
        await client.start()


async def test_an_external_fencer_asked_to_stop_while_armed_guards_the_deadline_first(
    tmp_path: Path, postmaster: subprocess.Popen[bytes], sidecar: Sidecar
) -> None:
    """Pod deletion: the sidecar may get SIGTERM while the agent still hands over; fencing at
    once would stop the primary in the middle of it. It fences at the deadline, then exits."""
    car = sidecar.start()
    client = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path), external=True)
    await client.start()
    await client.arm(time.monotonic() + 3.0)
    car.terminate()
    # Past the next look at `stop` (0.5 s) and the grace the stand-in, which ignores a fast
    # shutdown, gets before SIGKILL (0.5 s).
    await asyncio.sleep(1.5)
    assert postmaster.poll() is None, "fenced before the deadline"
    assert car.poll() is None, "exited while armed"
    assert await asyncio.to_thread(wait_dead, postmaster, 3.0), "not fenced at the deadline"
    assert await asyncio.to_thread(car.wait, 2.0) == 0
    await client.stop()


async def test_an_agent_restarted_while_its_old_fencer_exits_starts_a_fencer_of_its_own(
    tmp_path: Path, postmaster: subprocess.Popen[bytes]
) -> None:
    """A spawned fencer whose agent is gone exits (it was not armed) and resets the
    connections it had not accepted: an agent restarted at once met it so (e2e
    test_sigterm_on_the_primary_hands_over_and_unlabels_the_stopped_pod, "Connection reset
    by peer") and died at start. It waits for the old one to go and spawns its own."""
    run = tmp_path / "run"
    run.mkdir()
    path = run / "fencer.sock"

    async def exiting_fencer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()  # no answer: on its way out, as the fencer's own exit does
        server.close()
        path.unlink()

    server = await asyncio.start_unix_server(exiting_fencer, str(path))
    client = FenceClient(run_dir=str(run), data_dir=str(tmp_path))
    try:
        assert (await client.start()).state == FenceState.DISARMED
        assert (run / "fencer.log").exists(), "no fencer of its own was spawned"
        assert (await client.arm(time.monotonic() + 5)).state == FenceState.ARMED
        assert (await client.disarm()).state == FenceState.DISARMED
    finally:
        await client.stop()
        server.close()


async def test_an_agent_upgraded_over_an_older_fencer_talks_to_it_a_line_per_connection(
    tmp_path: Path,
) -> None:
    """A fencer of the previous protocol (one line per connection, then it closes) still
    guards the deadline of an agent upgraded and restarted in place: the agent adopts it."""
    held: list[float] = []

    async def older_fencer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        verb, _, arg = (await reader.readline()).decode().strip().partition(" ")
        if verb == "ARM":
            held[:] = [float(arg)]
        elif verb == "DISARM":
            held.clear()
        state = f"armed {held[0] - time.monotonic():.3f}" if held else "disarmed -"
        writer.write(f"OK {state}\n".encode())
        await writer.drain()
        writer.close()

    (tmp_path / "run").mkdir()
    server = await asyncio.start_unix_server(older_fencer, str(tmp_path / "run" / "fencer.sock"))
    client = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path))
    try:
        assert (await client.start()).state == FenceState.DISARMED
        for _ in range(3):
            assert (await client.arm(time.monotonic() + 5)).state == FenceState.ARMED
        assert (await client.status()).state == FenceState.ARMED
        assert (await client.disarm()).state == FenceState.DISARMED
        assert not (tmp_path / "run" / "fencer.log").exists(), "a fencer was spawned over it"
    finally:
        await client.stop()
        server.close()
