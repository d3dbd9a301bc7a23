"""Reusable faults. A nemesis injects one fault against the current cluster and heals it.

`inject(cluster, primary)` returns a description of what it did (which member or etcd node);
`heal(cluster)` undoes every fault of the run whatever it was (network rules flushed, frozen
processes continued, dead agents and etcd members started again), so healing is idempotent
and safe after a failed scenario. `hold_s` is how long the fault stays in place.

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

import signal
from collections.abc import Callable
from dataclasses import dataclass

from tests.chaos.cluster import ChaosCluster


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Nemesis:
    name: str
    inject: Callable[[ChaosCluster, int], str]
    hold_s: float
    must_not_lose: bool = False  # async replication: the fault must lose no acknowledged write
    quick: bool = True  # part of the quick profile (every nemesis is part of the random mix)
    heal: Callable[[ChaosCluster], None] = heal_all


def nemeses(ttl_s: float, *, dcs: str = "etcd") -> list[Nemesis]:
    """Every nemesis for a cluster whose DCS is `dcs` ("etcd" or "kubernetes"), with holds
    long enough for the fault to matter (a lease to expire)."""
    expire = ttl_s + 3.0
    every = _every(expire)
    if dcs == "etcd":
        return every
    frozen = Nemesis(name="dcs-frozen", inject=_freeze_apiserver, hold_s=expire)
    out = [n for n in every if n.name not in ("etcd-all-stopped", "etcd-leader-killed")]
    index = next(i for i, n in enumerate(out) if n.name == "dcs-majority-cut")
    return [*out[: index + 1], frozen, *out[index + 1 :]]


def dcs_outage_with_dead_replica_agent(ttl_s: float) -> Nemesis:
    """Not in the quick profile: the failsafe profile's case where confirmation must fail."""
    return Nemesis(
        name="dcs-outage-replica-agent-killed",
        inject=_dcs_outage_and_replica_agent_killed,
        hold_s=ttl_s + 3.0,
        quick=False,
    )


def _every(expire: float) -> list[Nemesis]:
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
    ]
