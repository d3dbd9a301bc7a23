"""Fixtures for the PostgreSQL control-layer tests: three nodes' settings, cleaned up always.

Every test here runs once per PostgreSQL version that PGWARDEN_TEST_PG selects for the
integration tier (tests/support/pgversions.py): through `pg_install`, which every node
fixture and `streaming_pair` take."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from agent.postgres import initdb
from tests.support.pgversions import PgInstall, Tier, params
from tests.support.postgres import PgNode, kill_leftovers, make_nodes, pg_base_dir


@pytest.fixture(scope="module", params=params(Tier.INTEGRATION))
def pg_install(request: pytest.FixtureRequest) -> PgInstall:
    """The PostgreSQL install this module's tests run on (one module pass per version)."""
    install: PgInstall = request.param
    return install


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def three_nodes(pg_install: PgInstall) -> AsyncIterator[list[PgNode]]:
    """Settings for n1, n2, n3 (free ports, own directories); nothing initialized yet.
    Every postmaster still running at the end is killed and the directories removed."""
    with pg_base_dir() as base:
        nodes = make_nodes(base, ["n1", "n2", "n3"], install=pg_install)
        try:
            yield nodes
        finally:
            for node in nodes:
                await node.postmaster.close()
            kill_leftovers(nodes)


@pytest_asyncio.fixture(loop_scope="module")
async def spare_node(pg_install: PgInstall) -> AsyncIterator[PgNode]:
    """One more node's settings (empty data dir) for bad-input tests."""
    with pg_base_dir() as base:
        nodes = make_nodes(base, ["spare"], install=pg_install)
        try:
            yield nodes[0]
        finally:
            await nodes[0].postmaster.close()
            kill_leftovers(nodes)


@pytest_asyncio.fixture(loop_scope="module")
async def passwordless_pair(pg_install: PgInstall) -> AsyncIterator[list[PgNode]]:
    """Two nodes whose roles have no password (loopback trust, as in a demo)."""
    with pg_base_dir() as base:
        nodes = make_nodes(base, ["open1", "open2"], install=pg_install, passwords=False)
        try:
            yield nodes
        finally:
            for node in nodes:
                await node.postmaster.close()
            kill_leftovers(nodes)


@pytest_asyncio.fixture(loop_scope="module")
async def node(pg_install: PgInstall) -> AsyncIterator[PgNode]:
    """One initialized, running primary of its own."""
    with pg_base_dir() as base:
        nodes = make_nodes(base, ["solo"], install=pg_install)
        try:
            await initdb(nodes[0].settings, run_dir=nodes[0].run_dir)
            await nodes[0].postmaster.start(standby=None, timeout_s=20)
            yield nodes[0]
        finally:
            await nodes[0].postmaster.close()
            kill_leftovers(nodes)
