"""The API's PostgreSQL-settings and restart routes: PATCH /config `postgresql` (a bad
parameter or pg_hba line is a 400 naming it, and nothing is written), POST and DELETE
/rolling-restart, POST /reload, and what /cluster and /health show of them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from agent.clock import FakeClock
from agent.model import LocalRequestKind, PgConfig, RecordKind
from agent.pgparams import (
    ConfigCheck,
    ValidationUnavailable,
    hba_problems,
    needs_restart,
    parameter_problems,
)
from tests.unit.api_harness import (
    AUTH,
    Api,
    Backend,
    StatusBox,
    config_record,
    make_settings,
    primary_status,
    serve,
    standard_cluster,
)
from tests.unit.test_pgparams import CATALOG


@dataclass
class CatalogValidator:
    """The checks of agent/postgres/checker.py over a fixed catalog (no server)."""

    seen: list[PgConfig] = field(default_factory=list)
    down: bool = False

    async def check(self, config: PgConfig, *, timeout_s: float) -> ConfigCheck:
        self.seen.append(config)
        if self.down:
            raise ValidationUnavailable("PostgreSQL is not running on this member")
        settings = make_settings()
        problems = [
            *parameter_problems(dict(config.parameters), CATALOG, settings),
            *hba_problems(config.pg_hba, settings),
        ]
        return ConfigCheck(
            problems=tuple(problems),
            restart=tuple(needs_restart(dict(config.parameters), CATALOG)),
        )


@pytest.fixture
async def api() -> AsyncIterator[tuple[Api, CatalogValidator]]:
    clock = FakeClock()
    backend = Backend(clock)
    await standard_cluster(backend)
    view = await backend.handle("a").get_cluster()
    validator = CatalogValidator()
    served = await serve(
        make_settings(), backend, StatusBox(primary_status(clock, view)), clock, validator
    )
    try:
        yield served, validator
    finally:
        await served.client.close()


async def test_a_valid_change_is_written_and_names_what_needs_a_restart(
    api: tuple[Api, CatalogValidator],
) -> None:
    served, _ = api
    body = {
        "postgresql": {
            "parameters": {"shared_buffers": "256MB", "statement_timeout": "30s"},
            "pg_hba": ["host all all 10.0.0.0/8 scram-sha-256"],
        }
    }
    response = await served.client.patch("/config", json=body, headers=AUTH)
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert answer["restart_needed"] == ["shared_buffers"]
    record = await config_record(served)
    assert isinstance(record, dict)
    assert record["postgresql"] == {
        "parameters": {"shared_buffers": "256MB", "statement_timeout": "30s"},
        "pg_hba": ["host all all 10.0.0.0/8 scram-sha-256"],
    }
    # A later patch merges; null removes; the lines stay unless given.
    body = {"postgresql": {"parameters": {"statement_timeout": None}}}
    response = await served.client.patch("/config", json=body, headers=AUTH)
    assert response.status == 200
    record = await config_record(served)
    assert isinstance(record, dict)
    assert record["postgresql"]["parameters"] == {"shared_buffers": "256MB"}
    assert record["postgresql"]["pg_hba"] == ["host all all 10.0.0.0/8 scram-sha-256"]
    assert (await (await served.client.get("/config")).json())["postgresql"] == record["postgresql"]


@pytest.mark.parametrize(
    ("postgresql", "named"),
    [
        ({"parameters": {"shared_bufers": "1GB"}}, "shared_bufers: unknown parameter"),
        ({"parameters": {"shared_buffers": "lots"}}, "shared_buffers: expected an integer"),
        ({"parameters": {"statement_timeout": "-5"}}, "statement_timeout: -5 is out of range"),
        ({"parameters": {"wal_compression": "rar"}}, "wal_compression: 'rar' is not one of"),
        ({"parameters": {"port": 6000}}, "port: set by pgwarden"),
        ({"pg_hba": ["local all all reject"]}, "pg_hba[0]: would lock the agent out"),
        ({"pg_hba": ["hots all all trust"]}, "pg_hba[0]: must start with a connection type"),
    ],
)
async def test_a_bad_change_is_a_400_naming_it_and_nothing_is_written(
    api: tuple[Api, CatalogValidator], postgresql: dict[str, object], named: str
) -> None:
    served, _ = api
    before = await config_record(served)
    revision = served.backend.revision
    response = await served.client.patch("/config", json={"postgresql": postgresql}, headers=AUTH)
    assert response.status == 400
    assert named in (await response.json())["error"]
    assert await config_record(served) == before
    assert served.backend.revision == revision
    assert served.inbox.wakes == 0


async def test_synchronous_mode_and_a_synchronous_commit_that_does_not_wait_are_refused(
    api: tuple[Api, CatalogValidator],
) -> None:
    # synchronous_commit local/off acknowledges commits no synchronous standby holds: with
    # synchronous_mode on, a failover would lose them. Refused in either order.
    served, _ = api

    async def patch(body: dict[str, object]) -> tuple[int, str]:
        response = await served.client.patch("/config", json=body, headers=AUTH)
        return response.status, (await response.json()).get("error", "")

    assert (await patch({"synchronous_mode": "on"}))[0] == 200
    revision = served.backend.revision
    status, error = await patch({"postgresql": {"parameters": {"synchronous_commit": "local"}}})
    assert status == 400 and "synchronous_commit: 'local' acknowledges a commit" in error
    assert served.backend.revision == revision
    status, _ = await patch({"postgresql": {"parameters": {"synchronous_commit": "remote_apply"}}})
    assert status == 200
    assert (await patch({"synchronous_mode": "off"}))[0] == 200
    assert (await patch({"postgresql": {"parameters": {"synchronous_commit": "OFF"}}}))[0] == 200
    revision = served.backend.revision
    status, error = await patch({"synchronous_mode": "quorum"})
    assert status == 400 and "synchronous_mode quorum" in error
    assert served.backend.revision == revision
    assert (await patch({"paused": True}))[0] == 200  # unrelated changes still go through


async def test_without_a_running_server_to_ask_a_change_is_a_503(
    api: tuple[Api, CatalogValidator],
) -> None:
    served, validator = api
    validator.down = True
    body = {"postgresql": {"parameters": {"statement_timeout": "5s"}}}
    response = await served.client.patch("/config", json=body, headers=AUTH)
    assert response.status == 503
    assert "not running" in (await response.json())["error"]
    # A change of the HA fields alone needs no server.
    response = await served.client.patch("/config", json={"paused": True}, headers=AUTH)
    assert response.status == 200


async def test_a_rolling_restart_is_recorded_listed_and_cancelled(
    api: tuple[Api, CatalogValidator],
) -> None:
    served, _ = api
    body = {"role": "replica", "pending": True, "scheduled_at": "2999-01-01T03:00:00+00:00"}
    response = await served.client.post("/rolling-restart", json=body, headers=AUTH)
    assert response.status == 202, await response.text()
    answer = await response.json()
    assert "a" not in answer["members"] and answer["members"]  # the leader is not a replica
    assert answer["pending"] is True and answer["scheduled_at"].startswith("2999-01-01T03:00")
    record = served.backend.record(RecordKind.RESTART)
    assert isinstance(record, dict) and record["members"] == answer["members"]
    again = await served.client.post("/rolling-restart", json={}, headers=AUTH)
    assert again.status == 409
    bad = await served.client.post("/rolling-restart", json={"members": ["zz"]}, headers=AUTH)
    assert bad.status == 400 and "zz" in (await bad.json())["error"]
    cancelled = await served.client.delete("/rolling-restart", headers=AUTH)
    assert cancelled.status == 200
    assert served.backend.record(RecordKind.RESTART) is None
    assert (await served.client.delete("/rolling-restart", headers=AUTH)).status == 404


async def test_reload_is_queued_for_this_members_loop(api: tuple[Api, CatalogValidator]) -> None:
    served, _ = api
    response = await served.client.post("/reload", headers=AUTH)
    assert response.status == 202
    assert served.inbox.submitted == [LocalRequestKind.RELOAD]
