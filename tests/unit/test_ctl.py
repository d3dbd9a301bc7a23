"""`pgwarden ctl`: the pure renderers, and the commands against an in-process API."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace

import pytest

from agent.api import build_app
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
from agent.ctl import main, run
from agent.ctl_render import render_history, render_table
from agent.dcs import keys
from agent.dcs.memory import MemoryDcs, MemoryStore
from agent.metrics import Metrics
from agent.model import (
    AgentStatus,
    LocalRequestKind,
    Member,
    MemberName,
    PgState,
    RecordKind,
    Role,
)
from tests.support.ports import free_port
from tests.support.served import Served

TOKEN = "ctl-token"
MIB = 1024 * 1024

CLUSTER = {
    "cluster": "demo",
    "leader": "pg-0",
    "paused": False,
    "switchover": None,
    "members": [
        {
            "name": "pg-0",
            "host": "10.0.0.1",
            "port": 5432,
            "role": "primary",
            "state": "running",
            "timeline": 12,
            "lag_bytes": 0,
            "leader": True,
        },
        {
            "name": "pg-1",
            "host": "10.0.0.2",
            "port": 5432,
            "role": "replica",
            "state": "streaming",
            "timeline": 12,
            "lag_bytes": 3 * MIB,
            "leader": False,
            "pending_restart": ["shared_buffers"],
        },
        {
            "name": "pg-22",
            "host": "10.0.0.3",
            "port": 5433,
            "role": "replica",
            "state": "stopped",
            "timeline": None,
            "lag_bytes": None,
            "leader": False,
        },
    ],
}


def test_render_table_lays_out_members_like_patronictl() -> None:
    assert render_table(CLUSTER) == "\n".join(
        [
            "Cluster: demo (leader: pg-0)",
            "+--------+---------------+---------+-----------+----+-----------+-----------------+",
            "| Member | Host          | Role    | State     | TL | Lag in MB | Pending restart |",
            "+--------+---------------+---------+-----------+----+-----------+-----------------+",
            "| pg-0   | 10.0.0.1:5432 | Leader  | running   | 12 |           |                 |",
            "| pg-1   | 10.0.0.2:5432 | Replica | streaming | 12 |         3 | *               |",
            "| pg-22  | 10.0.0.3:5433 | Replica | stopped   |    |   unknown |                 |",
            "+--------+---------------+---------+-----------+----+-----------+-----------------+",
        ]
    )


def test_render_table_shows_a_pending_switchover_and_maintenance_mode() -> None:
    cluster = {
        **CLUSTER,
        "leader": None,
        "paused": True,
        "switchover": {
            "leader": None,
            "candidate": "pg-1",
            "scheduled_at": "2030-01-01T03:00:00+00:00",
        },
    }
    lines = render_table(cluster).splitlines()
    assert lines[0] == "Cluster: demo (no leader)"
    assert lines[-2] == (
        "Switchover pending: (no leader) -> pg-1, scheduled at 2030-01-01T03:00:00+00:00"
    )
    assert lines[-1].startswith("Maintenance mode: on")


def test_render_table_survives_an_odd_cluster_object() -> None:
    text = render_table({"members": [None, {"name": "x"}]})
    assert text.splitlines()[0] == "Cluster: ? (no leader)"
    assert "| x      | ?    | Unknown | unknown |    |   unknown |" in text


def test_render_table_of_a_cluster_without_members_shows_the_header() -> None:
    lines = render_table({"cluster": "demo", "leader": None, "members": []}).splitlines()
    assert lines[0] == "Cluster: demo (no leader)"
    assert lines[2] == "| Member | Host | Role | State | TL | Lag in MB | Pending restart |"
    assert len(lines) == 5


def test_render_history_lists_timeline_switches() -> None:
    history = {
        "history": [
            {
                "timeline": 1,
                "switch_lsn": 83886176,
                "switch_lsn_text": "0/5000060",
                "reason": "failover",
                "at": "2026-11-28T00:00:00+00:00",
                "new_leader": "pg-1",
            },
        ]
    }
    assert render_history(history).splitlines()[3] == (
        "|  1 | 0/5000060 | failover | 2026-11-28T00:00:00+00:00 | pg-1       |"
    )
    assert render_history({"history": []}) == "No timeline switch recorded."


# --------------------------------------------------------------------------- against the API


@dataclass
class Node:
    """One member's API served in-process, with what it was asked to do."""

    url: str
    store: MemoryStore
    clock: FakeClock
    status: AgentStatus
    handles: dict[str, MemoryDcs] = field(default_factory=dict)
    submitted: list[LocalRequestKind] = field(default_factory=list)
    wakes: int = 0

    def submit(self, kind: LocalRequestKind) -> None:
        self.submitted.append(kind)

    def wake(self) -> None:
        self.wakes += 1

    def accept_failsafe(self, leader: str) -> str | None:
        return "ctl tests never confirm a failsafe primary"

    def handle(self, name: str) -> MemoryDcs:
        if name not in self.handles:
            self.handles[name] = MemoryDcs(self.store, name, ttl_s=10.0, clock=self.clock)
        return self.handles[name]

    def record(self, kind: RecordKind) -> object:
        raw = self.store.get_raw(keys.record_key(kind))
        return None if raw is None else json.loads(raw)

    async def refresh(self, leader: str | None = None) -> None:
        """The HA loop's part: publish a status with the DCS's current view."""
        if leader is not None:
            await self.handle("a").release_leader()
            assert await self.handle(leader).acquire_leader()
        view = await self.handle("a").get_cluster()
        self.status = replace(self.status, cluster_view=view, observed_at=self.clock.monotonic())

    async def ctl(
        self,
        *argv: str,
        env: dict[str, str] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        ask: str = "y",
        asked: list[str] | None = None,
    ) -> tuple[int, str, str]:
        """Run `pgwarden ctl argv` against this node; no real sleeping (the clock is fake)."""
        out, err = io.StringIO(), io.StringIO()

        async def no_sleep(seconds: float) -> None:
            self.clock.advance(seconds)

        code = await run(
            argv,
            env=env if env is not None else {"PGWARDEN_URL": self.url, "PGWARDEN_TOKEN": TOKEN},
            out=out,
            err=err,
            sleep=sleep or no_sleep,
            monotonic=self.clock.monotonic,
            ask=lambda prompt: _answer(prompt, ask, asked),
        )
        return code, out.getvalue(), err.getvalue()


