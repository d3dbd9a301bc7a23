"""The fencer process kills PostgreSQL's process group at the deadline, whatever the agent does.

A stand-in postmaster (a process whose command line says postgres, leading its own session,
named in a postmaster.pid file) lets these tests run in seconds; the end-to-end tests check
the same with a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.fence import FenceClient, FenceState, FenceUnavailable, fencer_command

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def postmaster(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A fake postmaster leading its own process group, with a child (a 'backend')."""
    proc = subprocess.Popen(
        ["bash", "-c", "trap '' INT; sleep 300 & exec -a postgres sleep 300"],
        start_new_session=True,
    )
    (tmp_path / "postmaster.pid").write_text(f"{proc.pid}\n{tmp_path}\n")
    time.sleep(0.1)
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies count as gone.
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            stat = (pid_dir / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def wait_dead(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


async def test_armed_fencer_kills_the_postmaster_group_at_the_deadline_not_before(
    tmp_path: Path, postmaster: subprocess.Popen[bytes]
) -> None:
    client = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path))
    await client.start()
    status = await client.arm(time.monotonic() + 1.0)
    assert status.state == FenceState.ARMED
    await asyncio.sleep(0.6)
    assert postmaster.poll() is None, "fenced before the deadline"
    assert await asyncio.to_thread(wait_dead, postmaster, 2.0), "not fenced after the deadline"
    await asyncio.sleep(0.1)
    assert not group_alive(postmaster.pid), "a backend of the group survived"
    assert (await client.status()).state == FenceState.FENCED
    await client.disarm()
    await client.stop()


async def test_renewals_move_the_deadline_and_disarm_stops_it(
    tmp_path: Path, postmaster: subprocess.Popen[bytes]
) -> None:
    client = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path))
    await client.start()
    for _ in range(4):
        await client.arm(time.monotonic() + 0.5)
        await asyncio.sleep(0.25)
    assert postmaster.poll() is None
    await client.disarm()
    await asyncio.sleep(0.8)
    assert postmaster.poll() is None, "a disarmed fencer fenced"
    await client.stop()


def _start_postmaster(data_dir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["bash", "-c", "trap '' INT; exec -a postgres sleep 300"], start_new_session=True
    )
    (data_dir / "postmaster.pid").write_text(f"{proc.pid}\n{data_dir}\n")
    return proc


async def test_a_fenced_fencer_stops_a_primary_started_after_the_deadline_until_disarmed(
    tmp_path: Path, postmaster: subprocess.Popen[bytes]
) -> None:
    """Chaos finding 18: an agent frozen between its lease check and `pg_ctl start`, resumed
    after the deadline, starts a primary: the fenced fencer stops it; a standby may run."""
    client = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path))
    await client.start()
    started: list[subprocess.Popen[bytes]] = []
    try:
        await client.arm(time.monotonic() + 0.3)
        assert await asyncio.to_thread(wait_dead, postmaster, 2.0), "not fenced"
        primary = _start_postmaster(tmp_path)
        started.append(primary)
        assert await asyncio.to_thread(wait_dead, primary, 1.0), "a primary ran while fenced"
        (tmp_path / "standby.signal").write_text("")
        standby = _start_postmaster(tmp_path)
        started.append(standby)
        await asyncio.sleep(0.5)
        assert standby.poll() is None, "a standby was stopped while fenced"
        os.killpg(standby.pid, signal.SIGKILL)
        standby.wait()
        (tmp_path / "standby.signal").unlink()
        assert (await client.status()).state == FenceState.FENCED
        await client.disarm()
        after = _start_postmaster(tmp_path)
        started.append(after)
        await asyncio.sleep(0.5)
        assert after.poll() is None, "a disarmed fencer stopped a postmaster"
    finally:
        for proc in started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        await client.stop()


def _fencer_pids(run_dir: Path) -> list[int]:
    """The pids of the fencers started with this run dir, from their log's first line."""
    log = (run_dir / "fencer.log").read_text()
    return [int(m) for m in re.findall(r"fencer\[(\d+)\] serving", log)]


