"""RBAC least-privilege check: compare the API calls an agent made with a Role's rules.

`allowed(role, verb, api_group, resource, subresource)` answers like the Kubernetes RBAC
authorizer for one namespaced resource request (verbs, apiGroups, resources with `*` and
`resource/subresource` forms, resourceNames). `check_calls(objects, calls)` returns
`(missing, unused)`: the calls no rule allows (the Role is too small) and the grants no call
used (the Role is too big). A grant is one (verb, apiGroup, resource) of a rule, so an unused
`watch` in a rule whose `get` is used is still reported.

Calls are tuples `(verb, api_group, resource, subresource)` or, to check rules with
resourceNames, `(verb, api_group, resource, subresource, name)`; `calls_from_audit()` builds
them from the test API server's audit records (tests/k8s_apiserver/audit.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROLE_KINDS = frozenset({"Role", "ClusterRole"})

Call = tuple[str, str, str, str | None] | tuple[str, str, str, str | None, str | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One resource request in RBAC terms (`name` is empty for list, watch and create)."""

    verb: str
    api_group: str
    resource: str
    subresource: str | None = None
    name: str | None = None

    @property
    def combined_resource(self) -> str:
        """`resource` or `resource/subresource`, as rules spell it."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def __str__(self) -> str:
        group = self.api_group or "core"
        named = f" {self.name}" if self.name else ""
        return f"{self.verb} {group}/{self.combined_resource}{named}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """One verb on one resource of one apiGroup, granted by a rule (with its resourceNames)."""

    verb: str
    api_group: str
    resource: str  # as written in the rule: "pods", "pods/status", "*", "*/scale"
    resource_names: tuple[str, ...] = ()

    def __str__(self) -> str:
        group = self.api_group or "core"
        names = f" {list(self.resource_names)}" if self.resource_names else ""
        return f"{self.verb} {group}/{self.resource}{names}"


def _strings(rule: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = rule.get(key) or ()
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"rule field {key} must be a list of strings, got {value!r}")
    return tuple(value)


def _rules(role: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    rules = role.get("rules") or []
    if not isinstance(rules, list):
        raise ValueError("a Role's rules must be a list")
    # Rules with nonResourceURLs only (ClusterRole) grant nothing on resources.
    return [r for r in rules if isinstance(r, Mapping) and r.get("resources")]


def _resource_matches(rule_resource: str, request: Request) -> bool:
    if rule_resource == "*":
        return True
    if rule_resource == request.combined_resource:
        return True
    # "*/scale" grants the subresource of every resource.
    return bool(request.subresource) and rule_resource == f"*/{request.subresource}"


def grant_allows(grant: Grant, request: Request) -> bool:
    """Whether this one grant authorizes `request` (the authorizer's rule match)."""
    if grant.verb not in ("*", request.verb):
        return False
    if grant.api_group not in ("*", request.api_group):
        return False
    if not _resource_matches(grant.resource, request):
        return False
    # resourceNames restrict requests on named objects; a request without a name (list,
    # watch, create) never matches a rule that has them.
    return not grant.resource_names or (request.name or "") in grant.resource_names


def grants(role: Mapping[str, Any]) -> list[Grant]:
    """Every (verb, apiGroup, resource) a Role grants, in rule order, without duplicates."""
    out: list[Grant] = []
    for rule in _rules(role):
        names = _strings(rule, "resourceNames")
        for group in _strings(rule, "apiGroups"):
            for resource in _strings(rule, "resources"):
                for verb in _strings(rule, "verbs"):
                    grant = Grant(
                        verb=verb, api_group=group, resource=resource, resource_names=names
                    )
                    if grant not in out:
                        out.append(grant)
    return out


def allowed(
    role: Mapping[str, Any],
    verb: str,
    api_group: str,
    resource: str,
    subresource: str | None = None,
    *,
    name: str | None = None,
) -> bool:
    """Whether `role` (a Role or ClusterRole object as a dict) allows the request."""
    request = Request(
        verb=verb,
        api_group=api_group,
        resource=resource,
        subresource=subresource or None,
        name=name,
    )
    return any(grant_allows(g, request) for g in grants(role))


def _request(call: Sequence[str | None]) -> Request:
    if len(call) not in (4, 5):
        raise ValueError(f"a call is (verb, api_group, resource, subresource[, name]): {call!r}")
    verb, group, resource, subresource = (call[0] or ""), (call[1] or ""), call[2] or "", call[3]
    name = call[4] if len(call) == 5 else None
    return Request(
        verb=verb, api_group=group, resource=resource, subresource=subresource or None, name=name
    )


def roles_in(objects: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The Role and ClusterRole objects among `objects` (e.g. `kubectl kustomize` output)."""
    return [o for o in objects if isinstance(o, Mapping) and o.get("kind") in ROLE_KINDS]


def check_calls(
    role_yaml_objects: Iterable[Mapping[str, Any]] | Mapping[str, Any],
    calls: Iterable[Call],
) -> tuple[list[Request], list[Grant]]:
    """`(missing, unused)` for the calls made under the Role(s) among `role_yaml_objects`
    (other kinds are ignored; one Role dict may be passed directly).

    missing: each distinct request no grant allows, in the order first seen;
    unused: each grant no request used, in rule order.
    Least privilege holds when both are empty. Raises ValueError when there is no Role."""
    objects = [role_yaml_objects] if isinstance(role_yaml_objects, Mapping) else role_yaml_objects
    roles = roles_in(objects)
    if not roles:
        raise ValueError("no Role or ClusterRole among the objects")
    all_grants = [g for role in roles for g in grants(role)]
    used: set[Grant] = set()
    missing: list[Request] = []
    for call in calls:
        request = _request(call)
        matching = [g for g in all_grants if grant_allows(g, request)]
        if not matching and request not in missing:
            missing.append(request)
        used.update(matching)
    unused = [g for g in all_grants if g not in used]
    return missing, unused


def calls_from_audit(
    records: Iterable[Mapping[str, Any]],
    *,
    user: str | None = None,
    namespace: str | None = None,
) -> list[Call]:
    """Calls from audit records (dicts with verb, api_group, resource, subresource, namespace,
    name, user, is_resource): resource requests only, optionally of one `user` and one
    `namespace`, each with its object name (so rules with resourceNames are checked). Denied
    requests count too: the agent needed them."""
    out: list[Call] = []
    for record in records:
        if record.get("is_resource") is False or not record.get("resource"):
            continue
        if user is not None and record.get("user") != user:
            continue
        if namespace is not None and record.get("namespace") != namespace:
            continue
        verb, group = str(record.get("verb", "")), str(record.get("api_group", ""))
        resource, sub = str(record["resource"]), (record.get("subresource") or None)
        out.append((verb, group, resource, sub, record.get("name") or None))
    return out
