"""Faults nobody had listed (issue 16, the hunt): one-way partitions, random packet loss, an
etcd member cut off from its quorum under an agent that keeps talking to it, and slow (not
hung) fsyncs of the primary's pg_wal.

- **One-way partitions** (`netns.Network.drop_one_way`): only the primary's packets to the DCS
  hosts are dropped while theirs reach it (`primary-to-dcs-dropped`), or the reverse
  (`dcs-to-primary-dropped`: its requests reach etcd and are applied, their answers never come
  back); the same between the primary and the other members (`primary-to-replicas-dropped`,
  `replicas-to-primary-dropped`).
- **Random packet loss** (`netns.Network.drop_randomly`, iptables `statistic`): a share of the
  packets, both ways, between the primary and the DCS hosts (`primary-dcs-loss-<p>`) or between
  the primary and the other members (`primary-replication-loss-<p>`).
- **A stale etcd member** (`stale-etcd-member-*`): the etcd member an agent talks to (the one
  its connections go to, read with `ss` in its namespace) is cut from the other etcd members,
  not from any agent: it loses the quorum and can serve only stale reads. Under the primary
  (it must keep its lease through the two others), under the replicas (then the primary's host
  dies: they must see the lease run out through a member that knows), and with the primary on
  the minority side (the primary reaches only that member: it must fence at its deadline).
- **Slow fsync** (`slow-fsync-<ms>ms`): every fsync of a file under the primary's pg_wal takes
  that much longer (tests/chaos/fuse_fs.py, `FuseStore.slow_fsync`); commits slow down but do
  not stop. Needs `ChaosCluster(fuse_storage=True)`.
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.chaos.cluster import ETCD_CLIENT_PORT, ChaosCluster
from tests.chaos.nemesis import Injected, Nemesis, _next_primary, heal_all
from tests.chaos.netns import kill_namespace_processes, run

# -------------------------------------------------------------------- one-way partitions


def _others(cluster: ChaosCluster, primary: int) -> list[str]:
    key = cluster.members[primary].host.key
    return [k for k in cluster.member_keys if k != key]


def _one_way(target: str, *, outgoing: bool) -> tuple[str, Callable[[ChaosCluster, int], str]]:
    """A one-way drop between the primary and the DCS hosts or the other members."""

    def inject(cluster: ChaosCluster, primary: int) -> str:
        member = cluster.members[primary]
        others = list(cluster.dcs_keys) if target == "dcs" else _others(cluster, primary)
        cluster.network.drop_one_way(member.host.key, others, outgoing=outgoing)
        what = "the DCS hosts" if target == "dcs" else "the other members"
        if outgoing:
            return f"{member.name}'s (primary) packets to {what} dropped (theirs reach it)"
        return f"the packets of {what} to {member.name} (primary) dropped (its reach them)"

    name = (
        f"primary-to-{'dcs' if target == 'dcs' else 'replicas'}-dropped"
        if outgoing
        else f"{'dcs' if target == 'dcs' else 'replicas'}-to-primary-dropped"
    )
    return name, inject


def one_way_partitions(ttl_s: float) -> list[Nemesis]:
    """The four one-way partitions around the primary: from the DCS held ttl + 3 s (a lease
    must run out), from the members 6 s (as primary-cut-from-replicas)."""
    out = []
    for target, hold in (("dcs", ttl_s + 3.0), ("replicas", 6.0)):
        for outgoing in (True, False):
            name, inject = _one_way(target, outgoing=outgoing)
            out.append(Nemesis(name=name, inject=inject, hold_s=hold, quick=False))
    return out


# -------------------------------------------------------------------- random packet loss


def packet_loss(target: str, probability: float, hold_s: float) -> Nemesis:
    """`probability` of every packet between the primary and the DCS hosts (`target` "dcs")
    or the other members ("replication") dropped, both ways, for `hold_s`."""

    def inject(cluster: ChaosCluster, primary: int) -> str:
        member = cluster.members[primary]
        others = list(cluster.dcs_keys) if target == "dcs" else _others(cluster, primary)
        cluster.network.drop_randomly(member.host.key, others, probability)
        what = "the DCS hosts" if target == "dcs" else "the other members"
        return (
            f"{probability:.0%} of the packets between {member.name} (primary) and {what} dropped"
        )

    return Nemesis(
        name=f"primary-{target}-loss-{round(probability * 100)}",
        inject=inject,
        hold_s=hold_s,
        quick=False,
    )


# -------------------------------------------------------------------- a stale etcd member

_PEER = re.compile(r"\s(\d+\.\d+\.\d+\.\d+):(\d+)\s*$")


def etcd_member_used(cluster: ChaosCluster, index: int) -> int:
    """The etcd member that member `index`'s agent talks to most: the one with the most
    established TCP connections from its namespace (the watch stream, the pooled requests);
    etcd1 when none is open."""
    host = cluster.members[index].host
    done = run(*host.exec_args("ss", "-Htn", "state", "established"), check=False)
    addresses = {n.host.address: i for i, n in enumerate(cluster.etcd)}
    counts: collections.Counter[int] = collections.Counter()
    for line in done.stdout.splitlines():
        found = _PEER.search(line)
        if found and int(found.group(2)) == ETCD_CLIENT_PORT and found.group(1) in addresses:
            counts[addresses[found.group(1)]] += 1
    return counts.most_common(1)[0][0] if counts else 0


def _cut_from_quorum(cluster: ChaosCluster, etcd_index: int) -> str:
    key = cluster.etcd_keys[etcd_index]
    cluster.network.drop_between(key, [k for k in cluster.etcd_keys if k != key])
    return cluster.etcd[etcd_index].name


def _stale_under_primary(cluster: ChaosCluster, primary: int) -> str:
    name = _cut_from_quorum(cluster, etcd_member_used(cluster, primary))
    return (
        f"{name}, the etcd member {cluster.members[primary].name}'s agent (primary) talks to, "
        "cut from the other etcd members (every agent still reaches every etcd member)"
    )


@dataclass(slots=True)
class _StaleUnderReplicas:
    """The etcd member the replicas' agents talk to cut from the quorum, then every process
    of the primary's host SIGKILLed: the replicas must learn that the lease ran out (from a
    member that has the quorum) and one must take over."""

    winner: list[str | None] = field(default_factory=list)

    async def script(self, cluster: ChaosCluster, primary: int) -> Injected:
        replica = (primary + 1) % len(cluster.members)
        name = _cut_from_quorum(cluster, etcd_member_used(cluster, replica))
        old = cluster.members[primary]
        at = time.monotonic()
        kill_namespace_processes(old.host.netns)
        old.agent.wait(timeout=5)
        found = await _next_primary(cluster, primary, 30.0)
        self.winner.append(None if found is None else cluster.members[found].name)
        what = (
            f"{name}, the etcd member {cluster.members[replica].name}'s agent (replica) talks "
            f"to, cut from the other etcd members; then every process of {old.name}'s host "
            "SIGKILLed"
        )
        took = "none within 30 s" if found is None else f"{cluster.members[found].name} writable "
        took += "" if found is None else f"after {time.monotonic() - at:.2f} s"
        return Injected(description=f"{what}; {took}", instants=(at,))


def _primary_with_stale_member(cluster: ChaosCluster, primary: int) -> str:
    """The primary and one etcd member on the minority side: that member is cut from the
    other two, and the primary from those two as well (it reaches only the stale one; the
    replicas reach every etcd member)."""
    used = etcd_member_used(cluster, primary)
    name = _cut_from_quorum(cluster, used)
    member = cluster.members[primary]
    rest = [k for i, k in enumerate(cluster.etcd_keys) if i != used]
    cluster.network.drop_between(member.host.key, rest)
    return (
        f"{member.name} (primary) and {name} cut from the other etcd members ({member.name} "
        f"reaches only {name}, which has no quorum)"
    )


def stale_etcd_members(ttl_s: float) -> tuple[list[Nemesis], _StaleUnderReplicas]:
    """The three stale-member scenarios (etcd only) and the state of the second."""
    replicas = _StaleUnderReplicas()
    return [
        Nemesis(
            name="stale-etcd-member-under-primary",
            inject=_stale_under_primary,
            hold_s=ttl_s + 3.0,
            must_not_lose=True,
            same_primary=True,
            quick=False,
        ),
        Nemesis(
            name="stale-etcd-member-under-replicas-then-primary-killed",
            script=replicas.script,
            hold_s=ttl_s,
            quick=False,
        ),
        Nemesis(
            name="primary-with-stale-etcd-member",
            inject=_primary_with_stale_member,
            hold_s=ttl_s + 3.0,
            quick=False,
        ),
    ], replicas


# -------------------------------------------------------------------- slow fsync


def _slow_all(cluster: ChaosCluster, added_ms: float) -> None:
    for member in cluster.members:
        if member.store is not None:
            member.store.slow_fsync(added_ms)


def _heal_slow(cluster: ChaosCluster) -> None:
    _slow_all(cluster, 0)
    heal_all(cluster)


def _slow_member(cluster: ChaosCluster, index: int, added_ms: float) -> None:
    store = cluster.members[index].store
    if store is None:
        raise RuntimeError("slow-fsync needs ChaosCluster(fuse_storage=True)")
    store.slow_fsync(added_ms)


def slow_fsync(added_ms: float, hold_s: float, *, same_primary: bool) -> Nemesis:
    """Every fsync of the primary's pg_wal `added_ms` slower for `hold_s`; `same_primary`:
    below the commit bound, no failover may happen."""

    def inject(cluster: ChaosCluster, primary: int) -> str:
        _slow_member(cluster, primary, added_ms)
        name = cluster.members[primary].name
        return f"every fsync of {name}'s (primary) pg_wal {added_ms:g} ms slower"

    return Nemesis(
        name=f"slow-fsync-{added_ms:g}ms",
        inject=inject,
        heal=_heal_slow,
        hold_s=hold_s,
        must_not_lose=same_primary,
        same_primary=same_primary,
        quick=False,
    )


async def _sync_standby(cluster: ChaosCluster, primary: int) -> int | None:
    """The member the primary names its synchronous standby now (pg_stat_replication; in
    quorum mode the first by name of those in the quorum)."""
    conn = await cluster.connect(primary)
    try:
        name = await conn.fetchval(
            "SELECT application_name FROM pg_stat_replication"
            " WHERE sync_state IN ('sync', 'quorum') ORDER BY application_name LIMIT 1"
        )
    finally:
        await conn.close()
    names = [m.name for m in cluster.members]
    return names.index(name) if name in names else None


def slow_fsync_sync_standby(added_ms: float, hold_s: float) -> Nemesis:
    """`[sync]`: every fsync of the synchronous standby's pg_wal `added_ms` slower: each
    commit of the primary waits for that flush (synchronous_commit on: remote flush)."""

    async def script(cluster: ChaosCluster, primary: int) -> Injected:
        at = time.monotonic()
        index = await _sync_standby(cluster, primary)
        if index is None:
            return Injected(description="no synchronous standby to slow down", instants=(at,))
        _slow_member(cluster, index, added_ms)
        return Injected(
            description=f"every fsync of {cluster.members[index].name}'s (synchronous standby) "
            f"pg_wal {added_ms:g} ms slower",
            instants=(at,),
        )

    return Nemesis(
        name=f"slow-fsync-sync-standby-{added_ms:g}ms",
        script=script,
        heal=_heal_slow,
        hold_s=hold_s,
        must_not_lose=True,
        quick=False,
    )