def _answer(prompt: str, answer: str, asked: list[str] | None) -> str:
    if asked is not None:
        asked.append(prompt)
    return answer


def _member(name: str, role: Role, state: PgState, lsn: int) -> Member:
    return Member(
        name=MemberName(name),
        role=role,
        state=state,
        api_url="http://x",
        host="127.0.0.1",
        port=5432,
        timeline=2,
        wal_lsn=lsn,
    )


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    clock = FakeClock()
    store = MemoryStore(clock)
    dcs = MemoryDcs(store, "a", ttl_s=10.0, clock=clock)
    await dcs.publish_member(_member("a", Role.PRIMARY, PgState.RUNNING, 5 * MIB))
    assert await dcs.acquire_leader()
    other = MemoryDcs(store, "b", ttl_s=10.0, clock=clock)
    await other.publish_member(_member("b", Role.REPLICA, PgState.STREAMING, 5 * MIB - 100))
    status = AgentStatus(
        name=MemberName("a"),
        cluster="demo",
        role=Role.PRIMARY,
        state=PgState.RUNNING,
        api_url="",
        leader=MemberName("a"),
        lease_held=True,
    )
    settings = Settings(
        name="a",
        cluster="demo",
        run_dir="/nonexistent",
        dcs=DcsSettings(kind=DcsKind.ETCD, etcd=EtcdSettings(endpoints=("http://127.0.0.1:1",))),
        postgresql=PostgresSettings(data_dir="/nonexistent"),
        api=ApiSettings(token=Secret(TOKEN)),
    )
    holder: list[Node] = []
    app = build_app(
        settings=settings,
        status=lambda: holder[0].status,
        dcs=dcs,
        requests=_Forward(holder),
        metrics=Metrics(),
        clock=clock,
    )
    server = await Served.start(app)
    try:
        n = Node(
            url=server.url,
            store=store,
            clock=clock,
            status=status,
            handles={"a": dcs, "b": other},
        )
        holder.append(n)
        await n.refresh()
        yield n
    finally:
        await server.close()


