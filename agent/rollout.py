"""The rollout of an `OnDelete` StatefulSet, as a pure function (`pgwarden ctl rollout` is the
thin shell over it, agent/ctl_rollout.py).

The StatefulSet controller of an `OnDelete` StatefulSet creates a deleted pod again from the
current template (revision `status.updateRevision`); a pod runs the revision in its
`controller-revision-hash` label. A rollout deletes the outdated pods in this order:

1. the replicas, one at a time (highest ordinal first, as the controller would), each only
   once the cluster is healthy again after the previous one and the PodDisruptionBudget
   allows a disruption;
2. then a switchover from the (outdated) leader to an updated, streaming replica;
3. then the old leader, now a replica.

`next_step(observation)` says what to do now; it looks only at what is observed, so a rollout
that stopped half-way continues from where the pods are when run again. `plan(observation)`
is the whole remaining sequence, assuming each step succeeds (`--dry-run`).

Healthy means: a leader, no pending switchover, not paused, every pod of the StatefulSet
present (not being deleted) with a member record, the leader running and every other member
streaming from the leader (or, cascading, from a streaming member).

The `from_*` parsers read the Kubernetes objects and the `/cluster` body tolerantly; what
they cannot read becomes a value that makes the cluster unhealthy, never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

REVISION_LABEL = "controller-revision-hash"


# ----------------------------------------------------------------------------- observations


@dataclass(frozen=True, slots=True, kw_only=True)
class StatefulSet:
    name: str
    on_delete: bool  # spec.updateStrategy.type == OnDelete
    update_revision: str  # status.updateRevision ("" when unknown)
    replicas: int
    selector: Mapping[str, str]  # spec.selector.matchLabels


@dataclass(frozen=True, slots=True, kw_only=True)
class Pod:
    name: str
    revision: str  # its controller-revision-hash label ("" when absent)
    uid: str = ""
    deleting: bool = False  # metadata.deletionTimestamp is set


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberView:
    name: str
    state: str  # running, streaming, ... (the member record's state)
    upstream: str | None = None  # whom a replica streams from
    lag_bytes: int | None = None
    replicatefrom: str | None = None  # its replicatefrom tag: a cascading replica by choice


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterState:
    leader: str | None
    members: tuple[MemberView, ...]
    switchover_pending: bool = False
    paused: bool = False

    def member(self, name: str) -> MemberView | None:
        return next((m for m in self.members if m.name == name), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    statefulset: StatefulSet
    pods: tuple[Pod, ...]
    cluster: ClusterState
    # The smallest status.disruptionsAllowed of the PodDisruptionBudgets that select the
    # StatefulSet's pods; None when none does.
    disruptions_allowed: int | None = None


# ----------------------------------------------------------------------------- steps


@dataclass(frozen=True, slots=True)
class Done:
    revision: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """The rollout cannot be done by this command (it would never become possible by waiting)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unhealthy:
    """Wait (after a step of ours) or refuse (before the first): the cluster is not healthy."""

    reason: str


@dataclass(frozen=True, slots=True)
class WaitBudget:
    """The PodDisruptionBudget allows no disruption now."""

    pod: str


@dataclass(frozen=True, slots=True)
class DeletePod:
    pod: str
    old_revision: str
    new_revision: str
    was_leader: bool = False  # the old leader, after the switchover


@dataclass(frozen=True, slots=True)
class Switchover:
    leader: str
    candidate: str


Step = Done | Refuse | Unhealthy | WaitBudget | DeletePod | Switchover


# ----------------------------------------------------------------------------- the decision


def _ordinal(name: str) -> int:
    found = re.search(r"-(\d+)$", name)
    return int(found.group(1)) if found else -1


