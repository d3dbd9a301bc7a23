"""Typed, validated settings: a YAML file plus PGWARDEN_* environment overrides.

The settings are frozen dataclasses. `load_settings()` reads, merges, validates and either
returns `Settings` or raises `ConfigError` listing every problem at once, each naming the
field (dotted path, e.g. `timing.ttl_s`) and the rule it breaks. Nothing is ever silently
corrected. Secrets are wrapped in `Secret`, whose repr and str are masked.

Derived timing (the fencing deadline) is computed in exactly one place: `Timing`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Secret:
    """A string that never shows itself in logs, reprs or `--check-config` output."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    def __str__(self) -> str:
        return "********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class DcsKind(StrEnum):
    ETCD = "etcd"
    KUBERNETES = "kubernetes"


class LockKind(StrEnum):
    ENDPOINTS = "endpoints"
    LEASE = "lease"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    username: str
    password: Secret | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdSettings:
    endpoints: tuple[str, ...]  # "http://host:port" or "https://host:port"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: Secret | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KubernetesSettings:
    namespace: str = "default"
    lock: LockKind = LockKind.ENDPOINTS
    pod_name: str | None = None  # defaults to the member name
    pod_ip: str | None = None
    kubeconfig: str | None = None  # None: in-cluster service account
    labels: tuple[tuple[str, str], ...] = ()  # labels shared by the cluster's pods
    role_label: str = "role"
    primary_value: str = "primary"
    replica_value: str = "replica"
    manage_role_label: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class DcsSettings:
    kind: DcsKind
    etcd: EtcdSettings | None = None
    kubernetes: KubernetesSettings | None = None


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


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    listen_host: str = "127.0.0.1"
    port: int = 8008
    connect_url: str | None = None  # default http://<listen_host>:<port>
    token: Secret | None = None
    basic: Credentials | None = None
    insecure_no_auth: bool = False

    @property
    def url(self) -> str:
        return self.connect_url or f"http://{self.listen_host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """HA timing. Validation requires loop_wait_s + 2 * retry_timeout_s + fence_margin_s <= ttl_s:
    a renewal can fail once and be retried inside one ttl, with the margin left for fencing."""

    ttl_s: float = 10.0
    loop_wait_s: float = 2.0
    retry_timeout_s: float = 3.0
    fence_margin_s: float = 2.0
    primary_start_timeout_s: float = 10.0
    switchover_timeout_s: float = 10.0
    peer_check_timeout_s: float = 0.5
    shutdown_timeout_s: float = 10.0

    def fence_deadline(self, renew_sent_at: float) -> float:
        """The instant (monotonic) by which a primary must stop accepting writes, given the
        send time of its last successful renewal (DESIGN.md section 3, invariant 2)."""
        return renew_sent_at + self.ttl_s - self.fence_margin_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Tags:
    nofailover: bool = False
    failover_priority: int = 1
    nosync: bool = False
    sync_priority: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class HaSettings:
    maximum_lag_on_failover_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    level: str = "info"
    format: LogFormat = LogFormat.AUTO


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


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class ConfigError(Exception):
    """Every problem found in one configuration, each naming its field and rule."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def load_settings(path: str | None, env: Mapping[str, str]) -> Settings:
    """Read `path` (YAML; None for none), apply PGWARDEN_* overrides from `env`, validate."""
    raise NotImplementedError  # provided by the configuration work (issue 2)