@dataclass
class _Forward:
    holder: list[Node]

    def submit(self, kind: LocalRequestKind) -> None:
        self.holder[0].submit(kind)

    def wake(self) -> None:
        self.holder[0].wake()

    def accept_failsafe(self, leader: str) -> str | None:
        return self.holder[0].accept_failsafe(leader)


async def test_list_prints_the_cluster_table(node: Node) -> None:
    code, out, err = await node.ctl("list")
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "Cluster: demo (leader: a)"
    assert "| a      | 127.0.0.1:5432 | Leader  | running   |  2 |           |" in out
    assert "| b      | 127.0.0.1:5432 | Replica | streaming |  2 |         0 |" in out


async def test_list_json_prints_the_cluster_object(node: Node) -> None:
    code, out, _ = await node.ctl("list", "--json")
    assert code == 0
    body = json.loads(out)
    assert body["leader"] == "a"
    assert [m["name"] for m in body["members"]] == ["a", "b"]


async def test_an_unreachable_url_is_skipped(node: Node) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    code, out, _ = await node.ctl("--url", dead, "--url", node.url, "list", env={})
    assert code == 0
    assert out.startswith("Cluster: demo")


async def test_no_reachable_member_exits_1_with_a_clear_message(node: Node) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    code, out, err = await node.ctl("list", "--url", dead, env={})
    assert (code, out) == (1, "")
    assert err.startswith("Error: no member reachable: " + dead)


async def test_switchover_writes_the_request_and_reports_it(node: Node) -> None:
    code, out, err = await node.ctl("switchover", "--candidate", "b")
    assert (code, err) == (0, "")
    assert out.strip() == "Switchover accepted: a -> b"
    assert node.record(RecordKind.SWITCHOVER) == {
        "leader": "a",
        "candidate": "b",
        "scheduled_at": None,
    }


async def test_a_refused_request_prints_the_api_error_and_exits_1(node: Node) -> None:
    code, out, err = await node.ctl("switchover", "--candidate", "zz")
    assert (code, out) == (1, "")
    assert err.startswith("Error: candidate: no member named 'zz'")
    assert node.record(RecordKind.SWITCHOVER) is None


async def test_without_credentials_a_mutating_command_exits_1(node: Node) -> None:
    code, _, err = await node.ctl("pause", env={"PGWARDEN_URL": node.url})
    assert code == 1
    assert "authentication required" in err
    assert node.record(RecordKind.CONFIG) is None


async def test_switchover_wait_returns_once_the_leader_changed(node: Node) -> None:
    polls = []

    async def cluster_moves_on(seconds: float) -> None:
        polls.append(seconds)
        node.clock.advance(seconds)
        if len(polls) == 2:  # the loop completes the switchover after a while
            await node.refresh(leader="b")

    code, out, err = await node.ctl(
        "switchover", "--candidate", "b", "--wait", "--timeout", "30", sleep=cluster_moves_on
    )
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "New leader: b"
    assert len(polls) == 2


async def test_switchover_wait_gives_up_after_the_timeout(node: Node) -> None:
    async def nothing_happens(seconds: float) -> None:
        node.clock.advance(seconds)

    code, _, err = await node.ctl("switchover", "--wait", "--timeout", "3", sleep=nothing_happens)
    assert code == 1
    assert "timed out after 3 s" in err


