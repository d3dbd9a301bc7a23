"""A former primary killed while it held a logical slot is rewound, not cloned anew.

pg_rewind first finishes the crash recovery of a target that was not shut down cleanly, in
single-user mode. With only the data directory's configuration that run has wal_level =
replica (the agent keeps wal_level = logical in its own configuration file), and PostgreSQL
refuses to start over a logical slot: `logical replication slot "cdc" exists, but "wal_level"
< "logical"`; the agent then cloned the member from scratch. The agent hands pg_rewind its
configuration file (`--config-file`, agent/postgres/bootstrap.py).
"""

from __future__ import annotations

import pytest

from agent.postgres import StopMode, rewind
from tests.support.pgversions import PgInstall
from tests.support.postgres import streaming_pair

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

SQL_TIMEOUT_S = 5.0


async def test_a_killed_primary_holding_a_logical_slot_is_rewound(pg_install: PgInstall) -> None:
    logical = (("wal_level", "logical"),)
    async with streaming_pair(
        install=pg_install, table_sql="CREATE TABLE t (v text)", parameters=logical
    ) as (old, new):
        await old.postmaster.execute(
            "SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')",
            timeout_s=SQL_TIMEOUT_S,
        )
        await new.postmaster.promote(timeout_s=10)
        await old.postmaster.execute("INSERT INTO t VALUES ('divergent')", timeout_s=SQL_TIMEOUT_S)
        await old.postmaster.stop(StopMode.IMMEDIATE, timeout_s=10)  # in production: a crash

        await rewind(old.settings, old.standby_of(new), run_dir=old.run_dir, timeout_s=60)
        await old.postmaster.start(standby=old.standby_of(new), timeout_s=20)
        rows = await old.postmaster.fetch(
            "SELECT slot_type FROM pg_replication_slots WHERE slot_name = 'cdc'",
            timeout_s=SQL_TIMEOUT_S,
        )
        # A rewind that changed the data directory emptied pg_replslot: the old primary's own
        # copy of the slot is gone with it. (One that finds "no rewind required", after a
        # clean switchover, leaves it: agent/decide/member.py drops it once the member
        # streams.)
        assert rows == []