async def test_a_fencer_that_dies_is_respawned_armed_with_the_deadline_it_held(
    tmp_path: Path, postmaster: subprocess.Popen[bytes]
) -> None:
    run_dir = tmp_path / "run"
    client = FenceClient(run_dir=str(run_dir), data_dir=str(tmp_path))
    await client.start()
    deadline = time.monotonic() + 2.0
    await client.arm(deadline)
    [first] = _fencer_pids(run_dir)
    os.kill(first, signal.SIGKILL)
    await asyncio.sleep(0.2)
    status = await client.status()  # finds it dead: a new fencer, armed with the same deadline
    assert status.state == FenceState.ARMED
    assert status.remaining_s is not None
    assert status.remaining_s <= deadline - time.monotonic() + 0.01, "armed later than held"
    assert [p for p in _fencer_pids(run_dir) if p != first], "no new fencer"
    assert postmaster.poll() is None, "fenced before the deadline"
    assert await asyncio.to_thread(wait_dead, postmaster, 2.5), "the new fencer did not fence"
    assert (await client.status()).state == FenceState.FENCED
    await client.disarm()
    await client.stop()


async def test_a_fencer_that_dies_is_replaced_at_once_without_waiting_for_a_call(
    tmp_path: Path, postmaster: subprocess.Popen[bytes]
) -> None:
    """The agent makes no call after the fencer's death (it stalled right then: its next
    renewal never comes): the fencer it spawned is replaced the moment it exits, armed with
    the deadline it held, and the primary is fenced at that deadline. Waiting for the next
    call left it unguarded (session 24's hunt)."""
    run_dir = tmp_path / "run"
    client = FenceClient(run_dir=str(run_dir), data_dir=str(tmp_path))
    await client.start()
    await client.arm(time.monotonic() + 1.5)
    [first] = _fencer_pids(run_dir)
    os.kill(first, signal.SIGKILL)
    await asyncio.sleep(0.5)  # no call from the agent
    assert [p for p in _fencer_pids(run_dir) if p != first], "not replaced without a call"
    assert postmaster.poll() is None, "fenced before the deadline"
    assert await asyncio.to_thread(wait_dead, postmaster, 2.5), "nobody fenced at the deadline"
    assert (await client.status()).state == FenceState.FENCED
    await client.disarm()
    await client.stop()


async def test_a_fencer_that_fenced_and_died_is_respawned_fenced(
    tmp_path: Path, postmaster: subprocess.Popen[bytes]
) -> None:
    """The guard of a fenced data directory survives the fencer's death: the agent (frozen
    meanwhile, so it never read `fenced`) re-arms the new fencer with the deadline it held,
    already passed: the new fencer fires at once, stops the primary the agent just started,
    and stays fenced."""
    run_dir = tmp_path / "run"
    client = FenceClient(run_dir=str(run_dir), data_dir=str(tmp_path))
    await client.start()
    await client.arm(time.monotonic() + 0.3)
    assert await asyncio.to_thread(wait_dead, postmaster, 2.0), "not fenced"
    [first] = _fencer_pids(run_dir)
    os.kill(first, signal.SIGKILL)
    primary = _start_postmaster(tmp_path)
    try:
        await asyncio.sleep(0.2)
        # Finds it dead: respawned, armed with the passed deadline. The new fencer fences at
        # once and answers the call after (up to the grace later): slow, not unavailable.
        with contextlib.suppress(FenceUnavailable):
            await client.status()
        assert [p for p in _fencer_pids(run_dir) if p != first], "no new fencer"
        assert await asyncio.to_thread(wait_dead, primary, 2.0), "the primary kept running"
        assert (await client.status()).state == FenceState.FENCED
    finally:
        if primary.poll() is None:
            os.killpg(primary.pid, signal.SIGKILL)
            primary.wait()
        await client.disarm()
        await client.stop()