async def test_a_scheduled_switchover_can_be_cancelled(node: Node) -> None:
    code, out, _ = await node.ctl(
        "switchover", "--candidate", "b", "--scheduled", "2099-01-01T00:00:00+00:00"
    )
    assert code == 0
    assert out.strip() == "Switchover accepted: a -> b at 2099-01-01T00:00:00+00:00"
    assert node.record(RecordKind.SWITCHOVER) is not None
    code, out, _ = await node.ctl("cancel-switchover")
    assert (code, out.strip()) == (0, "Scheduled switchover cancelled.")
    assert node.record(RecordKind.SWITCHOVER) is None
    code, _, err = await node.ctl("cancel-switchover")
    assert code == 1
    assert err.startswith("Error: switchover: none is pending")


async def test_failover_names_the_candidate(node: Node) -> None:
    code, out, _ = await node.ctl("failover", "--candidate", "b", "--json")
    assert code == 0
    assert json.loads(out)["candidate"] == "b"
    assert node.record(RecordKind.SWITCHOVER) == {
        "leader": "a",
        "candidate": "b",
        "scheduled_at": None,
    }


def paused(node: Node) -> object:
    config = node.record(RecordKind.CONFIG)
    assert isinstance(config, dict)
    return config["paused"]


async def test_pause_and_resume(node: Node) -> None:
    assert (await node.ctl("pause"))[0] == 0
    assert paused(node) is True
    assert (await node.ctl("resume"))[0] == 0
    assert paused(node) is False


async def test_restart_schedules_a_rolling_restart_and_reinitialize_is_refused_on_the_leader(
    node: Node,
) -> None:
    code, out, _ = await node.ctl(
        "restart", "b", "--pending", "--scheduled", "2999-01-01T03:00:00+00:00"
    )
    assert code == 0, out
    assert out.startswith("Rolling restart of b scheduled at 2999-01-01T03:00:00")
    raw = node.store.get_raw("restart")
    assert raw is not None and json.loads(raw)["members"] == ["b"]
    assert json.loads(raw)["pending"] is True
    code, out, _ = await node.ctl("cancel-restart")
    assert (code, out.strip()) == (0, "Rolling restart cancelled.")
    assert node.store.get_raw("restart") is None
    code, _, err = await node.ctl("reinitialize")
    assert code == 1
    assert err.startswith("Error: reinitialize:")
    assert node.submitted == []


async def test_history_prints_a_table(node: Node) -> None:
    code, out, _ = await node.ctl("history")
    assert (code, out.strip()) == (0, "No timeline switch recorded.")


async def test_a_usage_error_exits_2(node: Node) -> None:
    assert (await node.ctl("failover"))[0] == 2
    assert (await node.ctl("frobnicate"))[0] == 2


def test_main_reports_an_unreachable_member_and_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGWARDEN_URL", raising=False)
    dead = f"http://127.0.0.1:{free_port()}"
    assert main(["list", "--url", dead]) == 1
    assert capsys.readouterr().err.startswith(f"Error: no member reachable: {dead}")


def test_render_table_names_the_members_a_failsafe_primary_relies_on() -> None:
    cluster = {
        **CLUSTER,
        "failsafe_mode": True,
        "failsafe": {"leader": "pg-0", "members": ["pg-1", "pg-2"]},
    }
    lines = render_table(cluster).splitlines()
    assert lines[-1] == (
        "Failsafe mode: on (a DCS outage is survived while pg-1, pg-2 confirm the primary)"
    )
    assert not any(line.startswith("Failsafe") for line in render_table(CLUSTER).splitlines())


def test_render_table_lists_a_scheduled_rolling_restart() -> None:
    cluster = {
        **CLUSTER,
        "restart": {
            "members": ["pg-1", "pg-22"],
            "scheduled_at": "2030-01-01T03:00:00+00:00",
            "pending": True,
            "in_place": False,
            "done": ["pg-1"],
            "current": None,
        },
    }
    assert render_table(cluster).splitlines()[-1] == (
        "Rolling restart of pg-1, pg-22 at 2030-01-01T03:00:00+00:00 (pending only); "
        "done: pg-1 (pgwarden ctl cancel-restart cancels it)"
    )
