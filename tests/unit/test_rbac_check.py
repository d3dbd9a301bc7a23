"""tests/support/rbac.py: the RBAC matcher and the least-privilege check, on hand-made Roles."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.rbac import Call, Grant, Request, allowed, calls_from_audit, check_calls

ROLE: dict[str, Any] = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "Role",
    "metadata": {"name": "agent"},
    "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "patch"]},
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["demo-config"],
            "verbs": ["get", "update"],
        },
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]},
        {"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["get"]},
    ],
}


@pytest.mark.parametrize(
    "case",
    [
        ("list", "", "pods", None, None, True),
        ("patch", "", "pods", None, "demo-0", True),
        ("get", "", "pods", None, "demo-0", False),  # verb not granted
        ("patch", "", "pods", "status", "demo-0", False),  # subresource needs its own rule
        ("list", "apps", "pods", None, None, False),  # wrong API group
        ("get", "", "configmaps", None, "demo-config", True),
        ("get", "", "configmaps", None, "other", False),  # not among resourceNames
        ("list", "", "configmaps", None, None, False),  # no name: resourceNames never match
        ("create", "", "configmaps", None, None, False),
        ("delete", "coordination.k8s.io", "leases", None, "x", True),  # verb wildcard
        ("get", "apps", "statefulsets", "scale", "db", True),  # */scale
        ("get", "apps", "statefulsets", None, "db", False),
    ],
)
def test_allowed_matches_like_the_rbac_authorizer(
    case: tuple[str, str, str, str | None, str | None, bool],
) -> None:
    verb, group, resource, sub, name, expected = case
    assert allowed(ROLE, verb, group, resource, sub, name=name) is expected


def test_a_role_whose_every_grant_is_used_and_sufficient_passes() -> None:
    calls: list[Call] = [
        ("list", "", "pods", None),
        ("watch", "", "pods", None),
        ("patch", "", "pods", None, "demo-0"),
        ("get", "", "configmaps", None, "demo-config"),
        ("update", "", "configmaps", None, "demo-config"),
        ("update", "coordination.k8s.io", "leases", None, "demo-leader"),
        ("get", "apps", "statefulsets", "scale", "demo"),
    ]
    assert check_calls([ROLE], calls) == ([], [])


def test_a_call_no_rule_allows_is_missing_once() -> None:
    calls: list[Call] = [
        ("list", "", "pods", None),
        ("create", "", "configmaps", None),
        ("create", "", "configmaps", None),
        ("get", "", "configmaps", None, "not-ours"),
    ]
    missing, _ = check_calls(ROLE, calls)
    assert missing == [
        Request(verb="create", api_group="", resource="configmaps"),
        Request(verb="get", api_group="", resource="configmaps", name="not-ours"),
    ]
    assert str(missing[1]) == "get core/configmaps not-ours"


def test_each_granted_verb_no_call_used_is_reported_unused() -> None:
    _, unused = check_calls([ROLE], [("list", "", "pods", None)])
    assert Grant(verb="watch", api_group="", resource="pods") in unused
    assert Grant(verb="patch", api_group="", resource="pods") in unused
    assert Grant(verb="list", api_group="", resource="pods") not in unused
    assert (
        Grant(verb="get", api_group="", resource="configmaps", resource_names=("demo-config",))
        in unused
    )
    assert len(unused) == 6


def test_other_objects_are_ignored_and_no_role_at_all_is_an_error() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}}
    assert check_calls([service, ROLE], [])[1]  # the Role's grants, all unused
    with pytest.raises(ValueError, match="no Role"):
        check_calls([service], [])


def test_audit_records_become_calls_of_one_user_and_namespace() -> None:
    records = [
        {"is_resource": True, "user": "agent", "namespace": "db", "verb": "patch",
         "api_group": "", "resource": "pods", "subresource": "", "name": "demo-0"},
        {"is_resource": True, "user": "admin", "namespace": "db", "verb": "create",
         "api_group": "", "resource": "pods", "subresource": "", "name": ""},
        {"is_resource": True, "user": "agent", "namespace": "other", "verb": "list",
         "api_group": "", "resource": "pods", "subresource": "", "name": ""},
        {"is_resource": False, "user": "agent", "namespace": "", "verb": "get",
         "api_group": "", "resource": "", "subresource": "", "name": ""},
        {"is_resource": True, "user": "agent", "namespace": "db", "verb": "update",
         "api_group": "apps", "resource": "statefulsets", "subresource": "scale", "name": "d"},
    ]  # fmt: skip
    assert calls_from_audit(records, user="agent", namespace="db") == [
        ("patch", "", "pods", None, "demo-0"),
        ("update", "apps", "statefulsets", "scale", "d"),
    ]
