"""The settings types: frozen values that check their own rules.

Every class here refuses, when it is built, a value that breaks one of its rules: it raises
`InvalidSettings`, which names each field (relative to the class: `ttl_s`) and each rule.
`problems()` states the same rules without raising; the loader (agent.config) uses it to
report every problem of a configuration at once, prefixing each field with its section.
Rules that depend on how the input was written (a key given twice, a file that must be
readable, a setting that conflicts with another only when set explicitly) live in the loader.

This module does no I/O: the pure core (agent.decide) imports it, never the loader.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, TypeVar
from urllib.parse import urlsplit

from agent.backup_settings import (
    DEFAULT_REPLICA_METHODS,
    BootstrapSettings,
    PgBackRestSettings,
    ReplicaMethod,
    backup_problems,
)
from agent.callback_settings import CallbackSettings
from agent.model import SyncMode as SyncMode  # noqa: PLC0414 - re-exported: ha.synchronous_mode
from agent.value_rules import (
    DNS_SUBDOMAIN,
    GUC_NAME,
    HBA_TYPES,
    WAL_LEVELS,
    ConfigProblem,
    Secret,
    absolute,
    dns_label,
    host,
    is_wildcard,
    label_key_rule,
    label_value_rule,
    non_empty,
    one_of,
    port_number,
    url_rule,
)
from agent.value_rules import InvalidSettings as InvalidSettings  # noqa: PLC0414 - re-exported

_T = TypeVar("_T")


class DcsKind(StrEnum):
    ETCD = "etcd"
    KUBERNETES = "kubernetes"


class LockKind(StrEnum):
    ENDPOINTS = "endpoints"
    LEASE = "lease"
    # The migration step between the two: leadership means holding both objects, so an agent
    # of this kind excludes agents of either other kind (docs/kubernetes.md, "Migrating").
    ENDPOINTS_AND_LEASE = "endpoints-and-lease"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


LOG_LEVELS: Final = tuple(level.value for level in LogLevel)
SYNC_MODES: Final = tuple(mode.value for mode in SyncMode)


def _check(value: object, problems: Iterable[ConfigProblem]) -> None:
    found = list(problems)
    if found:
        raise InvalidSettings(found)


def unchecked(cls: type[_T], /, **values: object) -> _T:
    """An instance of the settings class `cls` built *without* its rules, for the loader only:
    it goes on checking the rest of a configuration to report every problem at once, and
    hands out nothing unless `problems()` of every part came back empty."""
    instance = object.__new__(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in values:
            value = values[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise TypeError(f"{cls.__name__}: {f.name} is required")
        object.__setattr__(instance, f.name, value)
    return instance


# ------------------------------------------------------------------------- the types


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    username: str
    password: Secret | None = None

    def __post_init__(self) -> None:
        _check(self, self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        yield from non_empty("username", self.username)


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdSettings:
    endpoints: tuple[str, ...]  # "http://host:port" or "https://host:port"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: Secret | None = None

    def __post_init__(self) -> None:
        _check(self, self.problems())

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
        _check(self, self.problems())

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
        _check(self, self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        yield from one_of("kind", self.kind, DcsKind)
        if self.kind == DcsKind.ETCD and self.etcd is None:
            yield ConfigProblem(
                "etcd", "is required when dcs.kind is etcd (at least dcs.etcd.endpoints)"
            )
        if self.kind == DcsKind.KUBERNETES and self.etcd is not None:
            yield ConfigProblem("etcd", "is only allowed when dcs.kind is etcd")


class TlsVerify(StrEnum):
    """How a member checks the server certificate of the member it streams or rewinds from
    (libpq's `sslmode`). Both verify the chain against `postgresql.tls.ca_file`."""

    FULL = "verify-full"  # and that the certificate names the host connected to
    CA = "verify-ca"  # members addressed by an IP no certificate can name (pod IPs)


SERVER_TLS_PARAMETERS: Final = ("ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file")
"""Server settings `postgresql.tls` sets; refused in `postgresql.parameters` alongside it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresTls:
    """PostgreSQL's TLS: the server's certificate and key, and the CA members verify each
    other against. All three or none (no `postgresql.tls` section): replication and the
    superuser's connections from the network then accept TLS only (`hostssl`)."""

    cert_file: str
    key_file: str
    ca_file: str
    verify: TlsVerify = TlsVerify.FULL

    def __post_init__(self) -> None:
        _check(self, self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        for name in ("cert_file", "key_file", "ca_file"):
            yield from non_empty(name, getattr(self, name))
            yield from absolute(name, getattr(self, name))
        yield from one_of("verify", self.verify, TlsVerify)


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresSettings:
    bin_dir: str = "/usr/lib/postgresql/15/bin"
    data_dir: str
    listen_host: str = "127.0.0.1"
    port: int = 5432
    connect_host: str = "127.0.0.1"  # the address other members and clients use
    socket_dir: str | None = None  # None: the data directory's parent
    os_user: str | None = None  # run PostgreSQL as this user when the agent is root
    superuser: Credentials = field(default_factory=lambda: Credentials(username="postgres"))
    replication: Credentials = field(default_factory=lambda: Credentials(username="replicator"))
    parameters: tuple[tuple[str, str], ...] = ()
    pg_hba: tuple[str, ...] = ()  # extra lines, added before the agent's own
    tls: PostgresTls | None = None

    def __post_init__(self) -> None:
        _check(self, self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        for name in ("data_dir", "bin_dir", "socket_dir"):
            yield from absolute(name, getattr(self, name))
        yield from host("listen_host", self.listen_host)
        yield from host("connect_host", self.connect_host)
        if self.connect_host and is_wildcard(self.connect_host):
            yield ConfigProblem(
                "connect_host", "must be an address others can connect to, not a wildcard"
            )
        yield from port_number("port", self.port)
        if self.os_user is not None:
            yield from non_empty("os_user", self.os_user)
        for name, _ in self.parameters:
            if not GUC_NAME.fullmatch(name):
                yield ConfigProblem(
                    "parameters", f"{name[:80]!r} is not a PostgreSQL parameter name"
                )
        if self.tls is not None:
            for name, _ in self.parameters:
                if name.lower() in SERVER_TLS_PARAMETERS:
                    yield ConfigProblem(
                        "parameters", f"{name!r} is set by pgwarden (use postgresql.tls)"
                    )
        wal_level = {k.lower(): v for k, v in self.parameters}.get("wal_level")
        if wal_level is not None and wal_level not in WAL_LEVELS:
            yield ConfigProblem(
                "parameters", "wal_level must be replica or logical (replicas stream WAL)"
            )
        for i, line in enumerate(self.pg_hba):
            words = line.split()
            if "\n" in line or "\r" in line:
                yield ConfigProblem(f"pg_hba[{i}]", "must be a single line")
            elif not words or words[0] not in HBA_TYPES:
                yield ConfigProblem(
                    f"pg_hba[{i}]",
                    "must start with a connection type: " + ", ".join(sorted(HBA_TYPES)),
                )


class ClientVerify(StrEnum):
    """Whether the API asks TLS clients for a certificate signed by `api.tls.ca_file`."""

    OFF = "off"
    OPTIONAL = "optional"  # asked for; a client without one is served, a bad one refused
    REQUIRED = "required"  # a client without a verified certificate fails the handshake


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiTlsSettings:
    """The REST API's TLS: its certificate and key (re-read when the files change), the CA
    that signs the members' certificates (peers and client certificates are verified
    against it), and whether clients must present a certificate. A verified client
    certificate does not replace the token: mutating routes need both (the certificate
    says who may connect, the token what they may change)."""

    cert_file: str
    key_file: str
    ca_file: str | None = None
    verify_client: ClientVerify = ClientVerify.OFF

    def __post_init__(self) -> None:
        _check(self, self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        for name in ("cert_file", "key_file", "ca_file"):
            yield from absolute(name, getattr(self, name))
        yield from non_empty("cert_file", self.cert_file)
        yield from non_empty("key_file", self.key_file)
        yield from one_of("verify_client", self.verify_client, ClientVerify)
        if self.verify_client != ClientVerify.OFF and self.ca_file is None:
            yield ConfigProblem(
                "verify_client", "requires ca_file (the CA client certificates are checked against)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    listen_host: str = "127.0.0.1"
    port: int = 8008
    connect_url: str | None = None  # default http(s)://<listen_host>:<port>
    token: Secret | None = None
    basic: Credentials | None = None
    insecure_no_auth: bool = False
    tls: ApiTlsSettings | None = None

    def __post_init__(self) -> None:
        _check(self, self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        yield from non_empty("listen_host", self.listen_host)
        yield from port_number("port", self.port)
        if self.connect_url is not None:
            rule = url_rule(self.connect_url, require_port=False)
            if rule is not None:
                yield ConfigProblem("connect_url", rule)
            elif self.tls is not None and not self.connect_url.startswith("https://"):
                yield ConfigProblem("connect_url", "must be an https URL when api.tls is set")
        elif self.listen_host and is_wildcard(self.listen_host):
            yield ConfigProblem(
                "connect_url",
                "is required when api.listen_host is a wildcard address (peers need a reachable "
                "URL)",
            )

    @property
    def url(self) -> str:
        """The URL peers and `pgwarden ctl` use to reach this agent's API."""
        if self.connect_url:
            return self.connect_url
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    def authorization_header(self) -> dict[str, str]:
        """The `Authorization` header this agent sends to its peers' APIs (failsafe mode): the
        members of a cluster share the API credentials. Empty with neither configured."""
        if self.token is not None:
            return {"Authorization": f"Bearer {self.token.reveal()}"}
        if self.basic is not None:
            password = self.basic.password.reveal() if self.basic.password else ""
            raw = f"{self.basic.username}:{password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}
        return {}


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """HA timing, in seconds. Its rules include loop_wait_s + 2 * retry_timeout_s +
    fence_margin_s <= ttl_s: a renewal can fail once and be retried inside one ttl, with the
    margin left for fencing (docs/configuration.md explains each rule)."""

    ttl_s: float = 10.0
    loop_wait_s: float = 2.0
    retry_timeout_s: float = 3.0
    fence_margin_s: float = 2.0
    primary_start_timeout_s: float = 10.0
    switchover_timeout_s: float = 10.0
    peer_check_timeout_s: float = 0.5
    shutdown_timeout_s: float = 10.0
    # A leader's PostgreSQL whose process exists but answers no query for this long is hung,
    # not down: it is SIGKILLed (with every child) before anything else happens to it.
    postgres_unresponsive_s: float = 2.0
    clone_timeout_s: float = 600.0  # one pg_basebackup from the leader
    rewind_timeout_s: float = 300.0  # one pg_rewind of a former primary

    def __post_init__(self) -> None:
        _check(self, self.problems())

    def fence_deadline(self, renew_sent_at: float) -> float:
        """The instant (monotonic) by which a primary must stop accepting writes, given the
        send time of its last successful renewal (DESIGN.md section 3, invariant 2)."""
        return renew_sent_at + self.ttl_s - self.fence_margin_s

    def problems(self) -> Iterator[ConfigProblem]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in values.items():
            if value <= 0:
                yield ConfigProblem(name, f"must be > 0, got {value:g}")
        if 0 < self.ttl_s < 4:
            yield ConfigProblem("ttl_s", f"must be >= 4, got {self.ttl_s:g}")
        if 0 < self.fence_margin_s < 0.5:
            yield ConfigProblem("fence_margin_s", f"must be >= 0.5, got {self.fence_margin_s:g}")
        if 0 < self.loop_wait_s <= self.peer_check_timeout_s:
            yield ConfigProblem(
                "peer_check_timeout_s",
                f"must be < timing.loop_wait_s ({self.peer_check_timeout_s:g} >= "
                f"{self.loop_wait_s:g})",
            )
        if min(values.values()) > 0:
            yield from self._lease_rules()

    def _lease_rules(self) -> Iterator[ConfigProblem]:
        t = self
        # Why: a hung server is only noticed by a probe that times out (within retry_timeout_s);
        # it must then be killed while the lease is surely still ours, before the fence deadline.
        hung_bound = t.postgres_unresponsive_s + t.retry_timeout_s
        if hung_bound > t.ttl_s - t.fence_margin_s:
            yield ConfigProblem(
                "postgres_unresponsive_s",
                "must leave time to notice and kill a hung server inside the lease: "
                "postgres_unresponsive_s + retry_timeout_s <= ttl_s - fence_margin_s "
                f"({hung_bound:g} > {t.ttl_s - t.fence_margin_s:g})",
            )
        # Why: a renewal sent at the start of a cycle may fail after retry_timeout_s; the next
        # one is sent at most loop_wait_s later and may itself take retry_timeout_s; the primary
        # must still have fence_margin_s left to stop writes before its lease expires.
        needed = t.loop_wait_s + 2 * t.retry_timeout_s + t.fence_margin_s
        if needed > t.ttl_s:
            yield ConfigProblem(
                "ttl_s",
                "must be >= loop_wait_s + 2 * retry_timeout_s + fence_margin_s = "
                f"{t.loop_wait_s:g} + 2 * {t.retry_timeout_s:g} + {t.fence_margin_s:g} = "
                f"{needed:g}, got {t.ttl_s:g}",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Tags:
    nofailover: bool = False
    failover_priority: int = 1
    nosync: bool = False
    sync_priority: int = 1
    # Topology (agent/decide/topology.py): stream from this member while it streams itself;
    # the preferred source of a first clone; no read traffic (/replica, /read-only 503).
    replicatefrom: str | None = None
    clonefrom: bool = False
    noloadbalance: bool = False
    nostream: bool = False  # refused: WAL from the archive only needs archiving (not yet)

    def __post_init__(self) -> None:
        _check(self, self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        for name in ("failover_priority", "sync_priority"):
            value = getattr(self, name)
            if value < 0:
                yield ConfigProblem(name, f"must be >= 0, got {value}")
        if self.replicatefrom is not None:
            yield from non_empty("replicatefrom", self.replicatefrom)
            yield from dns_label("replicatefrom", self.replicatefrom)
        if self.nostream:
            yield ConfigProblem(
                "nostream",
                "is not supported yet: a member that takes WAL from the archive only needs WAL "
                "archiving and restore_command, which pgwarden does not manage; remove it",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class HaSettings:
    """HA behaviour. The `synchronous_*`, `maximum_lag_on_syncnode_bytes` and `failsafe_mode`
    values only seed the DCS `config` record when this member bootstraps the cluster; after
    that the record (PATCH /config) is what every member follows."""

    maximum_lag_on_failover_bytes: int = 1024 * 1024
    synchronous_mode: SyncMode = SyncMode.OFF
    synchronous_node_count: int = 1
    synchronous_mode_strict: bool = False
    maximum_lag_on_syncnode_bytes: int = -1  # -1: no limit
    failsafe_mode: bool = False

    def __post_init__(self) -> None:
        _check(self, self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        yield from one_of("synchronous_mode", self.synchronous_mode, SyncMode)
        if self.synchronous_node_count < 1:
            yield ConfigProblem(
                "synchronous_node_count", f"must be >= 1, got {self.synchronous_node_count}"
            )
        if self.maximum_lag_on_syncnode_bytes < -1:
            yield ConfigProblem(
                "maximum_lag_on_syncnode_bytes",
                f"must be -1 (no limit) or >= 0, got {self.maximum_lag_on_syncnode_bytes}",
            )
        if self.maximum_lag_on_failover_bytes < 0:
            yield ConfigProblem(
                "maximum_lag_on_failover_bytes",
                f"must be >= 0, got {self.maximum_lag_on_failover_bytes}",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.AUTO

    def __post_init__(self) -> None:
        _check(self, self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        yield from one_of("level", self.level, LogLevel)
        yield from one_of("format", self.format, LogFormat)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    name: str
    cluster: str
    namespace: str = "pgwarden"
    run_dir: str  # the fencer's socket and the agent's runtime files
    dcs: DcsSettings
    postgresql: PostgresSettings
    api: ApiSettings = field(default_factory=ApiSettings)
    timing: Timing = field(default_factory=Timing)
    tags: Tags = field(default_factory=Tags)
    ha: HaSettings = field(default_factory=HaSettings)
    log: LogSettings = field(default_factory=LogSettings)
    callbacks: CallbackSettings = field(default_factory=CallbackSettings)
    pgbackrest: PgBackRestSettings | None = None
    create_replica_methods: tuple[ReplicaMethod, ...] = DEFAULT_REPLICA_METHODS
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)

    def __post_init__(self) -> None:
        _check(self, self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        """The rules across sections and of the top-level fields (each section checks its own)."""
        for name in ("name", "cluster", "namespace"):
            value = getattr(self, name)
            yield from non_empty(name, value)
            yield from dns_label(name, value)
        # A member's name is its application_name in primary_conninfo and
        # synchronous_standby_names: ASCII and shorter than NAMEDATALEN (64 bytes).
        name = self.name
        if name and not (name.isascii() and name.isprintable() and len(name) < 64):
            yield ConfigProblem(
                "name", "must be a valid PostgreSQL application_name (ASCII, < 64 bytes)"
            )
        yield from absolute("run_dir", self.run_dir)
        if self.tags.replicatefrom is not None and self.tags.replicatefrom == name:
            yield ConfigProblem("tags.replicatefrom", "must name another member, not this one")
        yield from backup_problems(self.pgbackrest, self.create_replica_methods, self.bootstrap)
        api, pg = self.api, self.postgresql
        if api.port == pg.port and api.listen_host == pg.listen_host:
            yield ConfigProblem(
                "api.port", f"must differ from postgresql.port ({api.port}) on the same host"
            )
