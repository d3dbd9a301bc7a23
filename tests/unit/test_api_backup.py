"""POST/GET /backup and `pgwarden ctl backup` against an in-process API whose pgBackRest
program is a stand-in script (`true` or `false` with pgBackRest's arguments): the route runs
it on the primary only, one at a time, reports how it ended, and ctl finds the primary and
waits for the result (issue 17)."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from agent.api import build_app
from agent.backup_settings import PgBackRestSettings
from agent.clock import FakeClock
from agent.config import (
    ApiSettings,
    DcsKind,
    DcsSettings,
    EtcdSettings,
    PostgresSettings,
    Secret,
    Settings,
)
from agent.ctl import run
from agent.dcs.memory import MemoryDcs, MemoryStore
from agent.metrics import Metrics
from agent.model import AgentStatus, LocalRequestKind, Member, MemberName, PgState, Role
from tests.support.postgres import pg_base_dir, pg_os_user

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Api:
    url: str
    status: AgentStatus
    calls: Path  # the stand-in program appends its arguments here

    async def post(self, body: object) -> tuple[int, dict[str, object]]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url + "/backup", json=body, headers=AUTH) as response,
        ):
            return response.status, await response.json()

    async def last(self) -> dict[str, object]:
        """GET /backup once the backup started has ended: the route's task runs on this test's
        event loop (the server is in-process), so its end is awaited, not polled for."""
        running = [t for t in asyncio.all_tasks() if t.get_name() == "pgbackrest-backup"]
        await asyncio.gather(*running)
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.url + "/backup") as response,
        ):
            body: dict[str, object] = await response.json()
        assert body["running"] is False, body
        return body


class _NoRequests:
    def submit(self, kind: LocalRequestKind) -> None:
        raise AssertionError(kind)

    def wake(self) -> None:
        pass

    def accept_failsafe(self, leader: str) -> str | None:
        raise AssertionError(leader)


async def _api(tmp_path: Path, exit_code: int) -> AsyncIterator[Api]:
    # The program runs as PostgreSQL's OS user (`postgres` when the tests run as root).
    tmp_path.mkdir(mode=0o777)
    os.chmod(tmp_path, 0o777)
    calls = tmp_path / "calls"
    program = tmp_path / "pgbackrest"
    program.write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho "ERROR: [055]: no" >&2\n'
                       f"exit {exit_code}\n")  # fmt: skip
    os.chmod(program, 0o755)
    clock = FakeClock()
    dcs = MemoryDcs(MemoryStore(clock), "a", ttl_s=10.0, clock=clock)
    settings = Settings(
        name="a",
        cluster="demo",
        run_dir=str(tmp_path / "run"),
        dcs=DcsSettings(kind=DcsKind.ETCD, etcd=EtcdSettings(endpoints=("http://127.0.0.1:1",))),
        postgresql=PostgresSettings(data_dir=str(tmp_path / "data"), os_user=pg_os_user()),
        api=ApiSettings(token=Secret(TOKEN)),
        pgbackrest=PgBackRestSettings(repo_path="/repo", command=str(program)),
    )
    holder: list[Api] = []
    app = build_app(
        settings=settings,
        status=lambda: holder[0].status,
        dcs=dcs,
        requests=_NoRequests(),
        metrics=Metrics(),
        clock=clock,
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = f"http://127.0.0.1:{server.port}"
    await dcs.publish_member(
        Member(
            name=MemberName("a"),
            role=Role.PRIMARY,
            state=PgState.RUNNING,
            api_url=url,
            host="127.0.0.1",
            port=5432,
        )
    )
    assert await dcs.acquire_leader()
    status = AgentStatus(
        name=MemberName("a"), cluster="demo", role=Role.PRIMARY, state=PgState.RUNNING,
        api_url=url, leader=MemberName("a"), lease_held=True,
        cluster_view=await dcs.get_cluster(),
    )  # fmt: skip
    holder.append(Api(url=url, status=status, calls=calls))
    try:
        yield holder[0]
    finally:
        await server.close()


@pytest.fixture
def base() -> Iterator[Path]:
    with pg_base_dir() as path:  # one the OS user can traverse (tmp_path is root's, 0700)
        yield Path(path)


@pytest.fixture
async def api(base: Path) -> AsyncIterator[Api]:
    async for one in _api(base / "ok", 0):
        yield one


@pytest.fixture
async def failing_api(base: Path) -> AsyncIterator[Api]:
    async for one in _api(base / "failing", 1):
        yield one


async def test_a_backup_runs_pgbackrest_on_the_primary_with_the_type_asked(api: Api) -> None:
    status, body = await api.post({"type": "incr"})
    assert status == 202 and body["accepted"] is True and body["type"] == "incr"
    last = (await api.last())["last"]
    assert isinstance(last, dict) and last["ok"] is True and last["error"] is None
    words = api.calls.read_text().split()
    assert words[-2:] == ["--type=incr", "backup"]
    assert "--stanza=demo" in words


async def test_a_failed_backup_is_reported_with_pgbackrests_message(failing_api: Api) -> None:
    assert (await failing_api.post({}))[0] == 202
    last = (await failing_api.last())["last"]
    assert isinstance(last, dict) and last["ok"] is False
    assert "ERROR: [055]" in str(last["error"])


async def test_bad_requests_and_replicas_are_refused_and_run_nothing(api: Api) -> None:
    status, body = await api.post({"type": "weekly"})
    assert status == 400 and str(body["error"]).startswith("type:")
    status, body = await api.post({"kind": "full"})
    assert status == 400 and str(body["error"]).startswith("kind:")
    api.status = replace(api.status, role=Role.REPLICA, lease_held=False)
    status, body = await api.post({})
    assert status == 409 and "not the primary" in str(body["error"])
    assert not api.calls.exists()


async def test_ctl_backup_finds_the_primary_and_waits_for_the_result(
    api: Api, failing_api: Api
) -> None:
    out, err = io.StringIO(), io.StringIO()
    env = {"PGWARDEN_URL": api.url, "PGWARDEN_TOKEN": TOKEN}
    code = await run(["backup", "--type", "diff", "--poll-interval", "0.01"], env=env, out=out,
                     err=err)  # fmt: skip
    assert code == 0, err.getvalue()
    assert out.getvalue().splitlines() == ["diff backup started on a", "diff backup on a done"]
    env["PGWARDEN_URL"] = failing_api.url
    code = await run(["backup", "--poll-interval", "0.01"], env=env, out=out, err=err)
    assert code == 1 and "backup on a failed" in err.getvalue()
