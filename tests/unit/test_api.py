"""The REST API against hand-built AgentStatus values and an in-memory DCS (the harness:
tests/unit/api_harness.py; the `api` fixture: tests/unit/conftest.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from agent.api import build_app, start_api
from agent.api.health import parse_lag
from agent.clock import FakeClock
from agent.config import (
    ApiSettings,
)
from agent.metrics import Metrics
from agent.model import (
    AgentStatus,
    HistoryEntry,
    LocalRequestKind,
    MemberName,
    PgState,
    RecordKind,
)
from tests.support.ports import free_port
from tests.support.served import Served
from tests.unit.api_harness import (
    AUTH,
    LEADER_LSN,
    MIB,
    TOKEN,
    Api,
    Inbox,
    config_record,
    make_settings,
    primary_status,
    replica_status,
    serve,
    switchover_record,
)

# --------------------------------------------------------------------------- probes


@pytest.mark.parametrize(
    ("path", "make", "expected"),
    [
        ("/health", primary_status, 200),
        ("/health", lambda c: replica_status(c, state=PgState.RUNNING), 200),
        ("/health", lambda c: replica_status(c, state=PgState.STOPPED), 503),
        ("/health", lambda c: replica_status(c, state=PgState.CRASHED), 503),
        ("/readiness", primary_status, 200),
        ("/readiness", lambda c: replace(primary_status(c), lease_held=False), 503),
        ("/readiness", replica_status, 200),
        ("/readiness", lambda c: replica_status(c, state=PgState.RUNNING), 503),
        ("/primary", primary_status, 200),
        ("/leader", primary_status, 200),
        ("/read-write", primary_status, 200),
        ("/primary", lambda c: replace(primary_status(c), lease_held=False), 503),
        ("/primary", lambda c: replace(primary_status(c), state=PgState.FENCED), 503),
        ("/primary", replica_status, 503),
        ("/replica", replica_status, 200),
        ("/replica", lambda c: replica_status(c, state=PgState.RUNNING), 503),
        ("/replica", primary_status, 503),
        ("/read-only", primary_status, 200),
        ("/read-only", replica_status, 200),
        ("/read-only", lambda c: replica_status(c, state=PgState.STOPPED), 503),
        ("/liveness", lambda c: replica_status(c, state=PgState.STOPPED), 200),
    ],
)
async def test_probe_answers_by_role_and_state(
    api: Api, path: str, make: Callable[[FakeClock], AgentStatus], expected: int
) -> None:
    api.status.value = make(api.clock)
    response = await api.client.get(path)
    assert response.status == expected
    body = await response.json()
    assert body["role"] == api.status.value.role.value
    assert body["state"] == api.status.value.state.value


@pytest.mark.parametrize(
    "path", ["/health", "/liveness", "/readiness", "/primary", "/replica", "/read-only"]
)
async def test_every_probe_fails_when_the_loop_published_nothing_for_longer_than_ttl(
    api: Api, path: str
) -> None:
    api.status.value = (
        primary_status(api.clock) if path != "/replica" else replica_status(api.clock)
    )
    assert (await api.client.get(path)).status == 200
    api.clock.advance(10.5)
    assert (await api.client.get(path)).status == 503


async def test_primary_probe_fails_once_the_fencing_deadline_has_passed_since_publication(
    api: Api,
) -> None:
    api.status.value = replace(primary_status(api.clock), fence_remaining_s=2.0)
    api.clock.advance(1.5)
    assert (await api.client.get("/primary")).status == 200
    api.clock.advance(1.0)
    assert (await api.client.get("/primary")).status == 503


@pytest.mark.parametrize(
    ("query", "lag", "expected"),
    [
        ("1000", 1000, 200),
        ("999", 1000, 503),
        ("1kB", 1000, 200),
        ("1kB", 2000, 503),
        ("16kb", 2000, 200),
        ("1MB", MIB + 1, 503),
        ("1MB", None, 503),
    ],
)
async def test_replica_probe_applies_the_lag_limit(
    api: Api, query: str, lag: int | None, expected: int
) -> None:
    api.status.value = replica_status(api.clock, lag_bytes=lag)
    assert (await api.client.get("/replica", params={"lag": query})).status == expected
    assert (await api.client.get("/read-only", params={"lag": query})).status == expected


@pytest.mark.parametrize("query", ["", "abc", "-5", "1XB", "1.5MB"])
async def test_replica_probe_rejects_a_bad_lag_value_with_400(api: Api, query: str) -> None:
    api.status.value = replica_status(api.clock)
    response = await api.client.get("/replica", params={"lag": query})
    assert response.status == 400
    assert (await response.json())["error"].startswith("lag:")


def test_lag_values_use_postgresql_units_of_1024() -> None:
    assert parse_lag("0") == 0
    assert parse_lag("16kB") == 16384
    assert parse_lag("1MB") == MIB
    assert parse_lag("2GB") == 2 * 1024**3
    assert parse_lag("7B") == 7


# --------------------------------------------------------------------------- views


async def test_cluster_lists_members_with_lag_relative_to_the_leader(api: Api) -> None:
    response = await api.client.get("/cluster")
    assert response.status == 200
    body = await response.json()
    assert body["cluster"] == "demo"
    assert body["leader"] == "a"
    assert body["paused"] is False
    assert body["switchover"] is None
    members = {m["name"]: m for m in body["members"]}
    assert body["members"][0]["name"] == "a"
    assert members["a"]["leader"] is True
    assert members["a"]["lag_bytes"] == 0
    assert members["b"] == {
        "name": "b",
        "role": "replica",
        "state": "streaming",
        "host": "127.0.0.2",
        "port": 5432,
        "api_url": "http://127.0.0.2:8008",
        "timeline": 3,
        "wal_lsn": LEADER_LSN - 1000,
        "wal_lsn_text": "2/FFFFFC18",
        "lag_bytes": 1000,
        "leader": False,
        "pending_restart": [],
        "tags": {
            "nofailover": False,
            "failover_priority": 1,
            "nosync": False,
            "sync_priority": 1,
            "replicatefrom": None,
            "clonefrom": False,
            "noloadbalance": False,
        },
        "sync_role": "async",
        "promotion_vetoed": False,
        "upstream": None,
        "archiving": None,
    }
    assert members["c"]["tags"]["nofailover"] is True
    assert members["d"]["lag_bytes"] == 10 * MIB
    assert members["e"]["lag_bytes"] is None


async def test_cluster_shows_a_pending_switchover_and_the_pause(api: Api) -> None:
    api.backend.put_record(
        RecordKind.SWITCHOVER,
        json.dumps({"leader": "a", "candidate": "b", "scheduled_at": 1_900_000_000}),
    )
    api.backend.put_record(RecordKind.CONFIG, json.dumps({"paused": True}))
    api.status.value = primary_status(api.clock, await api.view())
    body = await (await api.client.get("/cluster")).json()
    assert body["switchover"] == {
        "leader": "a",
        "candidate": "b",
        "scheduled_at": "2030-03-17T17:46:40+00:00",
    }
    assert body["paused"] is True


async def test_cluster_and_history_answer_503_before_the_first_dcs_read(api: Api) -> None:
    api.status.value = primary_status(api.clock, None)
    for path in ("/cluster", "/history"):
        response = await api.client.get(path)
        assert response.status == 503
        assert "error" in await response.json()


async def test_history_lists_timeline_switches(api: Api) -> None:
    entry = HistoryEntry(
        timeline=2,
        switch_lsn=0x5000060,
        reason="failover",
        at=1_800_000_000.0,
        new_leader=MemberName("a"),
    )
    view = replace(await api.view(), history=(entry,))
    api.status.value = primary_status(api.clock, view)
    body = await (await api.client.get("/history")).json()
    assert body == {
        "history": [
            {
                "timeline": 2,
                "switch_lsn": 0x5000060,
                "switch_lsn_text": "0/5000060",
                "reason": "failover",
                "at": "2027-01-15T08:00:00+00:00",
                "new_leader": "a",
            }
        ]
    }


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": TOKEN},
        {"Authorization": "Basic " + base64.b64encode(b"admin:wrong").decode()},
        {"Authorization": "Basic " + base64.b64encode(b"root:pw").decode()},
        {"Authorization": "Basic not-base64!"},
    ],
)
async def test_mutating_routes_refuse_missing_or_wrong_credentials(
    api: Api, headers: dict[str, str]
) -> None:
    for method, path in (
        ("POST", "/restart"),
        ("POST", "/switchover"),
        ("POST", "/pause"),
        ("PATCH", "/config"),
        ("DELETE", "/switchover"),
    ):
        response = await api.client.request(method, path, headers=headers, json={})
        assert response.status == 401, (method, path)
        assert "authentication" in (await response.json())["error"]
        challenges = response.headers.getall("WWW-Authenticate")
        assert any(c.startswith("Bearer") for c in challenges)
        assert any(c.startswith("Basic") for c in challenges)
    assert api.inbox.submitted == []
    assert api.writes() == 0


async def test_mutating_routes_accept_the_bearer_token_and_basic_credentials(api: Api) -> None:
    basic = {"Authorization": "Basic " + base64.b64encode(b"admin:pw").decode()}
    assert (await api.client.post("/restart", headers=AUTH)).status == 202
    assert (await api.client.post("/restart", headers=basic)).status == 202
    assert api.inbox.submitted == [LocalRequestKind.RESTART] * 2


async def test_insecure_no_auth_lets_mutating_requests_through(api: Api) -> None:
    open_api = await serve(
        make_settings(ApiSettings(insecure_no_auth=True)), api.backend, api.status, api.clock
    )
    try:
        assert (await open_api.client.post("/restart")).status == 202
        assert open_api.inbox.submitted == [LocalRequestKind.RESTART]
    finally:
        await open_api.client.close()


async def test_without_configured_credentials_nothing_mutates(api: Api) -> None:
    bare = await serve(make_settings(ApiSettings()), api.backend, api.status, api.clock)
    try:
        assert (await bare.client.post("/restart", headers=AUTH)).status == 401
        assert bare.inbox.submitted == []
    finally:
        await bare.client.close()


async def test_read_only_routes_need_no_credentials(api: Api) -> None:
    for path in ("/health", "/cluster", "/history", "/config", "/metrics", "/primary"):
        assert (await api.client.get(path)).status == 200, path


# --------------------------------------------------------------------------- switchover


async def test_a_valid_switchover_writes_exactly_the_request_and_wakes_the_loop(api: Api) -> None:
    response = await api.client.post(
        "/switchover", json={"leader": "a", "candidate": "b"}, headers=AUTH
    )
    assert response.status == 202
    assert await response.json() == {
        "accepted": True,
        "leader": "a",
        "candidate": "b",
        "scheduled_at": None,
    }
    assert await switchover_record(api) == {"leader": "a", "candidate": "b", "scheduled_at": None}
    assert api.writes() == 1
    assert api.inbox.wakes == 1


async def test_a_switchover_without_candidate_leaves_the_choice_to_the_agents(api: Api) -> None:
    response = await api.client.post("/switchover", headers=AUTH)
    assert response.status == 202
    assert await switchover_record(api) == {"leader": "a", "candidate": None, "scheduled_at": None}


async def test_a_scheduled_switchover_records_the_time_as_an_epoch(api: Api) -> None:
    at = datetime.fromtimestamp(api.clock.wall() + 3600, tz=UTC).isoformat()
    response = await api.client.post(
        "/switchover", json={"candidate": "b", "scheduled_at": at}, headers=AUTH
    )
    assert response.status == 202
    assert (await response.json())["scheduled_at"] == at
    record = await switchover_record(api)
    assert record == {"leader": "a", "candidate": "b", "scheduled_at": api.clock.wall() + 3600}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ("{not json", 400, "body"),
        ("[1, 2]", 400, "body"),
        ('"b"', 400, "body"),
        ('{"candidate": "b", "colour": "red"}', 400, "colour"),
        ('{"candidate": 7}', 400, "candidate"),
        ('{"candidate": ""}', 400, "candidate"),
        ('{"leader": ["a"]}', 400, "leader"),
        ('{"candidate": "zz"}', 400, "candidate"),
        ('{"leader": "zz"}', 400, "leader"),
        ('{"leader": "b"}', 409, "leader"),
        ('{"candidate": "a"}', 409, "candidate"),
        ('{"candidate": "c"}', 409, "candidate"),
        ('{"candidate": "d"}', 409, "candidate"),
        ('{"candidate": "e"}', 409, "candidate"),
        ('{"scheduled_at": "tomorrow"}', 400, "scheduled_at"),
        ('{"scheduled_at": 1900000000}', 400, "scheduled_at"),
        ('{"scheduled_at": "2035-01-01T00:00:00"}', 400, "scheduled_at"),
        ('{"scheduled_at": "2001-01-01T00:00:00+00:00"}', 400, "scheduled_at"),
    ],
)
async def test_a_bad_switchover_is_refused_naming_the_field_and_changes_nothing(
    api: Api, body: str, status: int, field: str
) -> None:
    response = await api.client.post(
        "/switchover", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status == status
    error = (await response.json())["error"]
    assert error.startswith(f"{field}:"), error
    assert await switchover_record(api) is None
    assert api.writes() == 0
    assert api.inbox.wakes == 0


async def test_a_switchover_needs_a_leader(api: Api) -> None:
    await api.backend.release("a")
    response = await api.client.post("/switchover", json={"candidate": "b"}, headers=AUTH)
    assert response.status == 409
    assert "no leader" in (await response.json())["error"]
    assert await switchover_record(api) is None


async def test_a_switchover_without_candidate_needs_an_eligible_member(api: Api) -> None:
    api.backend.remove_member("b")
    response = await api.client.post("/switchover", json={}, headers=AUTH)
    assert response.status == 409
    error = (await response.json())["error"]
    assert error.startswith("candidate: no member is eligible")
    assert "c is tagged nofailover" in error
    assert await switchover_record(api) is None


async def test_a_second_switchover_is_refused_while_one_is_pending(api: Api) -> None:
    api.backend.put_record(RecordKind.SWITCHOVER, json.dumps({"leader": "a", "candidate": "d"}))
    response = await api.client.post("/switchover", json={"candidate": "b"}, headers=AUTH)
    assert response.status == 409
    assert "pending" in (await response.json())["error"]
    assert await switchover_record(api) == {"leader": "a", "candidate": "d"}


async def test_a_switchover_that_loses_the_write_race_answers_409(api: Api) -> None:
    api.backend.handle("a").faults.lose_races = 1  # another member's request lands first
    response = await api.client.post("/switchover", json={"candidate": "b"}, headers=AUTH)
    assert response.status == 409
    assert (await response.json())["error"] == "switchover: another request is pending"
    assert await switchover_record(api) is None
    assert api.inbox.wakes == 0


async def test_requests_answer_503_when_the_dcs_is_unavailable(api: Api) -> None:
    api.backend.store.faults.unavailable = True
    for method, path, body in (
        ("POST", "/switchover", {"candidate": "b"}),
        ("POST", "/failover", {"candidate": "b"}),
        ("POST", "/pause", None),
        ("GET", "/config", None),
    ):
        response = await api.client.request(method, path, json=body, headers=AUTH)
        assert response.status == 503, path
        assert "DCS" in (await response.json())["error"]


async def test_a_scheduled_switchover_can_be_cancelled(api: Api) -> None:
    at = api.clock.wall() + 600
    api.backend.put_record(
        RecordKind.SWITCHOVER, json.dumps({"leader": "a", "candidate": "b", "scheduled_at": at})
    )
    response = await api.client.delete("/switchover", headers=AUTH)
    assert response.status == 200
    assert (await response.json())["cancelled"] is True
    assert await switchover_record(api) is None
    assert api.inbox.wakes == 1


async def test_an_immediate_switchover_cannot_be_cancelled(api: Api) -> None:
    api.backend.put_record(RecordKind.SWITCHOVER, json.dumps({"leader": "a", "candidate": "b"}))
    response = await api.client.delete("/switchover", headers=AUTH)
    assert response.status == 409
    assert await switchover_record(api) == {"leader": "a", "candidate": "b"}


async def test_cancelling_without_a_pending_switchover_answers_404(api: Api) -> None:
    response = await api.client.delete("/switchover", headers=AUTH)
    assert response.status == 404
    assert (await response.json())["error"].startswith("switchover:")


# --------------------------------------------------------------------------- failover


async def test_a_failover_without_leader_names_only_the_candidate(api: Api) -> None:
    await api.backend.release("a")
    response = await api.client.post("/failover", json={"candidate": "e"}, headers=AUTH)
    assert response.status == 409  # e is stopped
    response = await api.client.post("/failover", json={"candidate": "d"}, headers=AUTH)
    assert response.status == 202  # lag is not checked: the leader may be gone
    assert await switchover_record(api) == {"leader": None, "candidate": "d", "scheduled_at": None}
    assert api.inbox.wakes == 1


async def test_a_failover_with_a_leader_records_that_leader(api: Api) -> None:
    response = await api.client.post("/failover", json={"candidate": "b"}, headers=AUTH)
    assert response.status == 202
    assert await switchover_record(api) == {"leader": "a", "candidate": "b", "scheduled_at": None}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({}, 400, "candidate"),
        ({"candidate": None}, 400, "candidate"),
        ({"candidate": "b", "leader": "a"}, 400, "leader"),
        ({"candidate": "zz"}, 400, "candidate"),
        ({"candidate": "a"}, 409, "candidate"),
        ({"candidate": "c"}, 409, "candidate"),
        ({"candidate": "e"}, 409, "candidate"),
    ],
)
async def test_a_bad_failover_is_refused_and_changes_nothing(
    api: Api, body: dict[str, object], status: int, field: str
) -> None:
    response = await api.client.post("/failover", json=body, headers=AUTH)
    assert response.status == status
    assert (await response.json())["error"].startswith(f"{field}:")
    assert await switchover_record(api) is None
    assert api.inbox.wakes == 0


async def test_a_failover_is_refused_while_a_request_is_pending(api: Api) -> None:
    api.backend.put_record(RecordKind.SWITCHOVER, json.dumps({"leader": "a", "candidate": "d"}))
    response = await api.client.post("/failover", json={"candidate": "b"}, headers=AUTH)
    assert response.status == 409
    assert await switchover_record(api) == {"leader": "a", "candidate": "d"}


# --------------------------------------------------------------------------- config, pause


async def paused_in_record(api: Api) -> object:
    record = await config_record(api)
    return record.get("paused") if isinstance(record, dict) else None


async def test_pause_and_resume_write_the_config_record(api: Api) -> None:
    assert (await (await api.client.get("/config")).json())["paused"] is False
    response = await api.client.post("/pause", headers=AUTH)
    assert response.status == 200
    assert (await response.json())["paused"] is True
    assert await paused_in_record(api) is True
    assert (await (await api.client.get("/config")).json())["paused"] is True
    assert api.inbox.wakes == 1
    assert (await api.client.post("/resume", headers=AUTH)).status == 200
    assert await paused_in_record(api) is False
    assert api.inbox.wakes == 2


async def test_patch_config_sets_paused(api: Api) -> None:
    response = await api.client.patch("/config", json={"paused": True}, headers=AUTH)
    assert response.status == 200
    assert await paused_in_record(api) is True


async def test_setting_paused_to_its_present_value_writes_nothing(api: Api) -> None:
    assert (await api.client.post("/resume", headers=AUTH)).status == 200
    assert api.writes() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"paused": "yes"}', "paused"),
        ('{"paused": 1}', "paused"),
        ("{}", "body"),
        ('{"paused": true, "ttl": 5}', "ttl"),
        ("true", "body"),
        ("", "body"),
    ],
)
async def test_a_bad_config_patch_is_refused_and_changes_nothing(
    api: Api, body: str, field: str
) -> None:
    response = await api.client.patch(
        "/config", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["error"].startswith(f"{field}:")
    assert await config_record(api) is None


async def test_a_config_change_that_loses_the_write_race_answers_409(api: Api) -> None:
    api.backend.put_record(RecordKind.CONFIG, json.dumps({"paused": False}))
    api.backend.handle("a").faults.lose_races = 1  # another member's change lands first
    response = await api.client.post("/pause", headers=AUTH)
    assert response.status == 409
    assert await paused_in_record(api) is False


# --------------------------------------------------------------------------- local requests


async def test_restart_is_queued_for_the_ha_loop(api: Api) -> None:
    response = await api.client.post("/restart", headers=AUTH)
    assert response.status == 202
    assert await response.json() == {"accepted": True, "request": "restart"}
    assert api.inbox.submitted == [LocalRequestKind.RESTART]


async def test_reinitialize_is_queued_on_a_replica(api: Api) -> None:
    api.status.value = replica_status(api.clock)
    assert (await api.client.post("/reinitialize", headers=AUTH)).status == 202
    assert api.inbox.submitted == [LocalRequestKind.REINITIALIZE]


async def test_reinitialize_is_refused_on_the_leader(api: Api) -> None:
    response = await api.client.post("/reinitialize", headers=AUTH)
    assert response.status == 409
    assert (await response.json())["error"].startswith("reinitialize:")
    assert api.inbox.submitted == []


async def test_a_local_request_with_unknown_fields_is_refused(api: Api) -> None:
    response = await api.client.post("/restart", json={"force": True}, headers=AUTH)
    assert response.status == 400
    assert (await response.json())["error"].startswith("force:")
    assert api.inbox.submitted == []


# --------------------------------------------------------------------------- errors


async def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    response = await api.client.get("/nope")
    assert response.status == 404
    assert response.content_type == "application/json"
    assert "error" in await response.json()
    response = await api.client.post("/nope")  # no credentials: the route does not exist
    assert response.status == 404
    response = await api.client.get("/switchover")
    assert response.status == 405
    assert "error" in await response.json()
    assert "POST" in response.headers["Allow"]


async def test_head_is_served_by_every_get_route_without_a_body(api: Api) -> None:
    get = await api.client.get("/cluster")
    head = await api.client.head("/cluster")
    assert head.status == 200
    assert head.headers["Content-Length"] == get.headers["Content-Length"] != "0"
    # The same kept-alive connection serves the next request: no body followed the head.
    assert await (await api.client.get("/cluster")).json() == await get.json()
    assert (await api.client.head("/switchover")).status == 405  # POST and DELETE only


async def test_an_oversized_body_is_refused_with_json(api: Api) -> None:
    response = await api.client.post("/switchover", data=b"x" * 100_000, headers=AUTH)
    assert response.status == 413
    assert "error" in await response.json()
    assert await switchover_record(api) is None


async def test_an_internal_error_answers_500_with_json(api: Api) -> None:
    def broken() -> AgentStatus:
        raise RuntimeError("boom")

    app = build_app(
        settings=make_settings(),
        status=broken,
        dcs=api.backend.handle("a"),
        requests=Inbox(),
        metrics=Metrics(),
        clock=api.clock,
    )
    async with await Served.start(app) as client:
        response = await client.get("/health")
        assert response.status == 500
        assert "boom" not in (await response.json())["error"]


# --------------------------------------------------------------------------- metrics route


async def test_metrics_are_served_in_the_prometheus_text_format(api: Api) -> None:
    api.metrics.update(api.status.value)
    response = await api.client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    assert families["pgwarden_lease_held"].samples[0].value == 1
    roles = {s.labels["role"]: s.value for s in families["pgwarden_role"].samples}
    assert roles["primary"] == 1
    assert roles["replica"] == 0


# --------------------------------------------------------------------------- serving


async def test_start_api_serves_on_the_configured_loopback_port(api: Api) -> None:
    settings = ApiSettings(listen_host="127.0.0.1", port=free_port(), insecure_no_auth=True)
    app = build_app(
        settings=make_settings(settings),
        status=api.status,
        dcs=api.backend.handle("a"),
        requests=Inbox(),
        metrics=Metrics(),
        clock=api.clock,
    )
    server = await start_api(app, settings)
    try:
        async with ClientSession() as session, session.get(settings.url + "/liveness") as resp:
            assert resp.status == 200
            assert (await resp.json())["name"] == "a"
    finally:
        await server.close()


async def test_start_api_fails_cleanly_when_the_port_is_taken(api: Api) -> None:
    settings = ApiSettings(listen_host="127.0.0.1", port=api.client.port)
    app = build_app(
        settings=make_settings(settings),
        status=api.status,
        dcs=api.backend.handle("a"),
        requests=Inbox(),
        metrics=Metrics(),
        clock=api.clock,
    )
    with pytest.raises(OSError):
        await start_api(app, settings)


# --------------------------------------------------------------------------- failsafe


def failsafe_body(api: Api, **changes: object) -> dict[str, object]:
    return {"leader": "x", "cluster": "demo", "sent_at": api.clock.wall(), **changes}


async def test_failsafe_confirmation_is_handed_to_the_ha_loop_and_answered(api: Api) -> None:
    response = await api.client.post("/failsafe", json=failsafe_body(api), headers=AUTH)
    assert response.status == 200
    answer = await response.json()
    assert answer["accepted"] is True and answer["leader"] == "x"
    assert answer["promise_s"] == 10.0
    assert api.inbox.failsafe_asks == ["x"]


async def test_failsafe_refused_by_the_ha_loop_answers_409_with_the_reason(api: Api) -> None:
    api.inbox.failsafe_refusal = "this member runs a primary"
    response = await api.client.post("/failsafe", json=failsafe_body(api), headers=AUTH)
    assert response.status == 409
    assert (await response.json())["error"] == "failsafe: this member runs a primary"


async def test_a_failsafe_request_delivered_late_is_refused_and_promises_nothing(
    api: Api,
) -> None:
    """A request kept in TCP retransmission while the network was cut arrives long after its
    sender stopped waiting (found by the chaos suite, docs/chaos.md finding 4)."""
    stale = failsafe_body(api, sent_at=api.clock.wall() - 6.0)  # more than ttl/2 ago
    response = await api.client.post("/failsafe", json=stale, headers=AUTH)
    assert response.status == 409
    assert "stale" in (await response.json())["error"]
    assert api.inbox.failsafe_asks == []
    recent = failsafe_body(api, sent_at=api.clock.wall() - 4.0)
    assert (await api.client.post("/failsafe", json=recent, headers=AUTH)).status == 200


@pytest.mark.parametrize("step_s", [3600.0, -3600.0])
async def test_a_failsafe_request_from_a_member_whose_wall_clock_was_stepped_is_refused(
    api: Api, step_s: float
) -> None:
    """The sender's wall clock an hour ahead (or behind) of ours: how late its request is
    cannot be told, so it is not confirmed (the sender demotes at its deadline instead)."""
    body = failsafe_body(api, sent_at=api.clock.wall() + step_s)
    response = await api.client.post("/failsafe", json=body, headers=AUTH)
    assert response.status == 409
    assert "clocks apart" in (await response.json())["error"]
    assert api.inbox.failsafe_asks == []


@pytest.mark.parametrize(
    ("changes", "status", "field"),
    [
        ({"leader": None}, 400, "leader:"),
        ({"leader": ""}, 400, "leader:"),
        ({"leader": 3}, 400, "leader:"),
        ({"cluster": "other"}, 409, "cluster:"),
        ({"cluster": None}, 409, "cluster:"),
        ({"sent_at": None}, 400, "sent_at:"),
        ({"sent_at": "now"}, 400, "sent_at:"),
        ({"sent_at": True}, 400, "sent_at:"),
        ({"until": 5}, 400, "until:"),
    ],
)
async def test_a_bad_failsafe_request_is_refused_and_promises_nothing(
    api: Api, changes: dict[str, object], status: int, field: str
) -> None:
    body = {k: v for k, v in failsafe_body(api, **changes).items() if v is not None}
    response = await api.client.post("/failsafe", json=body, headers=AUTH)
    assert response.status == status
    assert (await response.json())["error"].startswith(field)
    assert api.inbox.failsafe_asks == []


async def test_failsafe_needs_credentials_like_every_mutating_request(api: Api) -> None:
    response = await api.client.post("/failsafe", json=failsafe_body(api))
    assert response.status == 401
    assert api.inbox.failsafe_asks == []
