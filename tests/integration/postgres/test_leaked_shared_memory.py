"""The test harness removes the System V segment a SIGKILLed postmaster leaves behind
(tests/support/postgres.py `release_shared_memory`): without it a machine that runs the suite
many times runs out of segments (kernel.shmmni) and PostgreSQL stops starting."""

from __future__ import annotations

from pathlib import Path

from agent.postgres import initdb
from tests.support.pgversions import PgInstall
from tests.support.postgres import (
    _attached_counts,
    kill_leftovers,
    make_nodes,
    pg_base_dir,
    release_shared_memory,
)


async def test_the_segment_of_a_killed_postmaster_is_removed_with_its_base(
    pg_install: PgInstall,
) -> None:
    with pg_base_dir() as base:
        nodes = make_nodes(base, ["killed"], install=pg_install)
        try:
            await initdb(nodes[0].settings, run_dir=nodes[0].run_dir)
            await nodes[0].postmaster.start(standby=None, timeout_s=20)
            pidfile = Path(nodes[0].settings.data_dir) / "postmaster.pid"
            shmid = int(pidfile.read_text().splitlines()[6].split()[1])
            assert _attached_counts().get(shmid, 0) >= 1
        finally:
            await nodes[0].postmaster.close()
            kill_leftovers(nodes)
        assert pidfile.exists()  # SIGKILL: nothing cleaned up after itself
        assert shmid in _attached_counts()  # the leaked segment (its children may still detach)
        assert release_shared_memory(base) == 1
        assert shmid not in _attached_counts()
