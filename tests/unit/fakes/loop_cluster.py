"""A cluster of real HaLoops on fakes: the memory DCS, the fake PostgreSQL, a fake fencer
and peers that call each other's loops directly. Time is a FakeClock moved by the test; no
test sleeps (long actions progress while the event loop is yielded to).

Each `round()` moves the clock by one step, lets the fencers act on their deadlines, then
runs one cycle of every member that is `alive` (in name order) and checks the invariant that
at most one PostgreSQL accepts writes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import cast

from agent.callback_settings import CallbackSettings
from agent.callbacks import CallbackRunner
from agent.clock import FakeClock
from agent.config import Settings, Tags
from agent.dcs.base import Dcs
from agent.dcs.memory import MemoryDcs, MemoryStore
from agent.decide import PeerStatus
from agent.fence import Fence, FenceState, FenceStatus, FenceUnavailable
from agent.loop import HaLoop
from agent.metrics import Metrics
from agent.model import Member, MemberName, RecordKind, SwitchoverRequest, SyncMode
from agent.postgres.control import PostgresControl
from tests.unit.fake_postgres import FakeCluster, FakePostgres
from tests.unit.fakes.callbacks import FakeCallbacks
from tests.unit.fakes.crash import (
    CallbackSeam,
    DcsSeam,
    FenceSeam,
    Killed,
    PostgresSeam,
    Switch,
)
from tests.unit.test_decide import make_settings

YIELDS = 50  # event-loop turns given to background tasks after each cycle


def member_settings(
    name: str,
    *,
    failsafe: bool = False,
    callbacks: CallbackSettings | None = None,
    tags: Tags | None = None,
    synchronous: SyncMode = SyncMode.OFF,
) -> Settings:
    base = make_settings(name)
    return replace(
        base,
        tags=tags if tags is not None else base.tags,
        postgresql=replace(base.postgresql, connect_host=name, data_dir=f"/data/{name}"),
        ha=replace(base.ha, failsafe_mode=failsafe, synchronous_mode=synchronous),
        callbacks=callbacks if callbacks is not None else base.callbacks,
    )


class FakeFence:
    """The fencer: armed with a deadline, it kills PostgreSQL when `tick()` finds it passed."""

    def __init__(self, clock: FakeClock, pg: FakePostgres) -> None:
        self.clock = clock
        self.pg = pg
        self.deadline: float | None = None
        self.state = FenceState.DISARMED
        self.unavailable = False
        self.enforcing = True  # False: the fencer process is not there to act on its own
        self.armed: list[float] = []
        self.fenced_at: float | None = None

    def _status(self) -> FenceStatus:
        remaining = self.deadline - self.clock.monotonic() if self.deadline is not None else None
        return FenceStatus(state=self.state, remaining_s=remaining)

    def _check(self) -> None:
        if self.unavailable:
            raise FenceUnavailable("fencer unreachable (injected)")

    async def arm(self, deadline: float) -> FenceStatus:
        self._check()
        self.deadline = deadline
        self.state = FenceState.ARMED
        self.armed.append(deadline)
        return self._status()

    async def disarm(self) -> FenceStatus:
        self._check()
        self.deadline = None
        self.state = FenceState.DISARMED
        return self._status()

    async def status(self) -> FenceStatus:
        self._check()
        return self._status()

    def tick(self) -> None:
        due = self.deadline is not None and self.clock.monotonic() >= self.deadline
        if self.state is FenceState.ARMED and due and self.enforcing:
            self.state = FenceState.FENCED
            self.fenced_at = self.clock.monotonic()
            self.pg.crash()


@dataclass(slots=True)
class FakePeers:
    """Other members' REST APIs, answered by their loops (GET /health, POST /failsafe)."""

    cluster: LoopCluster
    me: str
    unreachable: set[str] = field(default_factory=set)

    async def health(self, members: Sequence[Member]) -> tuple[PeerStatus, ...]:
        answers = []
        for m in members:
            node = self.cluster.nodes.get(m.name)
            if node is None or not node.alive or m.name in self.unreachable:
                answers.append(PeerStatus(name=m.name, reachable=False))
                continue
            st = node.loop.status()
            answers.append(
                PeerStatus(
                    name=m.name,
                    reachable=True,
                    role=st.role,
                    state=st.state,
                    timeline=st.timeline,
                    wal_lsn=st.wal_lsn,
                    nofailover=m.tags.nofailover or m.promotion_vetoed,
                    failover_priority=m.tags.failover_priority,
                )
            )
        return tuple(answers)

    async def ask_failsafe(self, members: Sequence[tuple[MemberName, str]]) -> list[str]:
        refusals = []
        for name, _ in members:
            node = self.cluster.nodes.get(name)
            if node is None or not node.alive or name in self.unreachable:
                refusals.append(f"{name}: unreachable (injected)")
                continue
            refusal = node.loop.accept_failsafe(self.me)
            if refusal is not None:
                refusals.append(f"{name}: 409 {refusal}")
        return refusals

    async def close(self) -> None:
        pass


