"""With pgBackRest, a bootstrap creates its stanza when the cluster it made is opened, which
happens only once the DCS records that cluster's system id; before, `create_roles` created it.
A bootstrap discarded between the two (its probe found no system id under load, its lease or
claim was lost, post_bootstrap failed) left the repository holding a system the cluster never
became, and every later bootstrap's stanza-create refused it: the cluster never came up
(tests/e2e/test_backups.py, alone and in a fresh-clone CI run: 90 s of bootstraps, each
failing with "backup and archive info files exist but do not match the database").

Real PostgreSQL 15 (Debian's pgBackRest 2.45 is built for it) and pgBackRest, through the
agent's `LocalPostgres` calls in the bootstrap's order."""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from agent.backup_settings import PgBackRestSettings
from agent.config import DcsKind, DcsSettings, EtcdSettings, Settings
from agent.postgres import pgbackrest
from agent.postgres.control import LocalPostgres
from agent.postgres.osfiles import PostgresError
from agent.postgres.probe import Prober
from agent.postgres.process import Postmaster, StopMode
from tests.support.pgversions import find_install
from tests.support.postgres import kill_leftovers, make_nodes, pg_base_dir

PG15 = find_install(15)
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not os.path.exists("/usr/bin/pgbackrest"), reason="no pgbackrest"),
    pytest.mark.skipif(PG15 is None, reason="no PostgreSQL 15"),
]
START_S = 30.0


@dataclass(slots=True)
class Member:
    settings: Settings
    pg: LocalPostgres

    async def bootstrap_until_recorded(self) -> None:
        """What the Bootstrap action does before it records the system id in the DCS."""
        await self.pg.initdb()
        await self.pg.start(standby=None, timeout_s=START_S, socket_only=True)
        await self.pg.create_roles()

    async def discard(self) -> None:
        """What the agent does with a bootstrap that was not recorded."""
        await self.pg.stop(StopMode.IMMEDIATE, timeout_s=START_S)
        self.pg.clear_data_dir()

    async def stanza_system_ids(self) -> list[int]:
        out = await pgbackrest.run(
            self.settings, ["--output=json", "info"], timeout_s=60, what="pgbackrest info"
        )
        return [int(db["system-id"]) for stanza in json.loads(out) for db in stanza["db"]]

    async def system_id(self) -> int:
        state = await self.pg.probe(timeout_s=10)
        assert state.system_id is not None
        return int(state.system_id)


@pytest_asyncio.fixture
async def member() -> AsyncIterator[Member]:
    assert PG15 is not None
    with pg_base_dir() as base:
        node = make_nodes(base, ["b1"], install=PG15)[0]
        repo = os.path.join(base, "repo")
        os.mkdir(repo, 0o750)
        if node.settings.os_user is not None:
            entry = pwd.getpwnam(node.settings.os_user)
            os.chown(repo, entry.pw_uid, entry.pw_gid)
        settings = Settings(
            name=node.name,
            cluster="stanza-test",
            run_dir=node.run_dir,
            dcs=DcsSettings(
                kind=DcsKind.ETCD, etcd=EtcdSettings(endpoints=("http://127.0.0.1:1",))
            ),
            postgresql=node.settings,
            pgbackrest=PgBackRestSettings(repo_path=repo, options=(("compress-type", "none"),)),
        )
        os.makedirs(settings.run_dir, exist_ok=True)
        pgbackrest.write_conf(settings)
        postmaster = Postmaster(
            node.settings,
            member_name=node.name,
            run_dir=node.run_dir,
            archive=pgbackrest.archive_settings(settings),
        )
        node.postmaster = postmaster  # kill_leftovers stops this one
        prober = Prober(node.settings, run_dir=node.run_dir, member_name=node.name)
        pg = LocalPostgres(settings, postmaster=postmaster, prober=prober)
        try:
            yield Member(settings=settings, pg=pg)
        finally:
            await pg.close()
            await postmaster.close()
            kill_leftovers([node])


async def test_a_bootstrap_discarded_before_its_record_leaves_the_repository_alone(
    member: Member,
) -> None:
    """A bootstrap discarded before it is recorded, then the next one (a new system) is
    recorded and opened: its stanza is made then. The repository's guard stays: a third
    system's recorded bootstrap is not opened to clients (the agent retries the opening
    every cycle), and the stanza stays the second system's."""
    await member.bootstrap_until_recorded()
    await member.discard()
    await member.bootstrap_until_recorded()
    await member.pg.open_to_clients(timeout_s=START_S)
    state = await member.pg.probe(timeout_s=10)
    assert state.running and not state.bootstrap_incomplete and not state.socket_only
    recorded = await member.system_id()
    assert await member.stanza_system_ids() == [recorded]

    await member.discard()
    await member.bootstrap_until_recorded()
    with pytest.raises(PostgresError, match="stanza-create"):
        await member.pg.open_to_clients(timeout_s=START_S)
    state = await member.pg.probe(timeout_s=10)
    assert state.running and state.bootstrap_incomplete and state.socket_only
    assert await member.stanza_system_ids() == [recorded]
