"""Fixtures for the PostgreSQL control-layer tests: three nodes' settings, cleaned up always."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from agent.postgres import initdb
from tests.support.postgres import PgNode, kill_leftovers, make_nodes, pg_available, pg_base_dir


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def three_nodes() -> AsyncIterator[list[PgNode]]:
    """Settings for n1, n2, n3 (free ports, own directories); nothing initialized yet.
    Every postmaster still running at the end is killed and the directories removed."""
    if not pg_available():
        pytest.skip("PostgreSQL 15 binaries not installed")
    with pg_base_dir() as base:
        nodes = make_nodes(base, ["n1", "n2", "n3"])
        try:
            yield nodes
        finally:
            for node in nodes:
                await node.postmaster.close()
            kill_leftovers(nodes)


@pytest_asyncio.fixture(loop_scope="module")
async def spare_node() -> AsyncIterator[PgNode]:
    """One more node's settings (empty data dir) for bad-input tests."""
    with pg_base_dir() as base:
        nodes = make_nodes(base, ["spare"])
        try:
            yield nodes[0]
        finally:
            await nodes[0].postmaster.close()
            kill_leftovers(nodes)


@pytest_asyncio.fixture(loop_scope="module")
async def passwordless_pair() -> AsyncIterator[list[PgNode]]:
    """Two nodes whose roles have no password (loopback trust, as in a demo)."""
    with pg_base_dir() as base:
        nodes = make_nodes(base, ["open1", "open2"], passwords=False)
        try:
            yield nodes
        finally:
            for node in nodes:
                await node.postmaster.close()
            kill_leftovers(nodes)


@pytest_asyncio.fixture(loop_scope="module")
async def node() -> AsyncIterator[PgNode]:
    """One initialized, running primary of its own."""
    if not pg_available():
        pytest.skip("PostgreSQL 15 binaries not installed")
    with pg_base_dir() as base:
        nodes = make_nodes(base, ["solo"])
        try:
            await initdb(nodes[0].settings, run_dir=nodes[0].run_dir)
            await nodes[0].postmaster.start(standby=None, timeout_s=20)
            yield nodes[0]
        finally:
            await nodes[0].postmaster.close()
            kill_leftovers(nodes)