def _agent_script(run_dir: Path, data_dir: Path, deadline_in: float) -> str:
    return f"""
import asyncio, sys, time
sys.path.insert(0, {str(ROOT)!r})
from agent.fence import FenceClient
async def main():
    client = FenceClient(run_dir={str(run_dir)!r}, data_dir={str(data_dir)!r})
    await client.start()
    await client.arm(time.monotonic() + {deadline_in})
    print("armed", flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
async def test_fencer_fences_when_the_agent_is_killed_or_frozen(
    tmp_path: Path, postmaster: subprocess.Popen[bytes], how: str
) -> None:
    agent = subprocess.Popen(
        [sys.executable, "-c", _agent_script(tmp_path / "run", tmp_path, 1.5)],
        stdout=subprocess.PIPE,
    )
    try:
        assert agent.stdout is not None
        assert agent.stdout.readline().strip() == b"armed"
        os.kill(agent.pid, getattr(signal, how))
        t0 = time.monotonic()
        assert await asyncio.to_thread(wait_dead, postmaster, 4.0)
        assert time.monotonic() - t0 < 2.5
    finally:
        agent.kill()
        agent.wait()
    # With its agent gone and nothing armed, the fencer exits by itself.
    deadline = time.monotonic() + 3
    while (tmp_path / "run" / "fencer.sock").exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not (tmp_path / "run" / "fencer.sock").exists()


async def test_a_restarted_agent_adopts_the_running_fencer_and_its_deadline(
    tmp_path: Path, postmaster: subprocess.Popen[bytes]
) -> None:
    first = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path))
    await first.start()
    await first.arm(time.monotonic() + 5.0)
    second = FenceClient(run_dir=str(tmp_path / "run"), data_dir=str(tmp_path))
    status = await second.start()
    assert status.state == FenceState.ARMED
    assert status.remaining_s is not None and 3.0 < status.remaining_s <= 5.0
    await second.disarm()
    await first.stop()


def _parent_agent_script(run_dir: Path, data_dir: Path, deadline_in: float, grace_s: float) -> str:
    """An agent that is the postmaster's parent (as the real one is), and never reaps it."""
    return f"""
import asyncio, signal, subprocess, sys, time
sys.path.insert(0, {str(ROOT)!r})
from agent.fence import FenceClient
def default_sigint():
    # A test run started in the background of a shell without job control inherits SIGINT
    # ignored (bash does that to asynchronous commands): the stand-in must not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
async def main():
    # A stand-in postmaster that a fast shutdown (SIGINT) stops at once.
    postmaster = subprocess.Popen(
        ["bash", "-c", "exec -a postgres sleep 300"],
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    with open({str(data_dir / "postmaster.pid")!r}, "w") as handle:
        handle.write(f"{{postmaster.pid}}\\n{data_dir}\\n")
    client = FenceClient(run_dir={str(run_dir)!r}, data_dir={str(data_dir)!r}, grace_s={grace_s})
    await client.start()
    await client.arm(time.monotonic() + {deadline_in})
    print(postmaster.pid, flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


async def test_a_postmaster_left_a_zombie_by_its_frozen_agent_counts_as_stopped_at_once(
    tmp_path: Path,
) -> None:
    """The postmaster exits on the fast shutdown but stays a zombie (its parent, the agent, is
    frozen): the fencer must report the fast shutdown, not wait its grace and 'kill' it."""
    grace_s = 3.0
    log = tmp_path / "run" / "fencer.log"
    agent = subprocess.Popen(
        [sys.executable, "-c", _parent_agent_script(tmp_path / "run", tmp_path, 1.0, grace_s)],
        stdout=subprocess.PIPE,
    )
    try:
        assert agent.stdout is not None
        postmaster_pid = int(agent.stdout.readline())
        os.kill(agent.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        while "fence deadline reached" not in log.read_text():
            assert time.monotonic() - frozen_at < 1.0 + grace_s + 2.0, log.read_text()
            await asyncio.sleep(0.02)
        fenced_after = time.monotonic() - frozen_at
        assert _zombie(postmaster_pid), "the stand-in postmaster was reaped: not the case tested"
        fenced = log.read_text()
        assert f"postmaster {postmaster_pid} stopped by a fast shutdown" in fenced, fenced
        # The deadline is 1.0 s away at most; the fencer must not sit out its 3 s grace.
        assert fenced_after < 1.0 + grace_s / 2, f"fenced after {fenced_after:.2f} s"
        print(f"\n[fencer] zombie postmaster fenced {fenced_after:.3f} s after the freeze")
    finally:
        agent.kill()
        agent.wait()


def test_the_fencer_loads_only_the_c_core_of_the_standard_library() -> None:
    """Issue 15 (footprint): started as the agent starts it (`-I -S`), the fencer imports no
    module that pulls in enum classes, argparse, pathlib or asyncio (13 MB RSS before, 9 MB
    after on Python 3.11)."""
    exe, *flags, _code, root, _module = fencer_command()
    listing = (
        "import sys; sys.path.insert(0, sys.argv[1]); import agent.fencer; print(*sys.modules)"
    )
    out = subprocess.run(
        [exe, *flags, listing, root], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    assert "agent.fencer" in out
    heavy = {"enum", "signal", "socket", "selectors", "argparse", "pathlib", "asyncio", "re"}
    assert heavy.isdisjoint(out), sorted(heavy.intersection(out))