def health_problem(obs: Observation) -> str | None:
    """Why the cluster is not healthy enough for the next step, or None."""
    cluster, sts = obs.cluster, obs.statefulset
    if cluster.leader is None:
        return "no leader"
    if cluster.switchover_pending:
        return "a switchover is pending"
    if cluster.paused:
        return "the cluster is paused (maintenance mode)"
    names = {p.name for p in obs.pods}
    if len(names) < sts.replicas:
        return f"{len(names)} of {sts.replicas} pods exist"
    for pod in sorted(obs.pods, key=lambda p: p.name):
        member = cluster.member(pod.name)
        if pod.deleting:
            return f"pod {pod.name} is being deleted"
        if member is None:
            return f"pod {pod.name} has no member record yet"
        if pod.name == cluster.leader:
            if member.state != "running":
                return f"the leader {pod.name} is {member.state}"
        elif not _streams(member, cluster):
            upstream = f" from {member.upstream}" if member.upstream else ""
            return f"{pod.name} is {member.state}{upstream}, not streaming from the leader"
    return None


def _streams(member: MemberView, cluster: ClusterState, depth: int = 0) -> bool:
    """Streaming from the leader, or (its replicatefrom tag) from a member that streams."""
    if member.state != "streaming" or member.upstream is None or depth > len(cluster.members):
        return False
    if member.upstream == cluster.leader:
        return True
    if member.upstream != member.replicatefrom:
        return False  # e.g. still from the old leader after a switchover
    upstream = cluster.member(member.upstream)
    return upstream is not None and _streams(upstream, cluster, depth + 1)


def next_step(obs: Observation) -> Step:
    """What to do now (see the module docstring)."""
    sts, cluster = obs.statefulset, obs.cluster
    if not sts.on_delete:
        return Refuse(f"statefulset {sts.name} does not use updateStrategy OnDelete")
    if not sts.update_revision:
        return Refuse(f"statefulset {sts.name} has no status.updateRevision yet")
    problem = health_problem(obs)
    outdated = [p for p in obs.pods if p.revision != sts.update_revision]
    if problem is not None:
        return Unhealthy(problem)
    if not outdated:
        return Done(sts.update_revision)
    replicas = sorted(
        (p for p in outdated if p.name != cluster.leader), key=lambda p: -_ordinal(p.name)
    )
    if replicas:
        pod = replicas[0]
        if obs.disruptions_allowed is not None and obs.disruptions_allowed <= 0:
            return WaitBudget(pod.name)
        return DeletePod(pod.name, pod.revision, sts.update_revision)
    assert cluster.leader is not None  # health_problem checked it
    updated = [
        cluster.member(p.name)
        for p in obs.pods
        if p.name != cluster.leader and p.revision == sts.update_revision
    ]
    candidates = sorted(
        (m for m in updated if m is not None),
        key=lambda m: (m.lag_bytes if m.lag_bytes is not None else 1 << 62, m.name),
    )
    if not candidates:
        return Refuse(
            f"no updated replica to switch over to: the leader {cluster.leader} is the only "
            "member (delete its pod yourself: that is downtime)"
        )
    return Switchover(cluster.leader, candidates[0].name)


def _assume(obs: Observation, step: DeletePod | Switchover) -> Observation:
    """The observation after `step` succeeded (for the dry-run plan)."""
    cluster = obs.cluster
    if isinstance(step, DeletePod):
        pods = tuple(
            replace(p, revision=step.new_revision) if p.name == step.pod else p for p in obs.pods
        )
        return replace(obs, pods=pods)
    members = tuple(
        replace(m, state="running", upstream=None)
        if m.name == step.candidate
        else replace(m, state="streaming", upstream=step.candidate)
        for m in cluster.members
    )
    return replace(obs, cluster=replace(cluster, leader=step.candidate, members=members))


def plan(obs: Observation) -> tuple[Step, ...]:
    """The remaining steps, assuming each succeeds; ends with the step that stops it (Done,
    Refuse, Unhealthy or WaitBudget)."""
    steps: list[Step] = []
    for _ in range(2 * len(obs.pods) + 2):
        step = next_step(obs)
        if isinstance(step, DeletePod) and step.pod == obs.cluster.leader:
            raise AssertionError("the plan deletes the leader")  # never: next_step's rule
        steps.append(step)
        if not isinstance(step, DeletePod | Switchover):
            break
        if isinstance(step, DeletePod):
            was_leader = any(isinstance(s, Switchover) and s.leader == step.pod for s in steps)
            steps[-1] = replace(step, was_leader=was_leader)
        obs = _assume(obs, step)
    return tuple(steps)


