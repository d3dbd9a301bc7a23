"""The pure part of the pod role labels: which label a published status calls for."""

from __future__ import annotations

import pytest

from agent.config import KubernetesSettings
from agent.kube.labels import RoleLabel, cluster_selector, desired_role_label, label_patch
from agent.model import AgentStatus, MemberName, PgState, Role

LABEL = RoleLabel(key="role", primary="master", replica="standby")


def status(role: Role, state: PgState, *, lease_held: bool = False) -> AgentStatus:
    return AgentStatus(
        name=MemberName("a"),
        cluster="c",
        role=role,
        state=state,
        api_url="http://127.0.0.1:8008",
        lease_held=lease_held,
    )


@pytest.mark.parametrize(
    ("role", "state", "lease_held", "expected"),
    [
        (Role.PRIMARY, PgState.RUNNING, True, "master"),
        # A primary without the lease (lost it, fencing) must not receive writes.
        (Role.PRIMARY, PgState.RUNNING, False, None),
        (Role.PRIMARY, PgState.FENCED, True, None),
        (Role.PRIMARY, PgState.STOPPED, True, None),
        (Role.REPLICA, PgState.STREAMING, False, "standby"),
        (Role.REPLICA, PgState.RUNNING, False, "standby"),
        (Role.REPLICA, PgState.STARTING, False, None),
        (Role.REPLICA, PgState.CLONING, False, None),
        (Role.REPLICA, PgState.CRASHED, False, None),
        (Role.REPLICA, PgState.REWINDING, False, None),
        (Role.UNINITIALIZED, PgState.BOOTSTRAPPING, False, None),
        (Role.UNKNOWN, PgState.UNKNOWN, True, None),
    ],
)
def test_the_desired_label_follows_role_state_and_lease(
    role: Role, state: PgState, lease_held: bool, expected: str | None
) -> None:
    assert desired_role_label(status(role, state, lease_held=lease_held), LABEL) == expected


def test_label_names_and_values_come_from_the_kubernetes_settings() -> None:
    k8s = KubernetesSettings(role_label="spilo-role", primary_value="p", replica_value="r")
    label = RoleLabel.from_settings(k8s)
    assert label == RoleLabel(key="spilo-role", primary="p", replica="r")


def test_the_patch_sets_the_label_or_removes_it_with_null() -> None:
    assert label_patch(LABEL, "master") == {"metadata": {"labels": {"role": "master"}}}
    assert label_patch(LABEL, None) == {"metadata": {"labels": {"role": None}}}


def test_the_cluster_selector_is_the_configured_labels_plus_the_pgwarden_cluster_label() -> None:
    assert cluster_selector([("app", "pg"), ("tier", "db")], "main") == (
        "app=pg,pgwarden.io/cluster=main,tier=db"
    )
    assert cluster_selector([], "main") == "pgwarden.io/cluster=main"
