"""pg_rewind and pg_basebackup SIGKILLed in the middle of their copy (issue 16: kills inside
one step). What the real tools leave behind must count as no data: the agent's probe reports
`copy_incomplete` with no data directory (so nothing starts, promotes or compares it), and the
next clone discards the remains and makes a whole standby.

A rewind that rewrites the data directory in place and dies before pg_control is updated
leaves a mix of both systems under the old control file: what PostgreSQL does with it is
printed (run with -s), not relied on. Each test's copy is made slow enough to be cut by a big
table on the source (a relation file pg_rewind copies whole, or pg_basebackup streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import sys
import time

import pytest

from agent.postgres import PostgresError, StopMode, clone, ensure_slots, rewind
from agent.postgres.bootstrap import clear_data_dir
from agent.postgres.datadir import copy_incomplete
from agent.postgres.probe import Prober, read_controldata
from tests.support.pgversions import PgInstall
from tests.support.postgres import PgNode, streaming_pair

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

START_TIMEOUT_S = 20.0
SQL_TIMEOUT_S = 60.0
ROWS = 60000
# About 60 MB: stored plain (not compressed), so that the copy takes long enough to be cut.
BIG_SQL = (
    "CREATE TABLE big (v text); ALTER TABLE big ALTER v SET STORAGE PLAIN;"
    f" INSERT INTO big SELECT repeat('x', 900) FROM generate_series(1, {ROWS})"
)


@pytest.fixture(autouse=True)
def _one_version(pg_install: PgInstall) -> None:
    """The tools' remains are the agent's concern the same way on every major: one version
    keeps the tier quick (PostgreSQL 18 passed too, by hand)."""
    if pg_install.major != 15:
        pytest.skip("interrupted copies are checked on PostgreSQL 15")


def _tool_pgid(tool: str, data_dir: str) -> int | None:
    """The process group of the running `tool` whose command line names `data_dir`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                args = handle.read().split(b"\0")
            named = data_dir.encode() in args or f"--target-pgdata={data_dir}".encode() in args
            if os.path.basename(args[0]).decode() == tool and named:
                return os.getpgid(int(entry))
    return None


