"""Faults no profile had (session 24's hunt; tests/chaos/test_unlisted_faults.py).

- **A second agent with a member's name** (`duplicate-name-of-primary`,
  `duplicate-name-of-sync-standby`): an agent configured with the name of a running member
  (a copied configuration, a cloned VM) is started on a spare host with an empty data
  directory, as an operator adding a member would. Needs `ChaosCluster(spare_hosts=1)`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import pwd
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field

import aiohttp
import yaml

from tests.chaos.cluster import AGENT_SRC, TOKEN, ChaosCluster, Member, Proc
from tests.chaos.nemesis import Injected, Nemesis, _next_primary, _writable, heal_all
from tests.chaos.nemesis_hunt import _sync_standby
from tests.chaos.netns import kill_namespace_processes, run

# How long the second agent may take to see the name taken and exit (its start: the DCS read
# and one REST call to the member that holds the name).
DUPLICATE_EXIT_BOUND_S = 10.0


@dataclass(slots=True)
class DuplicateName:
    """Start an agent named like member `target(cluster, primary)` on spare host `s1`; the
    heal kills it and removes its directory. `exit_codes` gets, per run, its exit code when it
    exited within the hold (None: it still ran at the heal); `exited_after_s` when."""

    role: str  # "primary" or "sync-standby"
    exit_codes: list[int | None] = field(default_factory=list)
    exited_after_s: list[float | None] = field(default_factory=list)
    impostor: Member | None = None

    async def script(self, cluster: ChaosCluster, primary: int) -> Injected:
        index = primary if self.role == "primary" else await _sync_standby_of(cluster, primary)
        name = cluster.members[index].name
        host = cluster.network.hosts["s1"]
        base = cluster.base / "impostor"
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        os.chmod(base, 0o755)
        entry = pwd.getpwnam("postgres")
        os.chown(base, entry.pw_uid, entry.pw_gid)
        config = base / "pgwarden.yaml"
        member = Member(
            name=name,
            host=host,
            base=base,
            agent=Proc(
                host=host,
                argv=[sys.executable, "-m", "agent", "run", "--config", str(config)],
                log=base / "agent.log",
                cwd=AGENT_SRC,
            ),
        )
        config.write_text(yaml.safe_dump(cluster.config_for(member), sort_keys=False))
        self.impostor = member
        at = time.monotonic()
        member.agent.start()
        code: int | None = None
        while time.monotonic() - at < DUPLICATE_EXIT_BOUND_S:
            popen = member.agent.popen
            if popen is not None and popen.poll() is not None:
                code = popen.returncode
                break
            await asyncio.sleep(0.1)
        took = time.monotonic() - at if code is not None else None
        self.exit_codes.append(code)
        self.exited_after_s.append(took)
        state = "still running" if code is None else f"exited with {code} after {took:.2f} s"
        return Injected(
            description=f"a second agent named {name} ({self.role}) started on {host.key} with "
            f"an empty data directory: {state}",
            instants=(at,),
        )

    def heal(self, cluster: ChaosCluster) -> None:
        if self.impostor is not None:
            self.impostor.agent.signal(signal.SIGKILL)
            kill_namespace_processes(self.impostor.host.netns)
            self.impostor.agent.wait(timeout=5)
        heal_all(cluster)


async def _sync_standby_of(cluster: ChaosCluster, primary: int) -> int:
    found = await _sync_standby(cluster, primary)
    return found if found is not None else (primary + 1) % len(cluster.members)


def duplicate_name(role: str, hold_s: float) -> tuple[Nemesis, DuplicateName]:
    """The duplicate-name fault against the primary's name or the synchronous standby's."""
    state = DuplicateName(role=role)
    return Nemesis(
        name=f"duplicate-name-of-{role}",
        script=state.script,
        heal=state.heal,
        hold_s=hold_s,
        must_not_lose=True,
        same_primary=True,
        quick=False,
    ), state


# -------------------------------------------------------------------- the fencer frozen


def fencer_pids(cluster: ChaosCluster, index: int) -> list[int]:
    """The member's fencer process(es): an `agent.fencer` argument, in its namespace."""
    done = run("ip", "netns", "pids", cluster.members[index].host.netns, check=False)
    found = []
    for word in done.stdout.split():
        with (
            contextlib.suppress(OSError, ValueError),
            open(f"/proc/{int(word)}/cmdline", "rb") as f,
        ):
            if b"agent.fencer" in f.read().split(b"\0"):
                found.append(int(word))
    return found


