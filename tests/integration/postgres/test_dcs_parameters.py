"""DCS PostgreSQL settings on real servers: checked against pg_settings and PostgreSQL's own
pg_hba parser (nothing changes on a refusal), applied by a reload or pending a restart, and
the hot-standby minimums a standby needs at least as high as its primary."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from agent.config import DcsKind, DcsSettings, EtcdSettings, Settings
from agent.model import (
    ClusterView,
    LeaderRecord,
    LocalState,
    Member,
    MemberName,
    PgConfig,
    PgState,
    Role,
)
from agent.pgparams import dynamic_for
from agent.postgres.checker import ConfigChecker
from agent.postgres.probe import Prober
from agent.postgres.process import PostgresError, StopMode
from agent.postgres.replication import hba_path
from tests.support.pgversions import PgInstall
from tests.support.postgres import PAIR_START_TIMEOUT_S, PgNode, streaming_pair

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TABLE = "CREATE TABLE t (v int)"


def agent_settings(node: PgNode) -> Settings:
    return Settings(
        name=node.name,
        cluster="c",
        run_dir=node.run_dir,
        dcs=DcsSettings(kind=DcsKind.ETCD, etcd=EtcdSettings(endpoints=("http://127.0.0.1:1",))),
        postgresql=node.settings,
    )


async def show(node: PgNode, name: str) -> str:
    rows = await node.postmaster.fetch(f"SHOW {name}", timeout_s=5.0)
    return str(rows[0][0])


async def probe(node: PgNode) -> LocalState:
    prober = Prober(node.settings, run_dir=node.run_dir, member_name=node.name)
    try:
        return await prober.probe(running=True, postmaster_pid=node.postmaster.pid(), timeout_s=5)
    finally:
        await prober.close()


async def test_bad_settings_are_refused_by_name_and_leave_the_server_as_it_was(
    pg_install: PgInstall,
) -> None:
    async with streaming_pair(install=pg_install, table_sql=TABLE) as (primary, _standby):
        checker = ConfigChecker(agent_settings(primary), primary.postmaster)
        with open(hba_path(primary.run_dir), encoding="utf-8") as handle:
            hba_before = handle.read()
        bad = PgConfig(
            parameters=(
                ("shared_bufers", "64MB"),
                ("work_mem", "lots"),
                ("max_wal_size", "1PB"),
                ("wal_compression", "zstdd"),
                ("port", "6000"),
                ("block_size", "16384"),
                ("enable_seqscan", "maybe"),
                ("statement_timeout", "-5"),
                ("auto_explain.log_min_duration", "whatever"),
            )
        )
        check = await checker.check(bad, timeout_s=5.0)
        named = {problem.split(":")[0] for problem in check.problems}
        assert named == {
            "shared_bufers",
            "work_mem",
            "max_wal_size",
            "wal_compression",
            "port",
            "block_size",
            "enable_seqscan",
            "statement_timeout",
        }, check.problems
        hba = PgConfig(
            pg_hba=("host all all 10.0.0.0/8 scram-sha-256", "host all all 10.0.0.0/33 md5")
        )
        check = await checker.check(hba, timeout_s=5.0)
        assert len(check.problems) == 1 and check.problems[0].startswith("pg_hba[1]:")
        assert "10.0.0.0/33" in check.problems[0]
        with open(hba_path(primary.run_dir), encoding="utf-8") as handle:
            assert handle.read() == hba_before
        good = PgConfig(
            parameters=(("work_mem", "8MB"), ("shared_buffers", "32MB"), ("wal_level", "logical")),
            pg_hba=("host all all 10.0.0.0/8 scram-sha-256",),
        )
        check = await checker.check(good, timeout_s=5.0)
        assert check.problems == ()
        assert set(check.restart) == {"shared_buffers", "wal_level"}


async def test_a_reload_applies_what_it_can_and_the_rest_is_pending_restart(
    pg_install: PgInstall,
) -> None:
    async with streaming_pair(install=pg_install, table_sql=TABLE) as (primary, standby):
        config = PgConfig(
            parameters=(("log_min_duration_statement", "250ms"), ("wal_buffers", "1MB"))
        )
        for node in (primary, standby):
            await node.postmaster.apply_dynamic(config)

        async def applied() -> bool:
            return all(
                [await show(n, "log_min_duration_statement") == "250ms" for n in (primary, standby)]
            )

        for _ in range(200):
            if await applied():
                break
            await asyncio.sleep(0.02)
        assert await applied()
        for node in (primary, standby):
            state = await probe(node)
            assert state.pending_restart == ("wal_buffers",), node.name
            assert await show(node, "wal_buffers") != "1MB"
        await standby.postmaster.stop(StopMode.FAST, timeout_s=10)
        await standby.postmaster.start(
            standby=standby.standby_of(primary), timeout_s=PAIR_START_TIMEOUT_S
        )
        assert await show(standby, "wal_buffers") == "1MB"
        assert (await probe(standby)).pending_restart == ()


async def test_a_standby_below_its_primarys_minimum_refuses_to_start_unless_held_up(
    pg_install: PgInstall,
) -> None:
    async with streaming_pair(install=pg_install, table_sql=TABLE) as (primary, standby):
        raised = PgConfig(parameters=(("max_prepared_transactions", "10"),))
        await primary.postmaster.apply_dynamic(raised)
        await primary.postmaster.stop(StopMode.FAST, timeout_s=10)
        await primary.postmaster.start(standby=None, timeout_s=PAIR_START_TIMEOUT_S)
        await primary.postmaster.execute("CHECKPOINT", timeout_s=5)
        leader_state = await probe(primary)
        assert dict(leader_state.hot_standby)["max_prepared_transactions"] == 10
        # Running below the primary's new value, the standby pauses replay at the change.
        for _ in range(300):
            rows = await standby.postmaster.fetch(
                "SELECT pg_get_wal_replay_pause_state()", timeout_s=5
            )
            if rows[0][0] == "paused":
                break
            await asyncio.sleep(0.05)
        assert rows[0][0] == "paused"
        # The DCS now asks for less (a decrease): rendered as it stands, the standby stops.
        lowered = PgConfig(parameters=(("max_prepared_transactions", "5"),))
        await standby.postmaster.stop(StopMode.FAST, timeout_s=10)
        await standby.postmaster.apply_dynamic(lowered)
        with pytest.raises(PostgresError, match="insufficient parameter settings"):
            await standby.postmaster.start(
                standby=standby.standby_of(primary), timeout_s=PAIR_START_TIMEOUT_S
            )
        # As the agent renders it for a replica, held at the leader's running value: it runs.
        view = ClusterView(
            leader=LeaderRecord(name=MemberName(primary.name), version="1"),
            members=(
                Member(
                    name=MemberName(primary.name),
                    role=Role.PRIMARY,
                    state=PgState.RUNNING,
                    api_url="http://127.0.0.1:1",
                    host="127.0.0.1",
                    port=primary.port,
                    hot_standby=leader_state.hot_standby,
                ),
            ),
        )
        view = replace(view, config=replace(view.config, postgresql=lowered))
        held = dynamic_for(
            view, agent_settings(standby), LocalState(data_dir_initialized=True, running=False)
        )
        assert dict(held.parameters)["max_prepared_transactions"] == "10"
        await standby.postmaster.apply_dynamic(held)
        await standby.postmaster.start(
            standby=standby.standby_of(primary), timeout_s=PAIR_START_TIMEOUT_S
        )
        assert await show(standby, "max_prepared_transactions") == "10"