def _size(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total


async def _kill_midway(
    tool: str, data_dir: str, copied: int, done: str, task: asyncio.Task[None]
) -> float:
    """SIGKILL `tool`'s process group once `data_dir` grew by `copied` bytes while `done`
    (a relative path the tool writes at its end) is not there; the seconds it had run.
    Fails if the tool finished first."""
    start = time.monotonic()
    initial = _size(data_dir)
    while True:
        if task.done():
            raise AssertionError(f"{tool} ended before it could be cut: {task.exception()!r}")
        pgid = _tool_pgid(tool, data_dir)
        grown = _size(data_dir) - initial >= copied
        if pgid is not None and grown and not os.path.exists(os.path.join(data_dir, done)):
            os.killpg(pgid, signal.SIGKILL)
            return time.monotonic() - start
        await asyncio.sleep(0.002)


async def _probe(node: PgNode) -> tuple[bool, bool]:
    prober = Prober(node.settings, run_dir=node.run_dir, member_name=node.name)
    try:
        state = await prober.probe(running=False, postmaster_pid=None, timeout_s=10)
    finally:
        await prober.close()
    return state.data_dir_initialized, state.copy_incomplete


async def _streams_whole(node: PgNode, primary: PgNode) -> None:
    """Cloned again, `node` starts as a standby of `primary` and holds what it wrote."""
    await clone(node.settings, node.standby_of(primary), run_dir=node.run_dir, timeout_s=120)
    assert not copy_incomplete(node.run_dir)
    await ensure_slots(primary.postmaster, [node.slot])
    await node.postmaster.start(standby=node.standby_of(primary), timeout_s=START_TIMEOUT_S)
    rows = await node.postmaster.fetch("SELECT count(*) FROM big", timeout_s=SQL_TIMEOUT_S)
    assert rows[0][0] == ROWS
    await node.postmaster.stop(StopMode.FAST, timeout_s=20)


async def _what_postgres_does(node: PgNode) -> str:
    """Started by hand (no agent) as a primary on what the tool left: for the report."""
    try:
        await node.postmaster.start(standby=None, timeout_s=START_TIMEOUT_S)
    except PostgresError as exc:
        lines = str(exc).splitlines()
        fatal = [x for x in lines if "FATAL" in x or "PANIC" in x] or lines[-2:]
        return "refused: " + " | ".join(fatal)
    await node.postmaster.stop(StopMode.IMMEDIATE, timeout_s=20)
    return "STARTED (as if whole)"


async def test_a_rewind_killed_midway_counts_as_no_data_and_is_cloned_again(
    pg_install: PgInstall,
) -> None:
    async with streaming_pair(install=pg_install, table_sql="CREATE TABLE t (v text)") as (
        old,
        new,
    ):
        await new.postmaster.promote(timeout_s=10)
        await old.postmaster.execute("INSERT INTO t VALUES ('divergent')", timeout_s=5)
        await old.postmaster.stop(StopMode.FAST, timeout_s=10)
        await new.postmaster.execute(BIG_SQL, timeout_s=SQL_TIMEOUT_S)
        await new.postmaster.execute("CHECKPOINT", timeout_s=SQL_TIMEOUT_S)
        before = await read_controldata(old.settings, timeout_s=10)
        task = asyncio.create_task(
            rewind(old.settings, old.standby_of(new), run_dir=old.run_dir, timeout_s=120)
        )
        ran_s = await _kill_midway(
            "pg_rewind", old.settings.data_dir, 8 << 20, "backup_label", task
        )
        with pytest.raises(PostgresError):
            await task
        after = await read_controldata(old.settings, timeout_s=10)
        print(f"\n[interrupted-copy] pg_rewind killed after {ran_s * 1000:.0f} ms")
        # Cut before its end: pg_control still the old primary's, the files half replaced.
        assert before is not None and after is not None
        assert after.timeline == before.timeline, (before, after)
        assert copy_incomplete(old.run_dir)
        assert await _probe(old) == (False, True)
        print(
            f"[interrupted-copy] PostgreSQL on the half-rewound directory: "
            f"{await _what_postgres_does(old)}"
        )
        await _streams_whole(old, new)
        assert await _probe(old) == (True, False)


async def test_a_basebackup_killed_midway_counts_as_no_data_and_is_cloned_again(
    pg_install: PgInstall,
) -> None:
    async with streaming_pair(install=pg_install, table_sql=BIG_SQL) as (primary, standby):
        await standby.postmaster.stop(StopMode.FAST, timeout_s=10)
        clear_data_dir(standby.settings)  # made again from nothing
        task = asyncio.create_task(
            clone(
                standby.settings,
                standby.standby_of(primary),
                run_dir=standby.run_dir,
                timeout_s=120,
            )
        )
        ran_s = await _kill_midway(
            "pg_basebackup", standby.settings.data_dir, 8 << 20, "global/pg_control", task
        )
        with pytest.raises(PostgresError):
            await task
        print(f"\n[interrupted-copy] pg_basebackup killed after {ran_s * 1000:.0f} ms")
        assert copy_incomplete(standby.run_dir)
        assert await _probe(standby) == (False, True)
        print(
            f"[interrupted-copy] PostgreSQL on the half-cloned directory: "
            f"{await _what_postgres_does(standby)}"
        )
        await _streams_whole(standby, primary)


_AGENT = """
import asyncio, pickle, sys
from agent.postgres import clone
settings, source, run_dir = pickle.loads(bytes.fromhex(sys.argv[1]))
asyncio.run(clone(settings, source, run_dir=run_dir, timeout_s=120))
"""


async def test_a_basebackup_its_dead_agent_left_running_is_killed_before_the_next_clone(
    pg_install: PgInstall,
) -> None:
    """The agent SIGKILLed alone mid-clone: its pg_basebackup (in a session of its own) runs
    on, here stopped to stand for a slow one. The next clone kills it first: two copies must
    never write into one data directory."""
    async with streaming_pair(install=pg_install, table_sql=BIG_SQL) as (primary, standby):
        await standby.postmaster.stop(StopMode.FAST, timeout_s=10)
        clear_data_dir(standby.settings)
        job = pickle.dumps((standby.settings, standby.standby_of(primary), standby.run_dir))
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _AGENT, job.hex(), cwd=os.getcwd()
        )
        data_dir = standby.settings.data_dir
        initial = _size(data_dir)
        while (pgid := _tool_pgid("pg_basebackup", data_dir)) is None or _size(
            data_dir
        ) - initial < 8 << 20:
            assert agent.returncode is None, "the clone ended before the agent could be killed"
            await asyncio.sleep(0.002)
        agent.kill()
        await agent.wait()
        os.killpg(pgid, signal.SIGSTOP)  # orphaned, and slow
        try:
            assert _tool_pgid("pg_basebackup", data_dir) == pgid
            assert await _probe(standby) == (False, True)
            await _streams_whole(standby, primary)
            assert _tool_pgid("pg_basebackup", data_dir) is None, "the orphan still runs"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
