"""The postmaster's control connection is shared by every caller in the agent (the loop's
short actions, a hand-over's CHECKPOINT in the background, the API): concurrent statements
must queue on it, not fail with asyncpg's "another operation is in progress" (which also made
the agent drop the connection under the statement that was running)."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.postgres import PgNode

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


async def test_concurrent_statements_on_the_control_connection_queue(node: PgNode) -> None:
    await node.postmaster.fetch("SELECT 0", timeout_s=5)  # the connection exists
    slow = node.postmaster.fetch("SELECT pg_sleep(0.3), 1", timeout_s=5)
    quick = node.postmaster.execute("SELECT pg_reload_conf()", timeout_s=5)
    also = node.postmaster.fetch("SELECT 2", timeout_s=5)
    rows, none, more = await asyncio.gather(slow, quick, also)
    assert rows[0][1] == 1
    assert none is None
    assert more == [(2,)]


async def test_a_statement_waiting_for_the_connection_still_keeps_its_time_limit(
    node: PgNode,
) -> None:
    from agent.postgres.process import PostgresError  # noqa: PLC0415 - local to this case

    slow = asyncio.create_task(node.postmaster.fetch("SELECT pg_sleep(1)", timeout_s=5))
    await asyncio.sleep(0.1)
    with pytest.raises(PostgresError):
        await node.postmaster.fetch("SELECT 1", timeout_s=0.2)
    assert len(await slow) == 1  # the running statement was not disturbed
