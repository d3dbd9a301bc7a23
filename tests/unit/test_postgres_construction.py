"""Building the PostgreSQL layer (`Postmaster`, `Prober`) does no I/O: no connection, no
directory created or read, no process, no background task.

They are built with a data directory and a run directory that do not exist and a port nothing
listens on: construction must leave no trace, and the first probe must then find nothing
there (not initialized, not running), which shows that the same I/O done at construction
would have failed it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent.config import PostgresSettings
from agent.postgres.probe import Prober
from agent.postgres.process import Postmaster
from tests.support.ports import free_port


async def settled_tasks() -> set[asyncio.Task[Any]]:
    """The loop's tasks once anything scheduled before had its turns to run. Compared with
    `asyncio.all_tasks()` right after construction (no await between), it shows any task the
    constructor created, even one that would finish at once."""
    for _ in range(3):
        await asyncio.sleep(0)
    return asyncio.all_tasks()


async def test_building_the_postmaster_and_the_prober_does_no_io_until_the_first_probe(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "absent"
    settings = PostgresSettings(
        bin_dir=str(missing / "bin"),
        data_dir=str(missing / "data"),
        port=free_port(),
        listen_host="127.0.0.1",
        connect_host="127.0.0.1",
    )
    run_dir = str(missing / "run")
    before = await settled_tasks()
    postmaster = Postmaster(settings, member_name="a", run_dir=run_dir, ttl_s=10.0)
    prober = Prober(settings, run_dir=run_dir, member_name="a")
    assert asyncio.all_tasks() == before, "construction started a task"
    assert not missing.exists(), "construction created a directory"
    assert postmaster.pid() is None
    state = await prober.probe(running=False, postmaster_pid=None, timeout_s=1.0)
    assert not state.data_dir_initialized
    assert not state.running
    await prober.close()
    await postmaster.close()
