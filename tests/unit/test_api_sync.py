"""The API's synchronous-replication parts: PATCH /config validation, the /sync, /quorum and
/async probes, and switchover/failover refused to members outside the recorded set."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import pytest

from agent.clock import FakeClock
from agent.model import AgentStatus, MemberName, PgState, RecordKind, SyncRole
from tests.unit.api_harness import (
    AUTH,
    Api,
    config_record,
    primary_status,
    replica_status,
    switchover_record,
)


async def test_patch_config_sets_the_synchronous_settings_and_keeps_the_others(api: Api) -> None:
    api.backend.put_record(RecordKind.CONFIG, json.dumps({"paused": True}))
    body = {
        "synchronous_mode": "quorum",
        "synchronous_node_count": 2,
        "synchronous_mode_strict": True,
        "maximum_lag_on_syncnode_bytes": 4096,
    }
    response = await api.client.patch("/config", json=body, headers=AUTH)
    assert response.status == 200
    assert await config_record(api) == {**body, "paused": True, "failsafe_mode": False}
    assert (await (await api.client.get("/config")).json()) == {
        **body,
        "paused": True,
        "failsafe_mode": False,
        "postgresql": {"parameters": {}, "pg_hba": []},
    }
    assert api.inbox.wakes == 1


async def test_patch_config_accepts_json_booleans_for_the_mode(api: Api) -> None:
    response = await api.client.patch("/config", json={"synchronous_mode": True}, headers=AUTH)
    assert response.status == 200
    record = await config_record(api)
    assert isinstance(record, dict) and record["synchronous_mode"] == "on"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"synchronous_mode": "always"}, "synchronous_mode"),
        ({"synchronous_mode": 1}, "synchronous_mode"),
        ({"synchronous_node_count": 0}, "synchronous_node_count"),
        ({"synchronous_node_count": "2"}, "synchronous_node_count"),
        ({"synchronous_node_count": True}, "synchronous_node_count"),
        ({"synchronous_mode_strict": "yes"}, "synchronous_mode_strict"),
        ({"maximum_lag_on_syncnode_bytes": -2}, "maximum_lag_on_syncnode_bytes"),
        ({"synchronous_mode": "on", "sync_mode": "on"}, "sync_mode"),
    ],
)
async def test_a_bad_synchronous_setting_is_refused_and_changes_nothing(
    api: Api, body: dict[str, object], field: str
) -> None:
    response = await api.client.patch("/config", json=body, headers=AUTH)
    assert response.status == 400
    assert (await response.json())["error"].startswith(f"{field}:")
    assert await config_record(api) is None
    assert api.writes() == 0


async def test_patch_config_that_loses_the_race_answers_409(api: Api) -> None:
    api.backend.put_record(RecordKind.CONFIG, json.dumps({"paused": False}))
    api.backend.handle("a").faults.lose_races = 1
    response = await api.client.patch("/config", json={"synchronous_mode": "on"}, headers=AUTH)
    assert response.status == 409
    record = await config_record(api)
    assert isinstance(record, dict) and "synchronous_mode" not in record


def sync_replica(role: SyncRole) -> Callable[[FakeClock], AgentStatus]:
    return lambda c: replica_status(c, sync_role=role)


@pytest.mark.parametrize(
    ("path", "make", "expected"),
    [
        ("/sync", sync_replica(SyncRole.SYNC), 200),
        ("/synchronous", sync_replica(SyncRole.QUORUM), 200),
        ("/sync", sync_replica(SyncRole.ASYNC), 503),
        ("/sync", primary_status, 503),
        ("/sync", lambda c: replica_status(c, sync_role=SyncRole.SYNC, state=PgState.RUNNING), 503),
        ("/quorum", sync_replica(SyncRole.QUORUM), 200),
        ("/quorum", sync_replica(SyncRole.SYNC), 503),
        ("/async", sync_replica(SyncRole.ASYNC), 200),
        ("/asynchronous", sync_replica(SyncRole.SYNC), 503),
        ("/async", primary_status, 503),
    ],
)
async def test_sync_probes_answer_by_synchronous_role(
    api: Api, path: str, make: Callable[[FakeClock], AgentStatus], expected: int
) -> None:
    api.status.value = make(api.clock)
    response = await api.client.get(path)
    assert response.status == expected
    assert (await response.json())["sync_role"] == api.status.value.sync_role.value


async def test_sync_probe_applies_the_lag_limit(api: Api) -> None:
    api.status.value = replica_status(api.clock, sync_role=SyncRole.SYNC, lag_bytes=5000)
    assert (await api.client.get("/sync?lag=1kB")).status == 503
    assert (await api.client.get("/sync?lag=1MB")).status == 200


def _sync_record(api: Api, *members: str) -> None:
    api.backend.put_record(
        RecordKind.SYNC, json.dumps({"leader": "a", "members": list(members), "quorum": 1})
    )


async def test_switchover_to_a_member_outside_the_synchronous_set_is_refused(api: Api) -> None:
    _sync_record(api, "d")
    response = await api.client.post("/switchover", json={"candidate": "b"}, headers=AUTH)
    assert response.status == 409
    assert "not a synchronous standby" in (await response.json())["error"]
    assert await switchover_record(api) is None


async def test_switchover_to_a_synchronous_standby_is_accepted(api: Api) -> None:
    _sync_record(api, "b")
    response = await api.client.post("/switchover", json={"candidate": "b"}, headers=AUTH)
    assert response.status == 202


async def test_failover_to_a_member_outside_the_synchronous_set_is_refused(api: Api) -> None:
    _sync_record(api, "d")
    response = await api.client.post("/failover", json={"candidate": "b"}, headers=AUTH)
    assert response.status == 409
    assert await switchover_record(api) is None


async def test_an_asynchronous_record_restricts_nothing(api: Api) -> None:
    api.backend.put_record(RecordKind.SYNC, json.dumps({"leader": "a", "members": [], "quorum": 0}))
    response = await api.client.post("/switchover", json={"candidate": "b"}, headers=AUTH)
    assert response.status == 202


async def test_cluster_view_shows_the_sync_record_and_roles(api: Api) -> None:
    _sync_record(api, "b")
    current = (await api.view()).leader_member
    assert current is not None
    leader = replace(current, sync_standbys=(MemberName("b"),))
    await api.backend.publish(leader)
    api.status.value = primary_status(api.clock, await api.view())
    body = await (await api.client.get("/cluster")).json()
    assert body["sync"] == {"leader": "a", "members": ["b"], "quorum": 1}
    roles = {m["name"]: m["sync_role"] for m in body["members"]}
    assert roles["a"] == "leader" and roles["b"] == "sync" and roles["d"] == "async"