@dataclass(slots=True)
class FrozenFencer:
    """SIGSTOP of the primary's fencer, its agent and PostgreSQL alive (a fencer starved or
    stopped by a debugger, a cgroup freezer of its own sidecar): the agent cannot arm it past
    the deadline it holds. The heal SIGCONTs it (it then finds its deadline long past)."""

    stopped: list[int] = field(default_factory=list)

    def inject(self, cluster: ChaosCluster, primary: int) -> str:
        pids = fencer_pids(cluster, primary)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                self.stopped.append(pid)
        return f"the fencer of {cluster.members[primary].name} (primary) SIGSTOPped: {pids}"

    def heal(self, cluster: ChaosCluster) -> None:
        for pid in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.stopped.clear()
        heal_all(cluster)


# How long the fencer stays frozen: three ttls, time for the primary to step down at its
# deadline (under a ttl) and for another member to take over (a ttl more at most).
FENCER_FROZEN_TTLS = 3.0


def fencer_frozen(ttl_s: float) -> Nemesis:
    """Held three ttls: the agent must step down by itself at the deadline the frozen fencer
    holds, losing nothing (a self-fencing by the loop, not by the fencer), and hand the lease
    on, since it cannot lead without a fencer."""
    state = FrozenFencer()
    return Nemesis(
        name="primary-fencer-frozen",
        inject=state.inject,
        heal=state.heal,
        hold_s=FENCER_FROZEN_TTLS * ttl_s,
        must_not_lose=True,
        quick=False,
    )


# -------------------------------------------------------------------- killed mid-switchover


async def _not_writable(cluster: ChaosCluster, index: int, bound_s: float) -> float | None:
    """Seconds until member `index`'s PostgreSQL stops taking writes (polled every 20 ms)."""
    at = time.monotonic()
    while time.monotonic() - at < bound_s:
        if not await _writable(cluster, index):
            return time.monotonic() - at
        await asyncio.sleep(0.02)
    return None


async def _request_switchover(cluster: ChaosCluster, leader: int, candidate: int) -> str:
    """POST /switchover to the leader naming `candidate`; retried for up to 10 s while it is
    refused (a request of the previous scenario still pending, the candidate not caught up
    yet). The last status and error body."""
    url = cluster.members[leader].api_url + "/switchover"
    body = {"leader": cluster.members[leader].name, "candidate": cluster.members[candidate].name}
    answer = "no answer"
    deadline = time.monotonic() + 10.0
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.post(
                    url,
                    json=body,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=aiohttp.ClientTimeout(total=3),
                ) as resp:
                    answer = f"{resp.status} {(await resp.text()).strip()}"
                    if resp.status == 202:
                        return answer
            await asyncio.sleep(0.3)
    return answer


@dataclass(slots=True)
class KilledMidSwitchover:
    """A switchover to the next member, and the moment the old primary stops taking writes
    (its demotion has begun, the candidate has not promoted yet) a SIGKILL of the agent of
    `whose` ("leader": the old primary's; "candidate": the new one's), started again at once
    as a container restart would (PostgreSQL and the fencer live on)."""

    whose: str
    taken_s: list[float | None] = field(default_factory=list)

    async def script(self, cluster: ChaosCluster, primary: int) -> Injected:
        candidate = (primary + 1) % len(cluster.members)
        status = await _request_switchover(cluster, primary, candidate)
        stopped = await _not_writable(cluster, primary, 15.0)
        at = time.monotonic()
        victim = cluster.members[primary if self.whose == "leader" else candidate]
        victim.agent.signal(signal.SIGKILL)
        victim.agent.wait(timeout=5)
        victim.agent.start()
        found = await _next_primary(cluster, primary, 30.0)
        self.taken_s.append(None if found is None else time.monotonic() - at)
        new = "nobody within 30 s" if found is None else cluster.members[found].name
        return Injected(
            description=f"switchover {cluster.members[primary].name} -> "
            f"{cluster.members[candidate].name} requested ({status}); "
            + (
                "the old primary never stopped taking writes"
                if stopped is None
                else f"{stopped:.2f} s later it stopped taking writes"
            )
            + f": SIGKILL of {victim.name}'s agent ({self.whose}), started again at once; "
            f"then {new} took writes",
            instants=(at,),
        )


