"""The optional API priority and fairness objects (k8s/examples/flowcontrol/flowschema.yaml):
they validate against the Kubernetes schemas, the FlowSchema sends the agents' lock requests
(the Lease renewal above all) to the priority level of the same file, for the ServiceAccount
and namespace the examples deploy, and names nothing the agent's Role does not grant (a
misspelt resource or verb would match no request and silently do nothing)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support import manifests as m
from tests.support.rbac import allowed

FLOWCONTROL = m.K8S / "examples" / "flowcontrol" / "flowschema.yaml"
NAMESPACE = "pgwarden"  # k8s/examples/namespace.yaml


def objects() -> dict[str, Any]:
    return {o["kind"]: o for o in yaml.safe_load_all(FLOWCONTROL.read_text()) if o}


def role() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((m.K8S / "base" / "role.yaml").read_text())
    return loaded


@pytest.mark.parametrize("version", ["1.32", kubernetes_validate.latest_version()])
def test_the_objects_validate_against_the_kubernetes_schemas(version: str) -> None:
    found = objects()
    assert set(found) == {"FlowSchema", "PriorityLevelConfiguration"}
    for obj in found.values():
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_flowschema_sends_the_lease_renewals_of_the_examples_to_its_own_level() -> None:
    found = objects()
    schema, level = found["FlowSchema"]["spec"], found["PriorityLevelConfiguration"]
    assert schema["priorityLevelConfiguration"]["name"] == level["metadata"]["name"]
    assert level["spec"]["type"] == "Limited"
    assert schema["matchingPrecedence"] < 9000, "after service-accounts: never matched"
    service_account = yaml.safe_load((m.K8S / "base" / "serviceaccount.yaml").read_text())
    (rule,) = schema["rules"]
    assert rule["subjects"] == [
        {
            "kind": "ServiceAccount",
            "serviceAccount": {"name": service_account["metadata"]["name"], "namespace": NAMESPACE},
        }
    ]
    renewal = [
        r
        for r in rule["resourceRules"]
        if "coordination.k8s.io" in r["apiGroups"] and "leases" in r["resources"]
    ]
    assert renewal and "update" in renewal[0]["verbs"] and renewal[0]["namespaces"] == [NAMESPACE]


def test_the_flowschema_names_only_requests_the_agents_role_grants() -> None:
    (rule,) = objects()["FlowSchema"]["spec"]["rules"]
    agent_role = role()
    for resource_rule in rule["resourceRules"]:
        for group in resource_rule["apiGroups"]:
            for resource in resource_rule["resources"]:
                for verb in resource_rule["verbs"]:
                    name = None if verb == "create" else "pgwarden"
                    if resource == "leases":
                        name = None if verb == "create" else "pgwarden-leader"
                    assert allowed(agent_role, verb, group, resource, name=name), (
                        f"{verb} {group}/{resource}: not granted by k8s/base/role.yaml"
                    )
