"""Reusable faults. A nemesis injects one fault against the current cluster and heals it.

`inject(cluster, primary)` returns a description of what it did (which member or etcd node);
a scripted nemesis instead runs `script(cluster, primary)`, a coroutine that makes several
faults in a row, each when the cluster is in the state it waits for, and returns an
`Injected` (description and the instant of each fault). `heal(cluster)` undoes every fault
of the run whatever it was (network rules flushed, frozen processes continued, dead agents
and etcd members started again), so healing is idempotent and safe after a failed scenario.
`hold_s` is how long the fault stays in place (after the script, for a scripted one).

Partitions are iptables DROP rules in the namespaces (both directions). The "primary isolated"
fault cuts the primary from the DCS and from the other members but not from the client: the
strongest test of self-fencing, since clients could go on writing to it.

`nemeses(ttl_s, dcs=...)` maps the faults onto the DCS in use. With the Kubernetes API server
(one host, state in memory) "cut from the DCS" is a cut from its host; the outages are
`dcs-majority-cut` (its host cut from every host) and `dcs-frozen` (the server SIGSTOPped,
SIGCONTed on heal; it is never killed, since a restart would lose its state); there is no
`etcd-leader-killed` and no `etcd-all-stopped`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from agent.proctree import children
from tests.chaos.cluster import ChaosCluster, Member
from tests.chaos.netns import kill_namespace_processes

# sigterm-chain: how many SIGTERMs in a row, how long the workload writes to each new
# primary before its agent gets the next one, and how long each hand-over may take at most.
CHAIN_LENGTH = 3
CHAIN_WRITE_S = 0.3
CHAIN_HANDOVER_BOUND_S = 30.0
# primary-postgres-frozen-until-failover: how long to wait for another primary at most.
FROZEN_FAILOVER_BOUND_S = 20.0
# primary-storage-hang: how long to wait for another primary at most (the bound is
# ttl + 1 s; waiting longer measures how late a slow failover comes).
STORAGE_FAILOVER_BOUND_S = 30.0
# agent-restart-loop: how many kills (of the primary's agent; every second one of a replica's
# too) and their period: about 20 s of churn.
CHURN_KILLS = 13
CHURN_PERIOD_S = 1.5
# CHAOS_UNFENCED=1: agent-restart-loop also SIGKILLs the member's fencer with its agent, which
# removes the protection (a dead agent's PostgreSQL is stopped at the lease's deadline): its
# no-split-brain / no-loss assertions must then fail. Only to check the suite.
UNFENCED = os.environ.get("CHAOS_UNFENCED") == "1"


def heal_all(cluster: ChaosCluster) -> None:
    """Flush every DROP rule, SIGCONT every agent and DCS process, start dead etcd members and
    agents."""
    cluster.network.heal()
    cluster.resume_dcs()
    cluster.restart_dead_agents()


def _replica(cluster: ChaosCluster, primary: int) -> int:
    return (primary + 1) % len(cluster.members)


def _partition_primary_from_dcs(cluster: ChaosCluster, primary: int) -> str:
    member = cluster.members[primary]
    cluster.network.drop_between(member.host.key, cluster.dcs_keys)
    return f"{member.name} cut from the DCS ({cluster.dcs})"


def _partition_primary_from_replicas(cluster: ChaosCluster, primary: int) -> str:
    member = cluster.members[primary]
    others = [k for k in cluster.member_keys if k != member.host.key]
    cluster.network.drop_between(member.host.key, others)
    return f"{member.name} cut from the replicas"


def _isolate_primary(cluster: ChaosCluster, primary: int) -> str:
    member = cluster.members[primary]
    others = [k for k in cluster.member_keys if k != member.host.key]
    cluster.network.drop_between(member.host.key, [*cluster.dcs_keys, *others])
    return f"{member.name} cut from the DCS and the replicas (clients still reach it)"


def _isolate_replica(cluster: ChaosCluster, primary: int) -> str:
    member = cluster.members[_replica(cluster, primary)]
    cluster.network.isolate(member.host.key)
    return f"{member.name} (replica) cut from every host"


def _cut_dcs_majority(cluster: ChaosCluster, primary: int) -> str:
    if cluster.dcs == "kubernetes":
        cluster.network.isolate("k")
        return "the API server's host cut from every host"
    cut = cluster.etcd_keys[-2:]
    for key in cut:
        cluster.network.isolate(key)
    return f"etcd hosts {', '.join(cut)} cut from every host (no quorum)"


def _freeze_apiserver(cluster: ChaosCluster, primary: int) -> str:
    assert cluster.apiserver is not None
    cluster.apiserver.proc.signal(signal.SIGSTOP)
    return "the API server SIGSTOPped (connections stay open, nothing answers)"


def _dcs_outage_and_replica_agent_killed(cluster: ChaosCluster, primary: int) -> str:
    """The DCS unreachable for everyone and one replica's agent dead: with failsafe mode the
    primary cannot confirm every member, so it must stop at its deadline."""
    member = cluster.members[_replica(cluster, primary)]
    member.agent.signal(signal.SIGKILL)
    member.agent.wait(timeout=5)
    what = _cut_dcs_majority(cluster, primary)
    return f"SIGKILL to the agent of {member.name} (replica), then {what}"


def _stop_all_etcd(cluster: ChaosCluster, primary: int) -> str:
    for node in cluster.etcd:
        node.proc.kill()
    return "every etcd member SIGKILLed"


def _kill_etcd_leader(cluster: ChaosCluster, primary: int) -> str:
    leader = cluster.etcd_leader()
    index = 0 if leader is None else leader
    cluster.etcd[index].proc.kill()
    return f"{cluster.etcd[index].name} SIGKILLed" + (" (leader)" if leader is not None else "")


def _signal_agent(sig: signal.Signals, role: str) -> Callable[[ChaosCluster, int], str]:
    def inject(cluster: ChaosCluster, primary: int) -> str:
        index = primary if role == "primary" else _replica(cluster, primary)
        member = cluster.members[index]
        member.agent.signal(sig)
        if sig == signal.SIGKILL:
            member.agent.wait(timeout=5)
        return f"{sig.name} to the agent of {member.name} ({role})"

    return inject


def _kill_primary_postgres(cluster: ChaosCluster, primary: int) -> str:
    cluster.kill_postgres(primary)
    return f"postmaster of {cluster.members[primary].name} SIGKILLed (agent alive)"


@dataclass(slots=True)
class _FrozenPostgres:
    """primary-postgres-frozen: SIGSTOP of the primary's postmaster and of every process
    below it, agent alive (a hung server: connections are accepted by the kernel, nothing
    answers). Each PostgreSQL child calls setsid(), so a signal to the postmaster's process
    group would miss them: they are found by parent pid. The heal SIGCONTs those that still
    exist, then heals as usual."""

    stopped: list[int] = field(default_factory=list)

    def inject(self, cluster: ChaosCluster, primary: int) -> str:
        member = cluster.members[primary]
        pid = member.postmaster_pid()
        if pid is None:
            return f"{member.name}: no postmaster to freeze"
        # The postmaster first: stopped, it neither forks nor reaps, so the tree read below
        # is complete and none of its pids is reused until the heal.
        os.kill(pid, signal.SIGSTOP)
        self.stopped.append(pid)
        pending = children(pid)
        while pending:
            child = pending.pop()
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)
                self.stopped.append(child)
                pending.extend(children(child))
        return (
            f"postmaster of {member.name} and its {len(self.stopped) - 1} descendants "
            "SIGSTOPped (agent alive)"
        )

    def thaw(self) -> int:
        """SIGCONT every process stopped by `inject` that still exists; how many did."""
        resumed = 0
        for pid in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                resumed += 1
        self.stopped.clear()
        return resumed

    def heal(self, cluster: ChaosCluster) -> None:
        self.thaw()
        heal_all(cluster)

    async def until_failover(self, cluster: ChaosCluster, primary: int) -> Injected:
        """The freeze of `inject`, continued as soon as another member's PostgreSQL takes
        writes (within FROZEN_FAILOVER_BOUND_S): a hung server that comes back right after a
        failover must find itself fenced already, not a second writable primary."""
        at = time.monotonic()
        what = self.inject(cluster, primary)
        found = await _next_primary(cluster, primary, FROZEN_FAILOVER_BOUND_S)
        taken = time.monotonic() - at
        resumed = self.thaw()
        if found is None:
            return Injected(
                description=f"{what}; no other member writable within "
                f"{FROZEN_FAILOVER_BOUND_S:.0f} s; SIGCONT to the {resumed} still alive",
                instants=(at,),
            )
        return Injected(
            description=f"{what}; {cluster.members[found].name} writable after {taken:.2f} s, "
            f"then SIGCONT to the {resumed} of them still alive",
            instants=(at,),
        )


def _client_backends(postmaster: int, client_address: str) -> list[int]:
    """Pids of the postmaster's client backends connected from `client_address` (the
    workload's), read from each child's process title."""
    out = []
    for pid in children(postmaster):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
            if f" {client_address}(" in title and "walsender" not in title:
                out.append(pid)
    return out


def _oom_kill_primary_backend(cluster: ChaosCluster, primary: int) -> str:
    """SIGKILL of one client backend, as the OOM killer does: the postmaster sees a child die
    abnormally and goes through its crash-restart cycle (every backend ended, crash recovery,
    accepting connections again), while the agent and the postmaster stay alive."""
    member = cluster.members[primary]
    pid = member.postmaster_pid()
    if pid is None:
        return f"{member.name}: no postmaster"
    backends = _client_backends(pid, cluster.client.address)
    if not backends:
        return f"{member.name}: no client backend to kill"
    os.kill(backends[0], signal.SIGKILL)
    return f"SIGKILL to client backend {backends[0]} of {member.name} (postmaster {pid})"


@dataclass(slots=True)
class _StorageHang:
    """primary-storage-hang: every write and fsync of the primary's data directory (a FUSE
    store, `ChaosCluster(fuse_storage=True)`) hangs; reads, the postmaster, the walsenders and
    the agent stay up, so the server answers probes but cannot commit (the zombie primary of
    issue 16). Held until another member takes writes (at most STORAGE_FAILOVER_BOUND_S),
    then for the nemesis' hold, still hung: the heal resumes the storage, when every write
    that waited in it completes."""

    failover_s: list[float | None] = field(default_factory=list)

    async def script(self, cluster: ChaosCluster, primary: int) -> Injected:
        member = cluster.members[primary]
        if member.store is None:
            raise RuntimeError("primary-storage-hang needs ChaosCluster(fuse_storage=True)")
        at = time.monotonic()
        member.store.block()
        found = await _next_primary(cluster, primary, STORAGE_FAILOVER_BOUND_S)
        taken = time.monotonic() - at
        self.failover_s.append(None if found is None else taken)
        what = f"every write and fsync of {member.name}'s data directory hung"
        if found is None:
            return Injected(
                description=f"{what}; no other member writable within "
                f"{STORAGE_FAILOVER_BOUND_S:.0f} s",
                instants=(at,),
            )
        return Injected(
            description=f"{what}; {cluster.members[found].name} writable after {taken:.2f} s",
            instants=(at,),
        )

    def heal(self, cluster: ChaosCluster) -> None:
        for member in cluster.members:
            if member.store is not None:
                member.store.unblock()
        heal_all(cluster)


async def _agent_restart_loop(cluster: ChaosCluster, primary: int) -> Injected:
    """CHURN_KILLS times, every CHURN_PERIOD_S: SIGKILL of the first primary's agent, started again
    at once (PostgreSQL and the fencer live on: the new agent must adopt them); every second
    time a replica's agent too. A crash-looping container whose database keeps running."""
    instants: list[float] = []
    replica = cluster.members[_replica(cluster, primary)]
    member = cluster.members[primary]
    for kill in range(CHURN_KILLS):
        if kill:
            await asyncio.sleep(CHURN_PERIOD_S)
        instants.append(time.monotonic())
        for target in [member] if kill % 2 == 0 else [member, replica]:
            target.agent.signal(signal.SIGKILL)
            target.agent.wait(timeout=5)
            if UNFENCED:
                cluster.kill_fencer(cluster.members.index(target))
            target.agent.start()
    return Injected(
        description=f"SIGKILL + restart of {member.name}'s agent (primary) {CHURN_KILLS} "
        f"times, of {replica.name}'s (replica) {CHURN_KILLS // 2} times, every "
        f"{CHURN_PERIOD_S} s" + (" (fencers killed too: CHAOS_UNFENCED)" if UNFENCED else ""),
        instants=tuple(instants),
    )