def killed_mid_switchover(whose: str, ttl_s: float) -> tuple[Nemesis, KilledMidSwitchover]:
    state = KilledMidSwitchover(whose=whose)
    return Nemesis(
        name=f"switchover-{whose}-agent-killed",
        script=state.script,
        hold_s=1.0,
        must_not_lose=True,
        quick=False,
    ), state


# -------------------------------------------------------------------- the sync standby cut off


@dataclass(slots=True)
class SyncStandbyCut:
    """`[sync]`: the primary cut from its synchronous standby only (both still reach the DCS
    and the other replica), then after `kill_after_s` every process of the primary's host
    SIGKILLed: whoever is promoted must hold every acknowledged commit."""

    kill_after_s: float
    winners: list[str | None] = field(default_factory=list)

    async def script(self, cluster: ChaosCluster, primary: int) -> Injected:
        at = time.monotonic()
        index = await _sync_standby(cluster, primary)
        if index is None:
            return Injected(description="no synchronous standby to cut off", instants=(at,))
        old, standby = cluster.members[primary], cluster.members[index]
        cluster.network.drop_between(old.host.key, [standby.host.key])
        await asyncio.sleep(self.kill_after_s)
        killed = time.monotonic()
        kill_namespace_processes(old.host.netns)
        old.agent.wait(timeout=5)
        found = await _next_primary(cluster, primary, 30.0)
        self.winners.append(None if found is None else cluster.members[found].name)
        new = "nobody within 30 s" if found is None else cluster.members[found].name
        return Injected(
            description=f"{old.name} (primary) cut from {standby.name} (its synchronous "
            f"standby) only; {self.kill_after_s:g} s later every process of {old.name}'s host "
            f"SIGKILLed; {new} took writes",
            instants=(at, killed),
        )


def sync_standby_cut_then_primary_killed(kill_after_s: float) -> Nemesis:
    state = SyncStandbyCut(kill_after_s=kill_after_s)
    return Nemesis(
        name=f"sync-standby-cut-then-primary-killed-{kill_after_s:g}s",
        script=state.script,
        hold_s=1.0,
        faults=2,
        must_not_lose=True,
        quick=False,
    )


# -------------------------------------------------------------------- the DCS rolled back

LEADER_KEY = b"/pgwarden/chaos/leader"


async def _etcd_post(cluster: ChaosCluster, path: str, body: dict[str, object]) -> object:
    """One request to the etcd JSON gateway of the first member that answers."""
    async with aiohttp.ClientSession() as session:
        for node in cluster.etcd:
            try:
                async with session.post(
                    node.client_url + path, json=body, timeout=aiohttp.ClientTimeout(total=3)
                ) as resp:
                    return await resp.json()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
    raise RuntimeError(f"no etcd member answered {path}")


@dataclass(slots=True)
class RolledBack:
    """`[sync]`: the DCS's leader key put back to name the member that is neither the primary
    nor its synchronous standby (the asynchronous replica), on a lease of its own, as a DCS
    restored from a backup taken while that member led (or a key written by a second agent
    under its name) would show it. The key names a member outside the synchronous set."""

    named: list[str] = field(default_factory=list)

    async def script(self, cluster: ChaosCluster, primary: int) -> Injected:
        at = time.monotonic()
        standby = await _sync_standby(cluster, primary)
        index = next(i for i in range(len(cluster.members)) if i not in (primary, standby))
        name = cluster.members[index].name
        grant = await _etcd_post(cluster, "/v3/lease/grant", {"TTL": 6})
        lease = int(grant["ID"]) if isinstance(grant, dict) else 0
        await _etcd_post(
            cluster,
            "/v3/kv/put",
            {
                "key": base64.b64encode(LEADER_KEY).decode(),
                "value": base64.b64encode(name.encode()).decode(),
                "lease": lease,
            },
        )
        self.named.append(name)
        return Injected(
            description=f"the leader key rewritten to name {name} (a replica outside the set; "
            f"primary {cluster.members[primary].name}, synchronous standby "
            f"{'none' if standby is None else cluster.members[standby].name})",
            instants=(at,),
        )


def leader_key_rolled_back(ttl_s: float) -> tuple[Nemesis, RolledBack]:
    state = RolledBack()
    return Nemesis(
        name="leader-key-names-async-replica",
        script=state.script,
        hold_s=ttl_s + 3.0,
        must_not_lose=True,
        quick=False,
    ), state


