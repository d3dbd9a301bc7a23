"""One crash point of one multi-step action, run on a LoopCluster (tests/unit/fakes/crash.py).

`run_point(scenario, k, delay_s, pod)`: a fresh cluster (bootstrapped unless the scenario is
the bootstrap), the scenario's action started with the victim's agent set to die at its k-th
effect; once it died, the member stays without an agent for `delay_s` (with `pod`, its
PostgreSQL died with it: the whole pod went), then a fresh agent starts on the same data and
the faults are healed. Throughout, a client writes to every PostgreSQL that accepts writes
(clients keep their connections whatever the agents do), and after every round:
- at most one PostgreSQL accepts writes (LoopCluster.check_invariants, every cycle);
- one that accepts writes holds the lease, or its fencer is armed with a deadline not passed;
then the cluster must converge (one leader, every member streaming from it) within
`CONVERGE_S`, and in synchronous mode the leader must hold every write acknowledged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent.callback_settings import CallbackSettings
from agent.fence import FenceState
from agent.model import LocalRequestKind, MemberName, RecordKind, RestartSchedule, SyncMode
from tests.unit.fakes.crash import Switch
from tests.unit.fakes.loop_cluster import LoopCluster

CONVERGE_S = 90.0  # fake seconds from the restart (and heal) to a healthy cluster
ACTION_S = 90.0  # fake seconds the action may take when nothing kills it

Step = Callable[[LoopCluster], Awaitable[None]]


async def _nothing(c: LoopCluster) -> None:
    pass


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    victim: str  # whose agent is killed
    trigger: Step  # starts the action (after bootstrap and `setup`)
    done: Callable[[LoopCluster, float], bool]  # the action ran to its end (c, s since)
    setup: Step = _nothing
    heal: Step = _nothing  # undo the faults the trigger made, after the restart
    synchronous: SyncMode = SyncMode.OFF
    failsafe: bool = False
    fresh: bool = False  # the action is the bootstrap: arm before the first round
    callbacks: CallbackSettings | None = None  # the callbacks waited for are crash points too

    def __str__(self) -> str:
        return self.name


@dataclass(slots=True)
class Report:
    killed_at: str | None = None  # the call the victim died at (None: it ran to the end)
    effects: list[str] = field(default_factory=list)  # what it did before
    violations: list[str] = field(default_factory=list)
    converge_s: float | None = None
    acked: int = 0
    lost: int = 0

    def describe(self) -> str:
        return f"killed at {self.killed_at} after {self.effects}: {self.violations}"


class Client:
    """Writes to whatever accepts writes, once a round; remembers what was acknowledged (in
    synchronous mode only once a named synchronous standby holds it, as COMMIT waits)."""

    def __init__(self, c: LoopCluster, synchronous: bool) -> None:
        self.c = c
        self.synchronous = synchronous
        self.acked: list[tuple[str, int, int]] = []  # (host, timeline, lsn)

    def write(self) -> None:
        for host in self.c.postgres.primaries():
            pg = self.c.postgres.instances[host]
            if not pg.serves_tcp():
                continue  # on its Unix socket only: no client reaches it
            lsn = pg.write()
            assert pg.data is not None
            if not self.synchronous or self._confirmed(host, lsn):
                self.acked.append((host, pg.data.timeline, lsn))

    def _confirmed(self, host: str, lsn: int) -> bool:
        pg = self.c.postgres.instances[host]
        if not pg.sync.names:
            return True  # synchronous_standby_names empty: COMMIT does not wait
        holding = [
            name
            for name, other in self.c.postgres.instances.items()
            if other.streaming
            and other.conninfo is not None
            and other.conninfo.primary_host == host
            and other.data is not None
            and other.data.lsn >= lsn
            and (name in pg.sync.names or "*" in pg.sync.names)
        ]
        return len(holding) >= max(pg.sync.count, 1)

    def lost(self, leader: str) -> list[tuple[str, int, int]]:
        data = self.c.postgres.instances[leader].data
        assert data is not None
        return [(h, tli, lsn) for h, tli, lsn in self.acked if not data.holds(tli, lsn)]


def lease_violations(c: LoopCluster) -> list[str]:
    """A PostgreSQL that accepts writes without the lease must be fenced by its deadline."""
    found = []
    now = c.clock.monotonic()
    for host in c.postgres.primaries():
        if c.leader() == host:
            continue
        fence = c.nodes[host].fence
        armed = fence.state is FenceState.ARMED and fence.deadline is not None
        if not armed or (fence.deadline is not None and fence.deadline <= now):
            found.append(f"t={now:.1f}: {host} accepts writes without the lease or a fence")
    return found


def converged(c: LoopCluster) -> bool:
    leader = c.leader()
    return leader is not None and c.healthy(leader)


async def run_point(
    scenario: Scenario, k: int, delay_s: float, *, pod: bool, freeze: bool = False
) -> Report:
    """`freeze`: the agent is not killed but stopped at the point (SIGSTOP; its PostgreSQL
    and fencer run on) and goes on after `delay_s` with what it knew (`pod` is ignored)."""
    c = LoopCluster(
        crash_points=True,
        synchronous=scenario.synchronous,
        failsafe=scenario.failsafe,
        callbacks=scenario.callbacks,
    )
    client = Client(c, scenario.synchronous is not SyncMode.OFF)
    report = Report()

    async def rounds(until: Callable[[], bool], limit_s: float) -> bool:
        start = c.clock.monotonic()
        while not until():
            if c.clock.monotonic() - start > limit_s:
                return False
            await c.round()
            if freeze and c[scenario.victim].loop.executor.exited:
                await c.restart_agent(scenario.victim, Switch())  # it finished its shutdown
            client.write()
            report.violations.extend(lease_violations(c))
        return True

    victim = c[scenario.victim]
    if not scenario.fresh:
        await c.bootstrap()
        await scenario.setup(c)
        victim = c[scenario.victim]
    switch = victim.switch
    assert switch is not None
    armed_at = len(switch.effects)
    switch.freeze = freeze
    switch.arm(k)
    await scenario.trigger(c)
    t0 = c.clock.monotonic()
    try:
        await rounds(
            lambda: switch.dead or switch.frozen or scenario.done(c, c.clock.monotonic() - t0),
            ACTION_S,
        )
    except AssertionError as exc:  # two primaries
        report.violations.append(str(exc))
        return report
    if not (switch.dead or switch.frozen):
        report.effects = switch.effects[armed_at:]
        return report
    report.killed_at, report.effects = switch.killed_at, switch.effects[armed_at:]
    if pod and not freeze:
        victim.pg.crash()
    try:
        await rounds(lambda: False, delay_s)
        if freeze:
            await c.thaw(scenario.victim)
        else:
            await c.restart_agent(scenario.victim, Switch())
        await scenario.heal(c)
        start = c.clock.monotonic()
        if await rounds(lambda: converged(c), CONVERGE_S):
            report.converge_s = c.clock.monotonic() - start
        else:
            report.violations.append(
                f"no convergence within {CONVERGE_S} s: leader {c.leader()}, primaries "
                f"{c.postgres.primaries()}, streaming {c.streaming_from(c.leader() or '')}"
            )
    except AssertionError as exc:
        report.violations.append(str(exc))
        return report
    leader = c.leader()
    report.acked = len(client.acked)
    if leader is not None and client.synchronous:
        lost = client.lost(leader)
        report.lost = len(lost)
        if lost:
            report.violations.append(f"{len(lost)} acknowledged writes lost, first {lost[0]}")
    return report


# ---------------------------------------------------------------------- the actions


def _pod_dies(name: str) -> Step:
    async def step(c: LoopCluster) -> None:
        c[name].alive = False
        c[name].pg.crash()

    return step


def _pod_returns(name: str) -> Step:
    async def step(c: LoopCluster) -> None:
        await c.restart_agent(name, Switch())

    return step


def _switchover(leader: str, candidate: str) -> Step:
    async def step(c: LoopCluster) -> None:
        await c.request_switchover(leader, candidate)

    return step


async def _shutdown(c: LoopCluster) -> None:
    c["a"].loop.request_shutdown()


async def _partition(c: LoopCluster) -> None:
    c.store.partition("a")


async def _heal_partition(c: LoopCluster) -> None:
    c.store.heal("a")


async def _dcs_down(c: LoopCluster) -> None:
    c.store.faults.unavailable = True


async def _dcs_up(c: LoopCluster) -> None:
    c.store.faults.unavailable = False


async def _restart_in_place(c: LoopCluster) -> None:
    schedule = RestartSchedule(
        members=(MemberName("a"),), scheduled_at=c.clock.wall(), in_place=True
    )
    assert await c["b"].dcs.write_record(
        RecordKind.RESTART, schedule.to_json(), expected_version=None
    )


def _other_leads(c: LoopCluster, *names: str) -> bool:
    leader = c.leader()
    if leader not in names or c.postgres.primaries() != [leader]:
        return False
    return all(c.postgres.instances[n].streaming for n in names if n != leader)


def scenarios() -> list[Scenario]:
    on = SyncMode.ON
    out: list[Scenario] = [
        Scenario("bootstrap", "a", _nothing, lambda c, _: converged(c), fresh=True),
        # A member that clones the new cluster: killed before, inside or after its copy.
        Scenario("bootstrap-replica", "b", _nothing, lambda c, _: converged(c), fresh=True),
        Scenario(
            "bootstrap-post-bootstrap",
            "a",
            _nothing,
            lambda c, _: converged(c),
            fresh=True,
            callbacks=CallbackSettings(post_bootstrap="/bin/true"),
        ),
        Scenario(
            "failover-pre-promote",
            "b",
            _pod_dies("a"),
            lambda c, _: _other_leads(c, "b", "c"),
            heal=_pod_returns("a"),
            callbacks=CallbackSettings(pre_promote="/bin/true"),
        ),
        Scenario(
            "failover",
            "b",
            _pod_dies("a"),
            lambda c, _: _other_leads(c, "b", "c"),
            heal=_pod_returns("a"),
        ),
        Scenario(
            "switchover-leader",
            "a",
            _switchover("a", "b"),
            lambda c, _: c.switchover() is None and c.healthy("b"),
        ),
        Scenario(
            "switchover-candidate",
            "b",
            _switchover("a", "b"),
            lambda c, _: c.switchover() is None and c.healthy("b"),
        ),
        Scenario("shutdown-handover", "a", _shutdown, lambda c, _: c["a"].loop.executor.exited),
        Scenario(
            "rejoin",
            "a",
            _agent_starts("a"),
            lambda c, _: converged(c),
            setup=_rejoin_setup,
        ),
        Scenario(
            "lease-lost",
            "a",
            _partition,
            lambda c, _: _other_leads(c, "b", "c") and not c["a"].pg.is_primary,
            heal=_heal_partition,
        ),
        Scenario(
            "restart-in-place",
            "a",
            _restart_in_place,
            lambda c, _: c.store.get_raw("restart") is None and c.healthy("a"),
        ),
        Scenario("failsafe", "a", _dcs_down, lambda c, t: t >= 25.0, heal=_dcs_up, failsafe=True),
        Scenario(
            "sync-failover",
            "b",
            _pod_dies("a"),
            lambda c, _: _other_leads(c, "b", "c"),
            heal=_pod_returns("a"),
            synchronous=on,
        ),
        Scenario(
            "sync-switchover-leader",
            "a",
            _switchover("a", "b"),
            lambda c, _: c.switchover() is None and c.healthy("b"),
            synchronous=on,
        ),
        Scenario(
            "sync-standby-lost",
            "a",
            _pod_dies("c"),
            lambda c, t: "c" not in c["a"].pg.sync.names and t >= 15.0,
            heal=_pod_returns("c"),
            synchronous=on,
        ),
        Scenario(
            "sync-failover-lagging-replica",
            "b",
            _pod_dies("a"),
            lambda c, _: _other_leads(c, "b", "c"),
            setup=_cut_off("c"),
            heal=_both(_pod_returns("a"), _reconnect("c")),
            synchronous=on,
        ),
        Scenario(
            "quorum-failover",
            "b",
            _pod_dies("a"),
            lambda c, _: _other_leads(c, "b", "c"),
            heal=_pod_returns("a"),
            synchronous=SyncMode.QUORUM,
        ),
        Scenario(
            "quorum-standby-joins",
            "a",
            _pod_returns("c"),
            lambda c, t: "c" in c["a"].pg.sync.names and t >= 10.0,
            setup=_standby_gone("c"),
            synchronous=SyncMode.QUORUM,
        ),
        Scenario(
            "leader-postgres-crash",
            "a",
            _postgres_crashes("a"),
            lambda c, t: t >= 3.0 and converged(c),
        ),
        Scenario(
            "reinitialize",
            "b",
            _reinitialize("b"),
            lambda c, _: c["b"].pg.calls.count("clone") >= 2 and converged(c),
        ),
    ]
    return out


def _standby_gone(name: str) -> Step:
    """Its pod died and the leader took it out of the synchronous set."""

    async def step(c: LoopCluster) -> None:
        await _pod_dies(name)(c)
        for _ in range(15):
            await c.round()
        await c.restart_agent(name, Switch())
        c[name].alive = False

    return step


def _cut_off(name: str) -> Step:
    """Its WAL receiver gets nothing more (a lagging replica: not synchronous)."""

    async def step(c: LoopCluster) -> None:
        c[name].pg.receiving = False
        for _ in range(15):
            await c.round()

    return step


def _reconnect(name: str) -> Step:
    async def step(c: LoopCluster) -> None:
        c[name].pg.receiving = True

    return step


def _both(first: Step, second: Step) -> Step:
    async def step(c: LoopCluster) -> None:
        await first(c)
        await second(c)

    return step


def _postgres_crashes(name: str) -> Step:
    async def step(c: LoopCluster) -> None:
        c[name].pg.crash()

    return step


def _reinitialize(name: str) -> Step:
    async def step(c: LoopCluster) -> None:
        c[name].loop.submit(LocalRequestKind.REINITIALIZE)

    return step


async def _rejoin_setup(c: LoopCluster) -> None:
    """a's pod died and b or c took over; a's new agent is there, not yet started."""
    await _pod_dies("a")(c)
    await c.run_until(lambda: _other_leads(c, "b", "c"))
    for _ in range(3):
        await c.round()
        for host in c.postgres.primaries():
            c.postgres.instances[host].write()
    await c.restart_agent("a", Switch())
    c["a"].alive = False


def _agent_starts(name: str) -> Step:
    async def step(c: LoopCluster) -> None:
        c[name].alive = True

    return step