def describe(step: Step) -> str:
    """One progress line for a step."""
    match step:
        case Done(revision):
            return f"done: every pod runs revision {revision}"
        case Refuse(reason):
            return f"refused: {reason}"
        case Unhealthy(reason):
            return f"cluster not healthy: {reason}"
        case WaitBudget(pod):
            return f"wait: the PodDisruptionBudget allows no disruption (next: pod {pod})"
        case DeletePod(pod, old, new, was_leader):
            role = "old leader" if was_leader else "replica"
            return f"delete pod {pod} ({role}, revision {old or '?'} -> {new})"
        case Switchover(leader, candidate):
            return f"switchover {leader} -> {candidate}"


# ----------------------------------------------------------------------------- parsers


def _dict(value: object) -> Mapping[str, object]:
    return value if isinstance(value, dict) else {}


def _labels(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in _dict(value).items()}


def statefulset_from(obj: Mapping[str, object]) -> StatefulSet:
    meta, spec, status = (
        _dict(obj.get("metadata")),
        _dict(obj.get("spec")),
        _dict(obj.get("status")),
    )
    replicas = spec.get("replicas", 1)
    return StatefulSet(
        name=str(meta.get("name", "?")),
        on_delete=_dict(spec.get("updateStrategy")).get("type") == "OnDelete",
        update_revision=str(status.get("updateRevision") or ""),
        replicas=replicas if isinstance(replicas, int) and not isinstance(replicas, bool) else 1,
        selector=_labels(_dict(spec.get("selector")).get("matchLabels")),
    )


def pods_from(items: Sequence[object]) -> tuple[Pod, ...]:
    pods = []
    for item in items:
        meta = _dict(_dict(item).get("metadata"))
        if not isinstance(meta.get("name"), str):
            continue
        pods.append(
            Pod(
                name=str(meta["name"]),
                revision=_labels(meta.get("labels")).get(REVISION_LABEL, ""),
                uid=str(meta.get("uid") or ""),
                deleting=meta.get("deletionTimestamp") is not None,
            )
        )
    return tuple(sorted(pods, key=lambda p: p.name))


def cluster_from(body: Mapping[str, object]) -> ClusterState:
    """The `/cluster` body of the members' REST API."""
    members = []
    listed = body.get("members")
    for item in listed if isinstance(listed, list) else []:
        entry = _dict(item)
        if not isinstance(entry.get("name"), str):
            continue
        lag = entry.get("lag_bytes")
        upstream = entry.get("upstream")
        replicatefrom = _dict(entry.get("tags")).get("replicatefrom")
        members.append(
            MemberView(
                name=str(entry["name"]),
                state=str(entry.get("state") or "unknown"),
                upstream=upstream if isinstance(upstream, str) else None,
                lag_bytes=lag if isinstance(lag, int) and not isinstance(lag, bool) else None,
                replicatefrom=replicatefrom if isinstance(replicatefrom, str) else None,
            )
        )
    leader = body.get("leader")
    return ClusterState(
        leader=leader if isinstance(leader, str) else None,
        members=tuple(members),
        switchover_pending=isinstance(body.get("switchover"), dict),
        paused=body.get("paused") is True,
    )


def disruptions_from(items: Sequence[object], pod_labels: Mapping[str, str]) -> int | None:
    """The smallest disruptionsAllowed of the PodDisruptionBudgets whose matchLabels select
    pods with `pod_labels` (a budget without a status yet allows none); None when none does."""
    allowed: list[int] = []
    for item in items:
        pdb = _dict(item)
        selector = _labels(_dict(_dict(pdb.get("spec")).get("selector")).get("matchLabels"))
        if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
            continue
        value = _dict(pdb.get("status")).get("disruptionsAllowed", 0)
        allowed.append(value if isinstance(value, int) and not isinstance(value, bool) else 0)
    return min(allowed) if allowed else None