# -------------------------------------------------------------------- quorum lost mid-switchover


@dataclass(slots=True)
class QuorumLostMidSwitchover:
    """A switchover to the next member, and the moment the old primary stops taking writes
    two of the three etcd hosts cut from every host (no quorum: nobody can release, take or
    renew a key), for `hold_s` (the nemesis's hold), then healed."""

    stopped_s: list[float | None] = field(default_factory=list)

    async def script(self, cluster: ChaosCluster, primary: int) -> Injected:
        candidate = (primary + 1) % len(cluster.members)
        status = await _request_switchover(cluster, primary, candidate)
        stopped = await _not_writable(cluster, primary, 15.0)
        at = time.monotonic()
        cut = cluster.etcd_keys[-2:]
        for key in cut:
            cluster.network.isolate(key)
        self.stopped_s.append(stopped)
        return Injected(
            description=f"switchover {cluster.members[primary].name} -> "
            f"{cluster.members[candidate].name} requested ({status}); "
            + (
                "never stopped"
                if stopped is None
                else f"stopped taking writes {stopped:.2f} s later"
            )
            + f": etcd hosts {', '.join(cut)} cut from every host (no quorum)",
            instants=(at,),
        )


def quorum_lost_mid_switchover(ttl_s: float) -> Nemesis:
    state = QuorumLostMidSwitchover()
    return Nemesis(
        name="switchover-etcd-quorum-lost",
        script=state.script,
        hold_s=ttl_s + 3.0,
        must_not_lose=True,
        quick=False,
    )


# -------------------------------------------------------------------- replicas deaf to the DCS


def _replicas_deaf_then_primary_killed(cluster: ChaosCluster, primary: int) -> str:
    """The DCS's packets to both replicas dropped (their requests still reach etcd and are
    applied, the answers never come back), then every process of the primary's host
    SIGKILLed: a replica's acquire may be applied unanswered."""
    replicas = [m for i, m in enumerate(cluster.members) if i != primary]
    for member in replicas:
        cluster.network.drop_one_way(member.host.key, list(cluster.dcs_keys), outgoing=False)
    old = cluster.members[primary]
    kill_namespace_processes(old.host.netns)
    old.agent.wait(timeout=5)
    names = ", ".join(m.name for m in replicas)
    return (
        f"etcd's packets to {names} (replicas) dropped, then every process of {old.name}'s "
        "host SIGKILLed"
    )


def replicas_deaf_then_primary_killed(ttl_s: float) -> Nemesis:
    return Nemesis(
        name="dcs-to-replicas-dropped-then-primary-killed",
        inject=_replicas_deaf_then_primary_killed,
        hold_s=ttl_s + 3.0,
        quick=False,
    )


# -------------------------------------------------------------------- fencer killed, agent frozen

# How long after the fencer's death the agent freezes: less than the loop's pause between
# renewals (loop_wait_s 1 here), so that the next renewal's call does not replace it first.
FENCER_KILLED_FREEZE_AFTER_S = 0.5


async def _fencer_killed_then_agent_frozen(cluster: ChaosCluster, primary: int) -> Injected:
    """SIGKILL of the primary's fencer, then SIGSTOP of its agent 0.5 s later (two faults; a
    node in trouble): only a fencer replaced in between stops PostgreSQL at the deadline."""
    member = cluster.members[primary]
    at = time.monotonic()
    killed = fencer_pids(cluster, primary)
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(FENCER_KILLED_FREEZE_AFTER_S)
    frozen = time.monotonic()
    member.agent.signal(signal.SIGSTOP)
    return Injected(
        description=f"the fencer of {member.name} (primary) SIGKILLed {killed}, its agent "
        f"SIGSTOPped {FENCER_KILLED_FREEZE_AFTER_S:g} s later (fencers then: "
        f"{fencer_pids(cluster, primary)})",
        instants=(at, frozen),
    )


def fencer_killed_then_agent_frozen(ttl_s: float) -> Nemesis:
    return Nemesis(
        name="primary-fencer-killed-then-agent-frozen",
        script=_fencer_killed_then_agent_frozen,
        hold_s=ttl_s + 3.0,
        faults=2,
        must_not_lose=True,
        quick=False,
    )
