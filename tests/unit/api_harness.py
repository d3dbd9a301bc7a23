"""The REST API's unit-test harness: an in-memory DCS with a standard cluster, hand-built
AgentStatus values, and the app served by agent/http/server.py on loopback with a FakeClock
(tests/support/served.py: an aiohttp client session calls it). The `api` fixture
(tests/unit/conftest.py) serves member a of the standard cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from agent.api import build_app
from agent.api.pgconfig import ConfigValidator
from agent.clock import FakeClock
from agent.config import (
    ApiSettings,
    Credentials,
    DcsKind,
    DcsSettings,
    EtcdSettings,
    HaSettings,
    PostgresSettings,
    Secret,
    Settings,
    Timing,
)
from agent.dcs import keys
from agent.dcs.memory import MemoryDcs, MemoryStore
from agent.metrics import Metrics
from agent.model import (
    AgentStatus,
    ClusterView,
    LocalRequestKind,
    Member,
    MemberName,
    MemberTags,
    PgState,
    RecordKind,
    Role,
)
from tests.support.served import Served

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIB = 1024 * 1024
LEADER_LSN = 0x3_0000_0000


# --------------------------------------------------------------------------- fakes


class Backend:
    """The memory DCS of one test cluster, with a handle per member (the API uses a's)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.store = MemoryStore(clock)
        self.handles: dict[str, MemoryDcs] = {}

    def handle(self, name: str) -> MemoryDcs:
        if name not in self.handles:
            self.handles[name] = MemoryDcs(self.store, name, ttl_s=10.0, clock=self.clock)
        return self.handles[name]

    async def publish(self, member: Member) -> None:
        await self.handle(member.name).publish_member(member)

    async def lead(self, name: str) -> None:
        assert await self.handle(name).acquire_leader()

    async def release(self, name: str) -> None:
        await self.handle(name).release_leader()

    def remove_member(self, name: str) -> None:
        self.store.delete_raw(keys.member_key(name))

    def put_record(self, kind: RecordKind, value: str) -> None:
        self.store.put_raw(keys.record_key(kind), value)

    def record(self, kind: RecordKind) -> object:
        """The record's JSON, or None when absent."""
        raw = self.store.get_raw(keys.record_key(kind))
        return None if raw is None else json.loads(raw)

    @property
    def revision(self) -> int:
        return self.store.revision


@dataclass
class Inbox:
    submitted: list[LocalRequestKind] = field(default_factory=list)
    wakes: int = 0
    failsafe_asks: list[str] = field(default_factory=list)
    failsafe_refusal: str | None = None

    def submit(self, kind: LocalRequestKind) -> None:
        self.submitted.append(kind)

    def wake(self) -> None:
        self.wakes += 1

    def accept_failsafe(self, leader: str) -> str | None:
        self.failsafe_asks.append(leader)
        return self.failsafe_refusal


@dataclass
class StatusBox:
    value: AgentStatus

    def __call__(self) -> AgentStatus:
        return self.value


def member(
    name: str,
    *,
    role: Role = Role.REPLICA,
    state: PgState = PgState.STREAMING,
    lag: int | None = 0,
    nofailover: bool = False,
    port: int = 5432,
) -> Member:
    return Member(
        name=MemberName(name),
        role=role,
        state=state,
        api_url=f"http://127.0.0.{port - 5430}:8008",
        host=f"127.0.0.{port - 5430}",
        port=port,
        timeline=3,
        wal_lsn=None if lag is None else LEADER_LSN - lag,
        tags=MemberTags(nofailover=nofailover),
    )


async def standard_cluster(backend: Backend) -> None:
    """a leads; b is a good candidate; c is nofailover; d lags 10 MiB; e is stopped."""
    await backend.publish(member("a", role=Role.PRIMARY, state=PgState.RUNNING, port=5431))
    await backend.publish(member("b", lag=1000, port=5432))
    await backend.publish(member("c", nofailover=True, port=5433))
    await backend.publish(member("d", lag=10 * MIB, port=5434))
    await backend.publish(member("e", state=PgState.STOPPED, lag=None, port=5435))
    await backend.lead("a")


def make_settings(api: ApiSettings | None = None) -> Settings:
    return Settings(
        name="a",
        cluster="demo",
        run_dir="/nonexistent/run",
        dcs=DcsSettings(kind=DcsKind.ETCD, etcd=EtcdSettings(endpoints=("http://127.0.0.1:1",))),
        postgresql=PostgresSettings(data_dir="/nonexistent/data"),
        api=api
        or ApiSettings(
            token=Secret(TOKEN), basic=Credentials(username="admin", password=Secret("pw"))
        ),
        timing=Timing(ttl_s=10.0),
        ha=HaSettings(maximum_lag_on_failover_bytes=MIB),
    )


def primary_status(clock: FakeClock, view: ClusterView | None = None) -> AgentStatus:
    return AgentStatus(
        name=MemberName("a"),
        cluster="demo",
        role=Role.PRIMARY,
        state=PgState.RUNNING,
        api_url="http://127.0.0.1:8008",
        timeline=3,
        wal_lsn=LEADER_LSN,
        leader=MemberName("a"),
        lease_held=True,
        lease_age_s=0.5,
        fence_remaining_s=6.0,
        dcs_ok=True,
        observed_at=clock.monotonic(),
        cluster_view=view,
    )


def replica_status(clock: FakeClock, **changes: object) -> AgentStatus:
    base = AgentStatus(
        name=MemberName("b"),
        cluster="demo",
        role=Role.REPLICA,
        state=PgState.STREAMING,
        api_url="http://127.0.0.2:8008",
        timeline=3,
        wal_lsn=LEADER_LSN - 1000,
        lag_bytes=1000,
        leader=MemberName("a"),
        dcs_ok=True,
        observed_at=clock.monotonic(),
    )
    # mypy checks each keyword of replace() against its field; `changes` is a mix by design
    return replace(base, **changes)  # type: ignore[arg-type]


@dataclass
class Api:
    client: Served
    backend: Backend
    inbox: Inbox
    status: StatusBox
    clock: FakeClock
    metrics: Metrics
    start_revision: int

    def writes(self) -> int:
        """How many times the DCS changed since the app was served."""
        return self.backend.revision - self.start_revision

    async def view(self) -> ClusterView:
        return await self.backend.handle("a").get_cluster()


async def serve(
    settings: Settings,
    backend: Backend,
    status: StatusBox,
    clock: FakeClock,
    validator: ConfigValidator | None = None,
) -> Api:
    inbox, metrics = Inbox(), Metrics()
    app = build_app(
        settings=settings,
        status=status,
        dcs=backend.handle("a"),
        requests=inbox,
        metrics=metrics,
        clock=clock,
        validator=validator,
    )
    client = await Served.start(app)
    return Api(
        client=client,
        backend=backend,
        inbox=inbox,
        status=status,
        clock=clock,
        metrics=metrics,
        start_revision=backend.revision,
    )


async def switchover_record(api: Api) -> object:
    return api.backend.record(RecordKind.SWITCHOVER)


async def config_record(api: Api) -> object:
    return api.backend.record(RecordKind.CONFIG)