async def _writable(cluster: ChaosCluster, index: int) -> bool:
    """Member `index`'s PostgreSQL answers now as a primary that takes writes."""
    try:
        async with asyncio.timeout(0.5):
            conn = await cluster.connect(index, timeout=0.5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        async with asyncio.timeout(0.5):
            return bool(
                await conn.fetchval(
                    "SELECT NOT pg_is_in_recovery() "
                    "AND current_setting('transaction_read_only') = 'off'"
                )
            )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    finally:
        conn.terminate()


async def _next_primary(cluster: ChaosCluster, old: int, bound_s: float) -> int | None:
    """The first member other than `old` found writable within `bound_s` (polled every
    50 ms), or None."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        for index in range(len(cluster.members)):
            if index != old and await _writable(cluster, index):
                return index
        await asyncio.sleep(0.05)
    return None


async def _start_again_when_exited(member: Member, bound_s: float) -> None:
    """As a StatefulSet restarts a pod's container: the agent is started again as soon as it
    exited (within `bound_s`; the heal starts it otherwise)."""
    deadline = time.monotonic() + bound_s
    while member.agent.running:
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.05)
    member.agent.start()


async def _sigterm_chain(cluster: ChaosCluster, primary: int) -> Injected:
    """SIGTERM to the primary's agent (a graceful hand-over); as soon as another member's
    PostgreSQL takes writes, the workload writes for CHAIN_WRITE_S and that member's agent
    gets SIGTERM too; CHAIN_LENGTH SIGTERMs in all. Each SIGTERMed agent is started again
    once it exited, so that a third hand-over in a 3-member cluster has a candidate."""
    instants: list[float] = []
    steps: list[str] = []
    current = primary
    async with asyncio.TaskGroup() as restarts:
        for step in range(CHAIN_LENGTH):
            if step:
                await asyncio.sleep(CHAIN_WRITE_S)
            member = cluster.members[current]
            at = time.monotonic()
            instants.append(at)
            member.agent.signal(signal.SIGTERM)
            restarts.create_task(
                _start_again_when_exited(member, CHAIN_HANDOVER_BOUND_S),
                name=f"chaos-restart-{member.name}",
            )
            found = await _next_primary(cluster, current, CHAIN_HANDOVER_BOUND_S)
            if found is None:
                steps.append(
                    f"SIGTERM to the agent of {member.name}: no other member writable within "
                    f"{CHAIN_HANDOVER_BOUND_S:.0f} s"
                )
                break
            steps.append(
                f"SIGTERM to the agent of {member.name}, {cluster.members[found].name} "
                f"writable after {time.monotonic() - at:.2f} s"
            )
            current = found
    return Injected(description="; ".join(steps), instants=tuple(instants))


@dataclass(frozen=True, slots=True, kw_only=True)
class Injected:
    """What a nemesis did: its description and the monotonic instant of each fault."""

    description: str
    instants: tuple[float, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Nemesis:
    """One fault (`inject`, synchronous) or a scripted series of faults (`script`): exactly
    one of the two. `hold_s` is waited after either returns, before the heal."""

    name: str
    hold_s: float
    inject: Callable[[ChaosCluster, int], str] | None = None
    script: Callable[[ChaosCluster, int], Awaitable[Injected]] | None = None
    faults: int = 1  # how many fault instants a complete run of it makes
    must_not_lose: bool = False  # async replication: the fault must lose no acknowledged write
    quick: bool = True  # part of the quick profile (every nemesis is part of the random mix)
    heal: Callable[[ChaosCluster], None] = heal_all
    # The workload adds a writer without a statement timeout (single scenarios only): for
    # faults that hang a server, whose queued statements run when it resumes.
    patient_writer: bool = False
    # No failover may happen: the primary after the heal is the one before (single scenarios).
    same_primary: bool = False

    def __post_init__(self) -> None:
        if (self.inject is None) == (self.script is None):
            raise ValueError(f"nemesis {self.name}: give exactly one of inject and script")

    async def run(self, cluster: ChaosCluster, primary: int) -> Injected:
        """Inject the fault(s) against `primary`'s cluster."""
        if self.script is not None:
            return await self.script(cluster, primary)
        assert self.inject is not None
        at = time.monotonic()
        return Injected(description=self.inject(cluster, primary), instants=(at,))


def nemeses(ttl_s: float, *, dcs: str = "etcd") -> list[Nemesis]:
    """Every nemesis for a cluster whose DCS is `dcs` ("etcd" or "kubernetes"), with holds
    long enough for the fault to matter (a lease to expire)."""
    expire = ttl_s + 3.0
    every = _every(ttl_s)
    if dcs == "etcd":
        return every
    frozen = Nemesis(name="dcs-frozen", inject=_freeze_apiserver, hold_s=expire)
    out = [n for n in every if n.name not in ("etcd-all-stopped", "etcd-leader-killed")]
    index = next(i for i, n in enumerate(out) if n.name == "dcs-majority-cut")
    return [*out[: index + 1], frozen, *out[index + 1 :]]


def storage_hang(ttl_s: float) -> Nemesis:
    """The gray profile's zombie primary (needs a cluster with FUSE storage)."""
    hang = _StorageHang()
    return Nemesis(
        name="primary-storage-hang",
        script=hang.script,
        heal=hang.heal,
        hold_s=ttl_s,
        must_not_lose=True,
        patient_writer=True,
        quick=False,
    )


def dcs_outage_with_dead_replica_agent(ttl_s: float) -> Nemesis:
    """Not in the quick profile: the failsafe profile's case where confirmation must fail."""
    return Nemesis(
        name="dcs-outage-replica-agent-killed",
        inject=_dcs_outage_and_replica_agent_killed,
        hold_s=ttl_s + 3.0,
        quick=False,
    )


def _every(ttl_s: float) -> list[Nemesis]:
    expire = ttl_s + 3.0
    frozen = _FrozenPostgres()
    frozen_briefly = _FrozenPostgres()
    return [
        Nemesis(name="primary-cut-from-dcs", inject=_partition_primary_from_dcs, hold_s=expire),
        Nemesis(
            name="primary-cut-from-replicas", inject=_partition_primary_from_replicas, hold_s=6.0
        ),
        Nemesis(name="primary-isolated", inject=_isolate_primary, hold_s=expire),
        Nemesis(name="replica-isolated", inject=_isolate_replica, hold_s=6.0),
        Nemesis(name="dcs-majority-cut", inject=_cut_dcs_majority, hold_s=expire),
        Nemesis(name="etcd-all-stopped", inject=_stop_all_etcd, hold_s=expire),
        Nemesis(name="etcd-leader-killed", inject=_kill_etcd_leader, hold_s=4.0),
        Nemesis(
            name="primary-agent-sigkill",
            inject=_signal_agent(signal.SIGKILL, "primary"),
            hold_s=expire,
            must_not_lose=True,
        ),
        Nemesis(
            name="primary-agent-sigstop",
            inject=_signal_agent(signal.SIGSTOP, "primary"),
            hold_s=expire,
            must_not_lose=True,
        ),
        Nemesis(
            name="replica-agent-sigkill",
            inject=_signal_agent(signal.SIGKILL, "replica"),
            hold_s=4.0,
            quick=False,
        ),
        Nemesis(
            name="replica-agent-sigstop",
            inject=_signal_agent(signal.SIGSTOP, "replica"),
            hold_s=4.0,
            quick=False,
        ),
        Nemesis(name="primary-postgres-sigkill", inject=_kill_primary_postgres, hold_s=4.0),
        Nemesis(
            name="primary-agent-sigterm",
            inject=_signal_agent(signal.SIGTERM, "primary"),
            hold_s=8.0,
        ),
        Nemesis(
            name="sigterm-chain",
            script=_sigterm_chain,
            hold_s=1.0,
            faults=CHAIN_LENGTH,
            must_not_lose=True,
        ),
        Nemesis(
            name="primary-postgres-frozen",
            inject=frozen.inject,
            heal=frozen.heal,
            hold_s=2 * ttl_s,
            must_not_lose=True,
            patient_writer=True,
        ),
        Nemesis(
            name="primary-backend-oom-killed",
            inject=_oom_kill_primary_backend,
            hold_s=4.0,
            must_not_lose=True,
            same_primary=True,
        ),
        Nemesis(
            name="agent-restart-loop",
            script=_agent_restart_loop,
            hold_s=1.0,
            faults=CHURN_KILLS,
            must_not_lose=True,
        ),
        Nemesis(
            name="primary-postgres-frozen-until-failover",
            script=frozen_briefly.until_failover,
            heal=frozen_briefly.heal,
            hold_s=ttl_s,
            must_not_lose=True,
            patient_writer=True,
        ),
    ]


# ---------------------------------------------------------------- slow network (issue 16)


@dataclass(slots=True)
class _SlowNetwork:
    """slow-network: `rtt_s` of added round-trip latency (half each way) on every connection
    between the primary and the DCS hosts and between the primary and the other members
    (their WAL receivers, the agents' REST calls both ways), through the delaying proxies of a
    `ChaosCluster(delay_proxies=True)` (tests/chaos/delay_proxy.py). The client's traffic is
    not delayed. The heal sets every delay back to 0 (what is queued drains)."""

    rtt_s: float

    def inject(self, cluster: ChaosCluster, primary: int) -> str:
        if any(m.proxy is None for m in cluster.members):
            raise RuntimeError("slow-network needs ChaosCluster(delay_proxies=True)")
        one_way = self.rtt_s / 2
        old = cluster.members[primary]
        dcs = [cluster.network.hosts[k].address for k in cluster.dcs_keys]
        others = [m.address for m in cluster.members if m is not old]
        cluster.set_delays(primary, dict.fromkeys([*dcs, *others], one_way))
        for index, member in enumerate(cluster.members):
            if member is not old:
                cluster.set_delays(index, {old.address: one_way})
        return (
            f"+{self.rtt_s:g} s round trip between {old.name} (primary) and the DCS and "
            "between it and the other members"
        )

    def heal(self, cluster: ChaosCluster) -> None:
        for index in range(len(cluster.members)):
            cluster.set_delays(index, {})
        heal_all(cluster)


def slow_network(rtt_s: float, hold_s: float) -> Nemesis:
    """The gray profile's slow network around the primary, held `hold_s` (more than a ttl:
    the lease must be renewed through the latency, not merely outlast it)."""
    slow = _SlowNetwork(rtt_s=rtt_s)
    return Nemesis(
        name=f"slow-network-{rtt_s:g}s",
        inject=slow.inject,
        heal=slow.heal,
        hold_s=hold_s,
        must_not_lose=True,
        same_primary=True,
        quick=False,
    )


# ---------------------------------------------------------------- write load, hard kill (issue 16)

LOAD_TABLE = "pgwarden_load"
LOAD_CLIENTS = 8
# Rows of ~2 kB each, below the TOAST threshold (not compressed): ~80 kB of WAL per transaction.
LOAD_ROWS_PER_TX = 40
LOAD_WARMUP_S = 8.0  # load before the kill, for the replicas to fall behind
LOAD_FAILOVER_BOUND_S = 30.0


@dataclass(slots=True)
class _LoadThenKill:
    """async-load-hard-kill: a pgbench write load (LOAD_CLIENTS clients, each transaction
    inserting LOAD_ROWS_PER_TX rows of ~2 kB) saturates the primary for LOAD_WARMUP_S, so
    replication lags; then every process of the primary's host is SIGKILLed at once (agent,
    fencer, PostgreSQL: a node that died). Lag is sampled (primary's current WAL position
    minus each replica's replay position) just before the kill. Waits up to
    LOAD_FAILOVER_BOUND_S for another member to take writes; the heal starts the dead agent
    again (it rejoins, rewound if it must)."""

    # One-way delay added to every connection of the replicas to the primary (their WAL
    # streams; needs ChaosCluster(delay_proxies=True)): replication that cannot keep up.
    replication_delay_s: float = 0.0
    # Or a rate limit (bytes per second) on those connections: the WAL the replicas cannot
    # take yet stays in the primary's socket buffers and dies with it (a saturated link).
    replication_rate_bps: float = 0.0
    load: subprocess.Popen[bytes] | None = None
    log: Path | None = None  # this run's pgbench output
    # Per replica, bytes behind the primary's current WAL position just before the kill:
    # (received, replayed). Upper bounds: the replicas are read first.
    lag_bytes: dict[str, tuple[int, int]] = field(default_factory=dict)
    failover_s: float | None = None  # from the kill to another member taking writes

    async def script(self, cluster: ChaosCluster, primary: int) -> Injected:
        old = cluster.members[primary]
        conn = await cluster.connect(primary)
        try:
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {LOAD_TABLE} (id bigint, pad text)")
            await conn.execute(f"TRUNCATE {LOAD_TABLE}")
        finally:
            await conn.close()
        if self.replication_delay_s or self.replication_rate_bps:
            link: object = (
                {"delay_s": self.replication_delay_s, "rate_bps": self.replication_rate_bps}
                if self.replication_rate_bps
                else self.replication_delay_s
            )
            for index in range(len(cluster.members)):
                if index != primary:
                    cluster.set_delays(index, {old.address: link})
        script = cluster.base / "load.sql"
        script.write_text(
            f"INSERT INTO {LOAD_TABLE} SELECT g, repeat(md5(random()::text), 60) "
            f"FROM generate_series(1, {LOAD_ROWS_PER_TX}) g;\n"
        )
        self.log = cluster.base / f"pgbench-{time.monotonic_ns()}.log"
        log = open(self.log, "ab")  # noqa: SIM115  # closed below, once pgbench has it
        self.load = subprocess.Popen(
            cluster.client.exec_args(
                f"{cluster.pg_bin}/pgbench",
                "-n",
                "-h",
                old.address,
                "-U",
                "postgres",
                "-c",
                str(LOAD_CLIENTS),
                "-j",
                "2",
                "-T",
                "120",
                "-P",
                "1",
                "-f",
                str(script),
                "postgres",
            ),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        await asyncio.sleep(LOAD_WARMUP_S)
        # The replicas first, then the primary: the lag is an upper bound (both move on).
        positions: dict[str, tuple[int, int]] = {}
        for index, member in enumerate(cluster.members):
            if index != primary:
                with contextlib.suppress(Exception):
                    positions[member.name] = await _replica_positions(cluster, index)
        position = await cluster.wal_position(primary, primary=True)
        self.lag_bytes = {
            name: (position - received, position - replayed)
            for name, (received, replayed) in positions.items()
        }
        at = time.monotonic()
        kill_namespace_processes(old.host.netns)
        old.agent.wait(timeout=5)
        found = await _next_primary(cluster, primary, LOAD_FAILOVER_BOUND_S)
        taken = time.monotonic() - at
        self.failover_s = None if found is None else taken
        lags = ", ".join(
            f"{k} {received / 1e6:.1f} MB received, {replayed / 1e6:.1f} MB replayed"
            for k, (received, replayed) in sorted(self.lag_bytes.items())
        )
        slower = (
            f", +{self.replication_delay_s:g} s each way on the replicas' connections to it"
            if self.replication_delay_s
            else ""
        )
        if self.replication_rate_bps:
            slower = (
                f", the replicas' connections to it limited to "
                f"{self.replication_rate_bps / 1e6:g} MB/s"
            )
        what = (
            f"pgbench ({LOAD_CLIENTS} clients) on {old.name}{slower} for {LOAD_WARMUP_S:g} s, "
            "replay "
            f"lag at the kill (behind): {lags}; every process of {old.name}'s host SIGKILLed"
        )
        if found is None:
            return Injected(
                description=f"{what}; no other member writable within "
                f"{LOAD_FAILOVER_BOUND_S:.0f} s",
                instants=(at,),
            )
        return Injected(
            description=f"{what}; {cluster.members[found].name} writable after {taken:.2f} s",
            instants=(at,),
        )

    def heal(self, cluster: ChaosCluster) -> None:
        if self.load is not None:
            # pgbench ends by itself once every client lost the killed primary, and prints
            # its count of processed transactions only then.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.load.wait(timeout=5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.load.pid, signal.SIGKILL)
            self.load.wait(timeout=10)
            self.load = None
        if self.replication_delay_s or self.replication_rate_bps:
            for index in range(len(cluster.members)):
                cluster.set_delays(index, {})
        heal_all(cluster)

    def acknowledged_transactions(self) -> int | None:
        """Transactions pgbench reported as processed (each acknowledged; LOAD_ROWS_PER_TX
        rows each); None when its output has no count."""
        if self.log is None:
            return None
        found = re.search(r"number of transactions actually processed: (\d+)", self.log.read_text())
        return None if found is None else int(found.group(1))

    async def rows(self, cluster: ChaosCluster, index: int) -> int:
        conn = await cluster.connect(index)
        try:
            # A seq scan of up to ~1 GB while the replicas catch up: give it time.
            async with asyncio.timeout(90):
                return int(await conn.fetchval(f"SELECT count(*) FROM {LOAD_TABLE}"))
        finally:
            await conn.close()


async def _replica_positions(cluster: ChaosCluster, index: int) -> tuple[int, int]:
    """A replica's (received, replayed) WAL positions in bytes."""
    conn = await cluster.connect(index)
    try:
        async with asyncio.timeout(5):
            row = await conn.fetchrow(
                "SELECT pg_last_wal_receive_lsn() - '0/0' AS received, "
                "pg_last_wal_replay_lsn() - '0/0' AS replayed"
            )
        assert row is not None
        return int(row["received"] or 0), int(row["replayed"] or 0)
    finally:
        await conn.close()


def load_then_kill(
    hold_s: float, *, replication_delay_s: float = 0.0, replication_rate_bps: float = 0.0
) -> tuple[Nemesis, _LoadThenKill]:
    """The async-under-load scenario (gray profile) and its state (the lag at the kill);
    with `replication_delay_s`, the replicas' connections to the primary are that much slower
    each way (named `...-slow-replication`)."""
    state = _LoadThenKill(
        replication_delay_s=replication_delay_s, replication_rate_bps=replication_rate_bps
    )
    suffix = (
        "-throttled-replication"
        if replication_rate_bps
        else ("-slow-replication" if replication_delay_s else "")
    )
    nemesis = Nemesis(
        name=f"async-load-hard-kill{suffix}",
        script=state.script,
        heal=state.heal,
        hold_s=hold_s,
        quick=False,
    )
    return nemesis, state


# ---------------------------------------------------------------- disk full (issue 16)

DISK_FULL_BROKEN_S = 4.0  # how long the replica's store is full before the primary dies
DISK_FULL_FAILOVER_BOUND_S = 30.0


def _fill(cluster: ChaosCluster, index: int) -> None:
    store = cluster.members[index].store
    if store is None:
        raise RuntimeError("the disk-full scenarios need ChaosCluster(fuse_storage=True)")
    store.fill()


def _unfill_all(cluster: ChaosCluster) -> None:
    for member in cluster.members:
        if member.store is not None:
            member.store.unfill()
    heal_all(cluster)


@dataclass(slots=True)
class _ReplicaDiskFull:
    """replica-disk-full-then-primary-killed: a replica's data directory (a FUSE store) fails
    every write with ENOSPC, under the workload, for DISK_FULL_BROKEN_S (its WAL receiver
    cannot write what it receives); then every process of the primary's host is SIGKILLed.
    The broken replica must not be the one promoted. `winner` is who was."""

    winner: list[str | None] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)

    async def script(self, cluster: ChaosCluster, primary: int) -> Injected:
        index = _replica(cluster, primary)
        broken, old = cluster.members[index], cluster.members[primary]
        _fill(cluster, index)
        self.broken.append(broken.name)
        await asyncio.sleep(DISK_FULL_BROKEN_S)
        at = time.monotonic()
        kill_namespace_processes(old.host.netns)
        old.agent.wait(timeout=5)
        found = await _next_primary(cluster, primary, DISK_FULL_FAILOVER_BOUND_S)
        taken = time.monotonic() - at
        self.winner.append(None if found is None else cluster.members[found].name)
        what = (
            f"{broken.name}'s (replica) data directory full (ENOSPC on every write) for "
            f"{DISK_FULL_BROKEN_S:g} s, then every process of {old.name}'s (primary) host "
            "SIGKILLed"
        )
        if found is None:
            return Injected(
                description=f"{what}; no member writable within {DISK_FULL_FAILOVER_BOUND_S:.0f} s",
                instants=(at,),
            )
        return Injected(
            description=f"{what}; {cluster.members[found].name} writable after {taken:.2f} s",
            instants=(at,),
        )


def replica_disk_full(ttl_s: float) -> tuple[Nemesis, _ReplicaDiskFull]:
    state = _ReplicaDiskFull()
    nemesis = Nemesis(
        name="replica-disk-full-then-primary-killed",
        script=state.script,
        heal=_unfill_all,
        hold_s=ttl_s,
        quick=False,
    )
    return nemesis, state


async def _primary_disk_full(cluster: ChaosCluster, primary: int) -> Injected:
    """primary-disk-full: the primary's data directory (a FUSE store) fails every write with
    ENOSPC (PostgreSQL PANICs at its next WAL write and cannot restart); held until another
    member takes writes (at most DISK_FULL_FAILOVER_BOUND_S)."""
    member = cluster.members[primary]
    at = time.monotonic()
    _fill(cluster, primary)
    found = await _next_primary(cluster, primary, DISK_FULL_FAILOVER_BOUND_S)
    taken = time.monotonic() - at
    what = f"{member.name}'s (primary) data directory full (ENOSPC on every write)"
    if found is None:
        return Injected(
            description=f"{what}; no other member writable within "
            f"{DISK_FULL_FAILOVER_BOUND_S:.0f} s",
            instants=(at,),
        )
    return Injected(
        description=f"{what}; {cluster.members[found].name} writable after {taken:.2f} s",
        instants=(at,),
    )


def primary_disk_full(ttl_s: float) -> Nemesis:
    return Nemesis(
        name="primary-disk-full",
        script=_primary_disk_full,
        heal=_unfill_all,
        hold_s=ttl_s,
        must_not_lose=True,
        quick=False,
    )
