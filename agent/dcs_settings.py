"""The DCS settings types (`dcs:`): which store, and how to reach etcd or the Kubernetes API.

Like every settings type (agent/settings.py), each class checks its own rules when built.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from agent.value_rules import (
    DNS_SUBDOMAIN,
    ConfigProblem,
    Secret,
    absolute,
    check,
    dns_label,
    label_key_rule,
    label_value_rule,
    non_empty,
    one_of,
    url_rule,
)


class DcsKind(StrEnum):
    ETCD = "etcd"
    KUBERNETES = "kubernetes"


class LockKind(StrEnum):
    ENDPOINTS = "endpoints"
    LEASE = "lease"
    # The migration step between the two: leadership means holding both objects, so an agent
    # of this kind excludes agents of either other kind (docs/kubernetes.md, "Migrating").
    ENDPOINTS_AND_LEASE = "endpoints-and-lease"


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdSettings:
    endpoints: tuple[str, ...]  # "http://host:port" or "https://host:port"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: Secret | None = None

    def __post_init__(self) -> None:
        check(self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        if not self.endpoints:
            yield ConfigProblem("endpoints", "at least one endpoint is required")
        for name in ("ca_file", "cert_file", "key_file"):
            yield from absolute(name, getattr(self, name))
        schemes = set()
        for i, url in enumerate(self.endpoints):
            rule = url_rule(url, require_port=True)
            if rule is not None:
                yield ConfigProblem(f"endpoints[{i}]", rule)
            else:
                schemes.add(urlsplit(url).scheme)
        if len(schemes) > 1:
            yield ConfigProblem("endpoints", "must all use the same scheme (http or https)")
        if self.cert_file is not None and self.key_file is None:
            yield ConfigProblem("key_file", "is required when dcs.etcd.cert_file is set")
        if self.key_file is not None and self.cert_file is None:
            yield ConfigProblem("cert_file", "is required when dcs.etcd.key_file is set")
        if (self.ca_file or self.cert_file or self.key_file) and schemes == {"http"}:
            yield ConfigProblem("endpoints", "TLS files are set, so the endpoints must use https")


@dataclass(frozen=True, slots=True, kw_only=True)
class KubernetesSettings:
    namespace: str = "default"
    lock: LockKind = LockKind.LEASE
    pod_name: str | None = None  # defaults to the member name
    pod_ip: str | None = None
    kubeconfig: str | None = None  # None: in-cluster service account
    labels: tuple[tuple[str, str], ...] = ()  # labels shared by the cluster's pods
    role_label: str = "role"
    primary_value: str = "primary"
    replica_value: str = "replica"
    manage_role_label: bool = True
    events: bool = True  # Kubernetes Events on this member's pod (agent/kube/events.py)

    def __post_init__(self) -> None:
        check(self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        yield from dns_label("namespace", self.namespace)
        yield from non_empty("namespace", self.namespace)
        yield from one_of("lock", self.lock, LockKind)
        name = self.pod_name
        if name and (len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name)):
            yield ConfigProblem(
                "pod_name", f"must be a DNS subdomain (a pod name), got {name[:80]!r}"
            )
        if self.pod_ip is not None:
            try:
                ipaddress.ip_address(self.pod_ip)
            except ValueError:
                yield ConfigProblem("pod_ip", f"must be an IP address, got {self.pod_ip[:80]!r}")
        yield from absolute("kubeconfig", self.kubeconfig)
        for key, value in self.labels:
            rule = label_key_rule(key) or label_value_rule(value)
            if rule is not None:
                yield ConfigProblem("labels", rule)
        rule = label_key_rule(self.role_label)
        if rule is not None:
            yield ConfigProblem("role_label", rule)
        if self.role_label in dict(self.labels):
            yield ConfigProblem("labels", f"must not contain the role label {self.role_label!r}")
        for name, value in (("primary_value", self.primary_value),
                            ("replica_value", self.replica_value)):  # fmt: skip
            yield from non_empty(name, value)
            rule = label_value_rule(value)
            if rule is not None:
                yield ConfigProblem(name, rule)
        if self.primary_value and self.primary_value == self.replica_value:
            yield ConfigProblem("replica_value", "must differ from dcs.kubernetes.primary_value")


@dataclass(frozen=True, slots=True, kw_only=True)
class DcsSettings:
    kind: DcsKind
    etcd: EtcdSettings | None = None
    kubernetes: KubernetesSettings | None = None

    def __post_init__(self) -> None:
        check(self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        yield from one_of("kind", self.kind, DcsKind)
        if self.kind == DcsKind.ETCD and self.etcd is None:
            yield ConfigProblem(
                "etcd", "is required when dcs.kind is etcd (at least dcs.etcd.endpoints)"
            )
        if self.kind == DcsKind.KUBERNETES and self.etcd is not None:
            yield ConfigProblem("etcd", "is only allowed when dcs.kind is etcd")
