"""POST/GET /backup and `pgwarden ctl backup` against an in-process API whose pgBackRest
program is a stand-in script (`true` or `false` with pgBackRest's arguments): the route runs
it on the primary, or on a streaming replica with the primary as pg2 (backup-standby) when
both run on one host, one at a time, reports how it ended and where; ctl asks the healthy
replicas first, then the primary, and waits for the result (issue 17)."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest

from agent.api import build_app
from agent.archiving import BackupPg
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
from agent.model import (
    AgentStatus,
    LeaderRecord,
    LocalRequestKind,
    Member,
    MemberName,
    PgState,
    RawRecord,
    Role,
    parse_member,
)
from tests.support.postgres import pg_base_dir, pg_os_user
from tests.support.served import Served

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
    server = await Served.start(app)
    url = server.url
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
    assert (body["member"], body["source"], body["primary"]) == ("a", "primary", "a")
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


def _replica_of_b(api: Api, *, host: str = "127.0.0.1", published: bool = True) -> AgentStatus:
    """Our status as a streaming replica of b, whose record says where its PostgreSQL is."""
    view = api.status.cluster_view
    assert view is not None
    b = Member(
        name=MemberName("b"), role=Role.PRIMARY, state=PgState.RUNNING, api_url="http://b",
        host=host, port=6543,
        backup_pg=BackupPg(path="/data/b", socket_path="/run/b", user="postgres")
        if published else None,
    )  # fmt: skip
    view = replace(view, leader=LeaderRecord(name=MemberName("b"), version="9"), members=(b,))
    return replace(
        api.status, role=Role.REPLICA, state=PgState.STREAMING, lease_held=False,
        leader=MemberName("b"), cluster_view=view,
    )  # fmt: skip


async def test_bad_requests_and_replicas_that_cannot_back_up_are_refused_and_run_nothing(
    api: Api,
) -> None:
    status, body = await api.post({"type": "weekly"})
    assert status == 400 and str(body["error"]).startswith("type:")
    status, body = await api.post({"kind": "full"})
    assert status == 400 and str(body["error"]).startswith("kind:")
    refusals = [
        (replace(_replica_of_b(api), state=PgState.STOPPED), "neither the primary nor a"),
        (_replica_of_b(api, host="10.0.0.2"), "runs on 10.0.0.2, not on this host"),
        (_replica_of_b(api, published=False), "publishes no pgBackRest location"),
    ]
    for status_now, message in refusals:
        api.status = status_now
        status, body = await api.post({})
        assert status == 409 and message in str(body["error"]), body
    assert not api.calls.exists()


async def test_a_streaming_replica_backs_up_from_itself_with_the_primary_as_pg2(api: Api) -> None:
    api.status = _replica_of_b(api)
    status, body = await api.post({"type": "full"})
    assert status == 202 and (body["member"], body["source"], body["primary"]) == (
        "a", "standby", "b",
    )  # fmt: skip
    last = (await api.last())["last"]
    assert isinstance(last, dict) and last["ok"] is True and last["source"] == "standby"
    conf_arg = next(w for w in api.calls.read_text().split() if w.startswith("--config="))
    conf = Path(conf_arg.removeprefix("--config=")).read_text().splitlines()
    assert "backup-standby=y" in conf
    assert {"pg2-path=/data/b", "pg2-port=6543", "pg2-socket-path=/run/b"} <= set(conf)
    assert any(line.startswith("pg1-path=") and line.endswith("/data") for line in conf)


async def test_ctl_backup_finds_the_primary_and_waits_for_the_result(
    api: Api, failing_api: Api
) -> None:
    out, err = io.StringIO(), io.StringIO()
    env = {"PGWARDEN_URL": api.url, "PGWARDEN_TOKEN": TOKEN}
    code = await run(["backup", "--type", "diff", "--poll-interval", "0.01"], env=env, out=out,
                     err=err)  # fmt: skip
    assert code == 0, err.getvalue()
    assert out.getvalue().splitlines() == [
        "diff backup started on the primary a",
        "diff backup on the primary a done",
    ]
    env["PGWARDEN_URL"] = failing_api.url
    code = await run(["backup", "--poll-interval", "0.01"], env=env, out=out, err=err)
    assert code == 1 and "backup on a failed" in err.getvalue()


async def test_ctl_backup_asks_a_streaming_replica_first_and_says_so(
    api: Api, failing_api: Api
) -> None:
    # The cluster: a (the primary, `api`) and b, a streaming replica (`failing_api` made to
    # look like one, so that its refusal is what sends ctl on to the primary).
    view = api.status.cluster_view
    assert view is not None
    b = Member(
        name=MemberName("b"), role=Role.REPLICA, state=PgState.STREAMING,
        api_url=failing_api.url, host="10.0.0.2", port=5432,
    )  # fmt: skip
    api.status = replace(api.status, cluster_view=replace(view, members=(*view.members, b)))
    failing_api.status = replace(
        failing_api.status, role=Role.REPLICA, state=PgState.STREAMING, lease_held=False,
        cluster_view=api.status.cluster_view,
    )  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    env = {"PGWARDEN_URL": api.url, "PGWARDEN_TOKEN": TOKEN}
    code = await run(["backup", "--poll-interval", "0.01"], env=env, out=out, err=err)
    assert code == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    # b refused (the primary's record has no pgBackRest location in this stand-in cluster).
    assert lines[0].startswith("not from b: ") and "409" not in lines[0][:8]
    assert lines[1:] == [
        "full backup started on the primary a",
        "full backup on the primary a done",
    ]
    assert not failing_api.calls.exists()


def test_the_member_record_carries_where_pgbackrest_finds_its_postgresql() -> None:
    where = BackupPg(path="/data/b", socket_path="/run/b", user="postgres")
    record = Member(
        name=MemberName("b"), role=Role.PRIMARY, state=PgState.RUNNING, api_url="http://b",
        host="127.0.0.1", port=5432, backup_pg=where,
    )  # fmt: skip
    assert parse_member("b", RawRecord(value=record.to_json(), version="1")).backup_pg == where
    plain = replace(record, backup_pg=None)
    assert "backup_pg" not in plain.to_json()  # without pgBackRest: the record as before
    broken = json.loads(record.to_json()) | {"backup_pg": {"path": 3}}
    assert parse_member("b", RawRecord(value=json.dumps(broken), version="1")).backup_pg is None