class MemberClock:
    """One member's clocks: the cluster's monotonic time (CLOCK_MONOTONIC, which no one can
    set), and the member's own wall clock, which `wall_step_s` moves (an NTP step, an
    operator) without moving monotonic time."""

    def __init__(self, base: FakeClock) -> None:
        self._base = base
        self.wall_step_s = 0.0

    def monotonic(self) -> float:
        return self._base.monotonic()

    def wall(self) -> float:
        return self._base.wall() + self.wall_step_s


@dataclass(slots=True)
class Node:
    name: str
    settings: Settings
    clock: MemberClock
    dcs: MemoryDcs
    pg: FakePostgres
    fence: FakeFence
    peers: FakePeers
    loop: HaLoop
    callbacks: FakeCallbacks
    alive: bool = True  # False: the agent is frozen or gone (its loop does not cycle)
    switch: Switch | None = None  # this incarnation's crash points (tests/unit/fakes/crash.py)
    frozen_cycle: asyncio.Future[bool] | None = None  # a cycle a freeze stopped midway


def _midway(switch: Switch) -> Callable[[str], None]:
    def hook(op: str) -> None:
        switch.check(f"pg.{op}.midway", effect=True)

    return hook


class LoopCluster:
    def __init__(
        self,
        names: Sequence[str] = ("a", "b", "c"),
        *,
        failsafe: bool = False,
        callbacks: CallbackSettings | None = None,
        tags: Mapping[str, Tags] | None = None,
        synchronous: SyncMode = SyncMode.OFF,
        crash_points: bool = False,
    ) -> None:
        """`crash_points`: every agent runs behind a `Switch` (`node.switch.arm(k)` kills it
        at its k-th effect from then on)."""
        self.clock = FakeClock()
        self.store = MemoryStore(self.clock)
        self.postgres = FakeCluster()
        self.nodes: dict[str, Node] = {}
        self.primaries_seen: list[tuple[float, tuple[str, ...]]] = []
        for name in names:
            settings = member_settings(
                name,
                failsafe=failsafe,
                callbacks=callbacks,
                tags=(tags or {}).get(name),
                synchronous=synchronous,
            )
            pg = self.postgres.add(name)
            switch = Switch() if crash_points else None
            self.nodes[name] = self._node(name, settings, pg, FakeFence(self.clock, pg), switch)

    def _node(
        self,
        name: str,
        settings: Settings,
        pg: FakePostgres,
        fence: FakeFence,
        switch: Switch | None = None,
    ) -> Node:
        """A member's agent (its own DCS handle, loop, Memory) over `pg` and `fence`; with
        `switch`, every call it makes through its seams passes the switch (crash points)."""
        runner = FakeCallbacks(self.clock)
        peers = FakePeers(self, name)
        dcs = MemoryDcs(
            self.store,
            name,
            ttl_s=settings.timing.ttl_s,
            clock=self.clock,
            timeout_s=settings.timing.retry_timeout_s,
        )
        clock = MemberClock(self.clock)
        seams: tuple[object, object, object] = (dcs, pg, fence)
        pg.midway = None
        callbacks: CallbackRunner = runner
        if switch is not None:
            seams = (DcsSeam(dcs, switch), PostgresSeam(pg, switch), FenceSeam(fence, switch))
            callbacks = CallbackSeam(runner, switch)
            # A kill inside a copy (pg_basebackup, pg_rewind): the agent dies halfway.
            pg.midway = _midway(switch)
        loop = HaLoop(
            settings=settings,
            clock=clock,
            dcs=cast(Dcs, seams[0]),
            pg=cast(PostgresControl, seams[1]),
            fence=cast(Fence, seams[2]),
            peers=peers,
            metrics=Metrics(),
            sleep=self.sleep,
            callbacks=callbacks,
        )
        return Node(
            name=name,
            settings=settings,
            clock=clock,
            dcs=dcs,
            pg=pg,
            fence=fence,
            peers=peers,
            loop=loop,
            callbacks=runner,
            switch=switch,
        )

    async def restart_agent(self, name: str, switch: Switch | None = None) -> Node:
        """The member's agent process starts again (PostgreSQL and the fencer untouched): a
        new DCS handle and loop, with nothing remembered from before."""
        old = self.nodes[name]
        await old.dcs.close()
        node = self._node(name, old.settings, old.pg, old.fence, switch)
        self.nodes[name] = node
        return node

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    async def sleep(self, seconds: float) -> None:
        """What the loops' hand-over waits with: the fake clock moves, the event loop turns."""
        self.advance(seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.store.expire_leases()
        for node in self.nodes.values():
            node.fence.tick()

    async def _bury(self, node: Node) -> None:
        """The tasks of a killed agent end with its process (nothing of it runs on)."""
        loop = node.loop
        for task in (
            loop._watch_task,
            loop._pg_watch_task,
            loop._publish_task,
            loop.executor._task,
        ):
            if task is None:
                continue
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def settle(self) -> None:
        for _ in range(YIELDS):
            await asyncio.sleep(0)

    async def cycle(self, name: str) -> bool:
        node = self.nodes[name]
        busy = False
        cycle = asyncio.ensure_future(node.loop.cycle_once())
        while not cycle.done() and not (node.switch is not None and node.switch.frozen):
            await asyncio.sleep(0)
        if not cycle.done():
            node.alive = False  # frozen mid-cycle (a crash point's freeze): thawed later
            node.frozen_cycle = cycle
        else:
            with contextlib.suppress(Killed):
                busy = cycle.result()
            if node.switch is not None and node.switch.frozen:
                node.alive = False  # frozen in a long action: the whole process stops
        await self.settle()
        if node.switch is not None and node.switch.dead and (node.alive or node.frozen_cycle):
            node.alive = False  # killed at a crash point (in this cycle or a long action)
            await self._bury(node)
        self.check_invariants()
        return busy

    async def thaw(self, name: str) -> None:
        """A frozen agent goes on (SIGCONT): its stopped cycle first, with what it knew."""
        node = self.nodes[name]
        assert node.switch is not None
        node.switch.thaw()
        cycle, node.frozen_cycle = node.frozen_cycle, None
        node.alive = True
        if cycle is not None:
            while not cycle.done():
                await asyncio.sleep(0)
            with contextlib.suppress(Killed):
                cycle.result()
        await self.settle()
        self.check_invariants()

    async def round(self, step_s: float = 1.0) -> None:
        """Move the clock by `step_s`, then one cycle of every live member."""
        self.advance(step_s)
        for name, node in sorted(self.nodes.items()):
            if node.alive and not node.loop.executor.exited:
                await self.cycle(name)

    async def run_until(
        self, done: Callable[[], bool], *, limit_s: float = 120.0, step_s: float = 1.0
    ) -> float:
        """Rounds until `done()`; returns the fake seconds it took (fails past `limit_s`)."""
        start = self.clock.monotonic()
        while not done():
            if self.clock.monotonic() - start > limit_s:
                raise AssertionError(f"not done within {limit_s} s of fake time")
            await self.round(step_s)
        return self.clock.monotonic() - start

    def check_invariants(self) -> None:
        # A server on its Unix socket only (a bootstrap) takes no client's writes.
        primaries = tuple(
            p for p in self.postgres.primaries() if self.postgres.instances[p].serves_tcp()
        )
        self.primaries_seen.append((self.clock.monotonic(), primaries))
        assert len(primaries) <= 1, f"two primaries accept writes: {primaries}"
        torn = [s for pg in self.postgres.instances.values() for s in pg.torn_starts]
        assert not torn, f"PostgreSQL started on what an interrupted copy left: {torn}"

    # ------------------------------------------------------------------ views

    def leader(self) -> str | None:
        raw = self.store.get_raw("leader")
        return raw.decode() if raw is not None else None

    def switchover(self) -> bytes | None:
        return self.store.get_raw("switchover")

    def streaming_from(self, leader: str) -> list[str]:
        return sorted(
            n
            for n, pg in self.postgres.instances.items()
            if pg.streaming and pg.conninfo is not None and pg.conninfo.primary_host == leader
        )

    def healthy(self, leader: str) -> bool:
        """`leader` holds the lease and runs the only primary; every other member streams
        from it."""
        others = sorted(n for n in self.nodes if n != leader)
        return (
            self.leader() == leader
            and self.postgres.primaries() == [leader]
            and self.streaming_from(leader) == others
        )

    async def request_switchover(self, leader: str, candidate: str | None) -> None:
        request = SwitchoverRequest(
            leader=MemberName(leader),
            candidate=MemberName(candidate) if candidate is not None else None,
        )
        any_dcs = next(iter(self.nodes.values())).dcs
        assert await any_dcs.write_record(
            RecordKind.SWITCHOVER, request.to_json(), expected_version=None
        )

    async def bootstrap(self) -> str:
        """Rounds until one leader runs and the others stream from it; its name."""
        await self.run_until(
            lambda: self.leader() is not None and self.healthy(self.leader() or "")
        )
        await self.round()  # every member record in the DCS shows it, too
        leader = self.leader()
        assert leader is not None
        return leader
