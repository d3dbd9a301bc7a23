"""The rollout plan of `pgwarden ctl rollout` (agent/rollout.py): a pure function of the
StatefulSet, its pods, the PodDisruptionBudget and the cluster view."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent import rollout
from agent.rollout import (
    ClusterState,
    DeletePod,
    Done,
    MemberView,
    Observation,
    Pod,
    Refuse,
    StatefulSet,
    Switchover,
    Unhealthy,
    WaitBudget,
    next_step,
    plan,
)

NEW, OLD = "rev-2", "rev-1"


def _obs(
    revisions: dict[str, str] | None = None,
    *,
    leader: str | None = "pg-0",
    states: dict[str, str] | None = None,
    budget: int | None = 1,
    on_delete: bool = True,
) -> Observation:
    revisions = revisions or {"pg-0": OLD, "pg-1": OLD, "pg-2": OLD}
    states = states or {}
    members = tuple(
        MemberView(
            name=name,
            state=states.get(name, "running" if name == leader else "streaming"),
            upstream=None if name == leader else leader,
            lag_bytes=0,
        )
        for name in revisions
    )
    return Observation(
        statefulset=StatefulSet(
            name="pg",
            on_delete=on_delete,
            update_revision=NEW,
            replicas=len(revisions),
            selector={"app": "pg"},
        ),
        pods=tuple(Pod(name=n, revision=r, uid=f"uid-{n}") for n, r in revisions.items()),
        cluster=ClusterState(leader=leader, members=members),
        disruptions_allowed=budget,
    )


def test_the_plan_updates_replicas_then_switches_over_then_the_old_leader() -> None:
    assert plan(_obs()) == (
        DeletePod("pg-2", OLD, NEW),
        DeletePod("pg-1", OLD, NEW),
        Switchover("pg-0", "pg-1"),
        DeletePod("pg-0", OLD, NEW, was_leader=True),
        Done(NEW),
    )


def test_a_rollout_run_again_continues_from_the_updated_pods() -> None:
    half = _obs({"pg-0": OLD, "pg-1": NEW, "pg-2": NEW})
    assert next_step(half) == Switchover("pg-0", "pg-1")
    after = _obs({"pg-0": OLD, "pg-1": NEW, "pg-2": NEW}, leader="pg-1")
    assert next_step(after) == DeletePod("pg-0", OLD, NEW)
    assert next_step(_obs(dict.fromkeys(("pg-0", "pg-1", "pg-2"), NEW))) == Done(NEW)


def test_the_leader_is_never_deleted_while_it_leads() -> None:
    for leader in ("pg-0", "pg-1", "pg-2"):
        for step in plan(_obs(leader=leader)):
            if isinstance(step, DeletePod) and not step.was_leader:
                assert step.pod != leader


def test_the_switchover_goes_to_the_updated_replica_with_least_lag() -> None:
    obs = _obs({"pg-0": OLD, "pg-1": NEW, "pg-2": NEW})
    members = tuple(
        replace(m, lag_bytes=500) if m.name == "pg-1" else m for m in obs.cluster.members
    )
    obs = replace(obs, cluster=replace(obs.cluster, members=members))
    assert next_step(obs) == Switchover("pg-0", "pg-2")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"leader": None}, "no leader"),
        ({"states": {"pg-1": "starting"}}, "pg-1 is starting"),
        ({"states": {"pg-0": "stopped"}}, "the leader pg-0 is stopped"),
    ],
)
def test_an_unhealthy_cluster_gets_no_step(change: dict[str, object], reason: str) -> None:
    step = next_step(_obs(**change))  # type: ignore[arg-type]
    assert isinstance(step, Unhealthy)
    assert reason in step.reason


def test_a_pending_switchover_a_pause_or_a_missing_pod_is_unhealthy() -> None:
    obs = _obs()
    pending = replace(obs, cluster=replace(obs.cluster, switchover_pending=True))
    paused = replace(obs, cluster=replace(obs.cluster, paused=True))
    missing = replace(obs, pods=obs.pods[:2])
    deleting = replace(obs, pods=(*obs.pods[:2], replace(obs.pods[2], deleting=True)))
    no_record = replace(obs, cluster=replace(obs.cluster, members=obs.cluster.members[:2]))
    for bad, reason in (
        (pending, "switchover is pending"),
        (paused, "paused"),
        (missing, "2 of 3 pods exist"),
        (deleting, "pg-2 is being deleted"),
        (no_record, "pg-2 has no member record"),
    ):
        step = next_step(bad)
        assert isinstance(step, Unhealthy) and reason in step.reason


def test_a_replica_streaming_from_the_old_leader_is_not_healthy_yet() -> None:
    obs = _obs({"pg-0": OLD, "pg-1": NEW, "pg-2": NEW}, leader="pg-1")
    members = tuple(
        replace(m, upstream="pg-0") if m.name == "pg-2" else m for m in obs.cluster.members
    )
    stale = replace(obs, cluster=replace(obs.cluster, members=members))
    assert isinstance(next_step(stale), Unhealthy)


def test_a_cascading_replica_by_its_replicatefrom_tag_counts_as_streaming() -> None:
    obs = _obs({"pg-0": NEW, "pg-1": NEW, "pg-2": OLD})
    members = tuple(
        replace(m, upstream="pg-1", replicatefrom="pg-1") if m.name == "pg-2" else m
        for m in obs.cluster.members
    )
    cascading = replace(obs, cluster=replace(obs.cluster, members=members))
    assert next_step(cascading) == DeletePod("pg-2", OLD, NEW)


def test_no_pod_is_deleted_while_the_budget_allows_no_disruption() -> None:
    assert next_step(_obs(budget=0)) == WaitBudget("pg-2")
    assert plan(_obs(budget=0)) == (WaitBudget("pg-2"),)
    # Without a budget there is nothing to respect; the switchover needs none.
    assert next_step(_obs(budget=None)) == DeletePod("pg-2", OLD, NEW)
    half = _obs({"pg-0": OLD, "pg-1": NEW, "pg-2": NEW}, budget=0)
    assert next_step(half) == Switchover("pg-0", "pg-1")


def test_refusals() -> None:
    assert isinstance(next_step(_obs(on_delete=False)), Refuse)
    alone = _obs({"pg-0": OLD})
    step = next_step(alone)
    assert isinstance(step, Refuse) and "only member" in step.reason
    no_revision = _obs()
    no_revision = replace(
        no_revision, statefulset=replace(no_revision.statefulset, update_revision="")
    )
    assert isinstance(next_step(no_revision), Refuse)


def test_parsers_read_the_kubernetes_objects_and_the_cluster_body() -> None:
    sts = rollout.statefulset_from(
        {
            "metadata": {"name": "pg"},
            "spec": {
                "replicas": 3,
                "updateStrategy": {"type": "OnDelete"},
                "selector": {"matchLabels": {"app": "pg"}},
            },
            "status": {"updateRevision": "pg-abc"},
        }
    )
    assert sts == StatefulSet(
        name="pg", on_delete=True, update_revision="pg-abc", replicas=3, selector={"app": "pg"}
    )
    assert not rollout.statefulset_from({"spec": {"updateStrategy": {}}}).on_delete
    pods = rollout.pods_from(
        [
            {"metadata": {"name": "pg-1", "uid": "u1", "deletionTimestamp": "2026-01-01T00:00Z"}},
            {"metadata": {"name": "pg-0", "labels": {rollout.REVISION_LABEL: "pg-abc"}}},
            {"metadata": {}},
        ]
    )
    assert pods == (
        Pod(name="pg-0", revision="pg-abc"),
        Pod(name="pg-1", revision="", uid="u1", deleting=True),
    )
    cluster = rollout.cluster_from(
        {
            "leader": "pg-0",
            "members": [
                {"name": "pg-0", "state": "running", "lag_bytes": None},
                {
                    "name": "pg-1",
                    "state": "streaming",
                    "upstream": "pg-0",
                    "lag_bytes": 7,
                    "tags": {"replicatefrom": "pg-0"},
                },
                "junk",
            ],
            "switchover": {"leader": "pg-0"},
            "paused": False,
        }
    )
    assert cluster == ClusterState(
        leader="pg-0",
        members=(
            MemberView(name="pg-0", state="running"),
            MemberView(
                name="pg-1", state="streaming", upstream="pg-0", lag_bytes=7, replicatefrom="pg-0"
            ),
        ),
        switchover_pending=True,
    )


def test_the_budget_is_the_smallest_of_those_selecting_the_pods() -> None:
    labels = {"app": "pg", "tier": "db"}

    def pdb(selector: dict[str, str], allowed: object = None) -> dict[str, object]:
        status = {} if allowed is None else {"disruptionsAllowed": allowed}
        return {"spec": {"selector": {"matchLabels": selector}}, "status": status}

    assert rollout.disruptions_from([], labels) is None
    assert rollout.disruptions_from([pdb({"app": "other"}, 0)], labels) is None
    assert rollout.disruptions_from([pdb({"app": "pg"}, 2), pdb({"tier": "db"}, 1)], labels) == 1
    assert rollout.disruptions_from([pdb({"app": "pg"})], labels) == 0  # no status yet


def test_every_step_has_a_progress_line() -> None:
    steps = [*plan(_obs()), Refuse("x"), Unhealthy("y"), WaitBudget("pg-1")]
    lines = [rollout.describe(s) for s in steps]
    assert lines[0] == "delete pod pg-2 (replica, revision rev-1 -> rev-2)"
    assert lines[2] == "switchover pg-0 -> pg-1"
    assert lines[3] == "delete pod pg-0 (old leader, revision rev-1 -> rev-2)"
    assert all(lines)


def test_the_operator_role_validates_and_grants_only_what_the_command_uses() -> None:
    """k8s/examples/operator-rollout/role.yaml: valid objects (strict schema), and exactly the
    table of docs/kubernetes.md (the e2e checks the calls against it)."""
    import kubernetes_validate  # noqa: PLC0415 - only this test needs it
    import yaml  # noqa: PLC0415

    path = Path(__file__).resolve().parents[2] / "k8s/examples/operator-rollout/role.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    role = next(d for d in docs if d["kind"] == "Role")
    granted = {
        (verb, f"{res}.{group}" if group else res)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        ("get", "statefulsets.apps"),
        ("list", "pods"),
        ("delete", "pods"),
        ("list", "poddisruptionbudgets.policy"),
    }
