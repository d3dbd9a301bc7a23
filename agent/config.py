"""Typed, validated settings: a YAML file plus PGWARDEN_* environment overrides.

The settings are frozen dataclasses. `load_settings()` reads, merges, validates and either
returns `Settings` or raises `ConfigError` listing every problem at once, each naming the
field (dotted path, e.g. `timing.ttl_s`) and the rule it breaks. Nothing is ever silently
corrected. Secrets are wrapped in `Secret`, whose repr and str are masked.

Derived timing (the fencing deadline) is computed in exactly one place: `Timing`.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, TypeVar
from urllib.parse import urlsplit

import yaml

_E = TypeVar("_E", bound=StrEnum)


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
        """The URL peers and `pgwarden ctl` use to reach this agent's API."""
        if self.connect_url:
            return self.connect_url
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"http://{host}:{self.port}"

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
    # A leader's PostgreSQL whose process exists but answers no query for this long is hung,
    # not down: it is SIGKILLed (with every child) before anything else happens to it.
    postgres_unresponsive_s: float = 2.0

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


SYNC_MODES: Final = ("off", "on", "quorum")


@dataclass(frozen=True, slots=True, kw_only=True)
class HaSettings:
    """HA behaviour. The `synchronous_*`, `maximum_lag_on_syncnode_bytes` and `failsafe_mode`
    values only seed the DCS `config` record when this member bootstraps the cluster; after
    that the record (PATCH /config) is what every member follows."""

    maximum_lag_on_failover_bytes: int = 1024 * 1024
    synchronous_mode: str = "off"  # one of SYNC_MODES
    synchronous_node_count: int = 1
    synchronous_mode_strict: bool = False
    maximum_lag_on_syncnode_bytes: int = -1  # -1: no limit
    failsafe_mode: bool = False


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


# --------------------------------------------------------------------------------------------
# Loading. Three passes over the input, each adding to one list of problems:
#   1. read: YAML -> a flat {dotted path: value} map, checking keys and types against _SCHEMA;
#      then the PGWARDEN_* environment overrides, parsed by the same types;
#   2. build: typed dataclasses from the flat map (defaults for what is not set);
#   3. check: the rules on the built values (ranges, paths, files, cross-field rules).
# Only when no problem was found are the Settings returned.
# --------------------------------------------------------------------------------------------

ENV_PREFIX: Final = "PGWARDEN_"
CONFIG_ENV_VAR: Final = "PGWARDEN_CONFIG"
"""Names the configuration file for `pgwarden run` when --config is not given; not a setting."""

RESERVED_ENV_VARS: Final = frozenset(
    {
        CONFIG_ENV_VAR,
        "PGWARDEN_URL",
        "PGWARDEN_TOKEN",
        "PGWARDEN_USER",
        "PGWARDEN_PASSWORD",
        "PGWARDEN_SA_DIR",
    }
)
"""PGWARDEN_* variables that are not settings (the config file path; `pgwarden ctl`'s
connection defaults, which may be set in the agent's own environment for `kubectl exec`;
the service-account directory override of agent/kube/client.py)."""

MASK: Final = "********"


class _Kind(StrEnum):
    SECTION = "mapping"
    STR = "string"
    SECRET = "string (secret)"
    INT = "integer"
    FLOAT = "number"
    BOOL = "boolean"
    STR_LIST = "list of strings"
    STR_MAP = "mapping of string to string"
    PARAM_MAP = "mapping of name to string, number or boolean"


_S = _Kind.STR
_CREDENTIAL_FIELDS: Final = {"username": _S, "password": _Kind.SECRET, "password_file": _S}

_SCHEMA: Final[dict[str, _Kind]] = {
    "name": _S,
    "cluster": _S,
    "namespace": _S,
    "run_dir": _S,
    "dcs": _Kind.SECTION,
    "dcs.kind": _S,
    "dcs.etcd": _Kind.SECTION,
    "dcs.etcd.endpoints": _Kind.STR_LIST,
    "dcs.etcd.ca_file": _S,
    "dcs.etcd.cert_file": _S,
    "dcs.etcd.key_file": _S,
    **{f"dcs.etcd.{k}": v for k, v in _CREDENTIAL_FIELDS.items()},
    "dcs.kubernetes": _Kind.SECTION,
    "dcs.kubernetes.namespace": _S,
    "dcs.kubernetes.lock": _S,
    "dcs.kubernetes.pod_name": _S,
    "dcs.kubernetes.pod_ip": _S,
    "dcs.kubernetes.kubeconfig": _S,
    "dcs.kubernetes.labels": _Kind.STR_MAP,
    "dcs.kubernetes.role_label": _S,
    "dcs.kubernetes.primary_value": _S,
    "dcs.kubernetes.replica_value": _S,
    "dcs.kubernetes.manage_role_label": _Kind.BOOL,
    "postgresql": _Kind.SECTION,
    "postgresql.bin_dir": _S,
    "postgresql.data_dir": _S,
    "postgresql.listen_host": _S,
    "postgresql.port": _Kind.INT,
    "postgresql.connect_host": _S,
    "postgresql.socket_dir": _S,
    "postgresql.os_user": _S,
    "postgresql.superuser": _Kind.SECTION,
    **{f"postgresql.superuser.{k}": v for k, v in _CREDENTIAL_FIELDS.items()},
    "postgresql.replication": _Kind.SECTION,
    **{f"postgresql.replication.{k}": v for k, v in _CREDENTIAL_FIELDS.items()},
    "postgresql.parameters": _Kind.PARAM_MAP,
    "postgresql.pg_hba": _Kind.STR_LIST,
    "api": _Kind.SECTION,
    "api.listen_host": _S,
    "api.port": _Kind.INT,
    "api.connect_url": _S,
    "api.token": _Kind.SECRET,
    "api.token_file": _S,
    **{f"api.{k}": v for k, v in _CREDENTIAL_FIELDS.items()},
    "api.insecure_no_auth": _Kind.BOOL,
    "timing": _Kind.SECTION,
    **{f"timing.{f.name}": _Kind.FLOAT for f in dataclasses.fields(Timing)},
    "tags": _Kind.SECTION,
    "tags.nofailover": _Kind.BOOL,
    "tags.failover_priority": _Kind.INT,
    "tags.nosync": _Kind.BOOL,
    "tags.sync_priority": _Kind.INT,
    "ha": _Kind.SECTION,
    "ha.maximum_lag_on_failover_bytes": _Kind.INT,
    "ha.synchronous_mode": _S,
    "ha.synchronous_node_count": _Kind.INT,
    "ha.synchronous_mode_strict": _Kind.BOOL,
    "ha.maximum_lag_on_syncnode_bytes": _Kind.INT,
    "ha.failsafe_mode": _Kind.BOOL,
    "log": _Kind.SECTION,
    "log.level": _S,
    "log.format": _S,
}
"""Every setting by dotted path. The one source for known keys, value types and env names."""

LOG_LEVELS: Final = ("debug", "info", "warning", "error")

# Parameters the agent sets itself (postgres/replication.py AGENT_MANAGED, plus the files and
# the replication source); accepting them in `postgresql.parameters` would let two settings
# disagree about one fact, and the agent's value would silently win.
_MANAGED_PARAMETERS: Final = {
    "port": "use postgresql.port",
    "listen_addresses": "use postgresql.listen_host",
    "unix_socket_directories": "use postgresql.socket_dir",
    "data_directory": "use postgresql.data_dir",
    "config_file": "it is fixed by postgresql.data_dir",
    "hba_file": "add lines with postgresql.pg_hba",
    "ident_file": "pgwarden writes its own",
    "cluster_name": "it is the cluster setting",
    "hot_standby": "replicas must serve reads for health checks",
    "wal_log_hints": "pg_rewind needs it on",
    "logging_collector": "PostgreSQL's output goes to the agent's log",
    "primary_conninfo": "it follows the leader",
    "primary_slot_name": "it follows the leader",
    "synchronous_standby_names": "use ha.synchronous_mode (the leader manages it)",
}
_WAL_LEVELS: Final = ("replica", "logical")
_HBA_TYPES: Final = frozenset(
    {"local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc", "include",
     "include_if_exists", "include_dir"}
)  # fmt: skip
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_GUC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_TRUE_WORDS: Final = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS: Final = frozenset({"false", "no", "off", "0"})


def env_var_name(path: str) -> str:
    """The environment variable that overrides the setting at dotted `path`."""
    return ENV_PREFIX + path.upper().replace(".", "__")


def known_settings() -> Mapping[str, str]:
    """Every setting's dotted path and its value type in words (for docs and tests)."""
    return {path: str(kind) for path, kind in _SCHEMA.items()}


def _children(section: str) -> list[str]:
    prefix = f"{section}." if section else ""
    return sorted(
        p[len(prefix) :] for p in _SCHEMA if p.startswith(prefix) and "." not in p[len(prefix) :]
    )


def _join(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _type_word(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class _Invalid:
    """Marks a value that failed its type check (its problem is already recorded)."""


_INVALID: Final = _Invalid()


@dataclass(slots=True)
class _Collector:
    """The problems found so far. Fields that failed to read (wrong type, missing) are not
    checked again, so a bad value produces one problem, not a cascade."""

    problems: list[ConfigProblem] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)

    def add(self, path: str, rule: str) -> None:
        if path not in self.failed:
            self.problems.append(ConfigProblem(field=path, rule=rule))

    def fail(self, path: str, rule: str) -> None:
        self.add(path, rule)
        self.failed.add(path)


def _convert_value(value: object, kind: _Kind) -> tuple[object, str | None]:
    """(`value` converted to the Python type of `kind`, None) or (_INVALID, the rule broken)."""
    quote = " (quote it in YAML)" if isinstance(value, bool | int | float) else ""
    match kind:
        case _Kind.STR | _Kind.SECRET:
            if isinstance(value, str):
                return value, None
            return _INVALID, f"must be a string, not {_type_word(value)}{quote}"
        case _Kind.INT:
            if isinstance(value, int) and not isinstance(value, bool):
                return value, None
            return _INVALID, f"must be an integer, not {_type_word(value)}"
        case _Kind.FLOAT:
            if isinstance(value, int | float) and not isinstance(value, bool):
                if not math.isfinite(value):
                    return _INVALID, "must be a finite number"
                return float(value), None
            return _INVALID, f"must be a number, not {_type_word(value)}"
        case _Kind.BOOL:
            if isinstance(value, bool):
                return value, None
            return _INVALID, f"must be a boolean (true or false), not {_type_word(value)}"
        case _Kind.STR_LIST:
            if not isinstance(value, list):
                return _INVALID, f"must be a list of strings, not {_type_word(value)}"
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    return _INVALID, f"item {i} must be a string, not {_type_word(item)}"
            return tuple(value), None
        case _Kind.STR_MAP | _Kind.PARAM_MAP:
            if not isinstance(value, dict):
                return _INVALID, f"must be a {kind}, not {_type_word(value)}"
            pairs: list[tuple[str, str]] = []
            for key, item in value.items():
                if not isinstance(key, str):
                    return _INVALID, f"key {key!r} must be a string{quote}"
                text = _scalar_text(item) if kind is _Kind.PARAM_MAP else item
                if not isinstance(text, str):
                    return _INVALID, f"value of {key!r} must be a {kind.split(' to ')[-1]}, " + (
                        f"not {_type_word(item)}"
                    )
                pairs.append((key, text))
            return tuple(pairs), None
        case _Kind.SECTION:  # pragma: no cover - sections are walked, never converted
            raise AssertionError(kind)


def _scalar_text(value: object) -> str | None:
    """A PostgreSQL parameter value as PostgreSQL reads it (booleans as on/off)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and math.isfinite(value):
        return str(value)
    return None


@dataclass(slots=True)
class _Raw:
    """The flat, type-checked input: {dotted path: value}, the sections that were present,
    and which environment variable set which path."""

    values: dict[str, object] = field(default_factory=dict)
    sections: set[str] = field(default_factory=set)
    origins: dict[str, str] = field(default_factory=dict)

    def mark_present(self, path: str) -> None:
        parts = path.split(".")
        for i in range(1, len(parts)):
            self.sections.add(".".join(parts[:i]))


def _walk(node: object, section: str, raw: _Raw, out: _Collector) -> None:
    if not isinstance(node, dict):
        out.fail(section, f"must be a mapping, not {_type_word(node)}")
        return
    raw.sections.add(section)
    for key, value in node.items():
        if not isinstance(key, str):
            out.add(_join(section, str(key)), "keys must be strings")
            continue
        path = _join(section, key)
        kind = _SCHEMA.get(path)
        if kind is None:
            expected = ", ".join(_children(section))
            hint = difflib.get_close_matches(key, _children(section), n=1)
            near = f" (did you mean {hint[0]!r}?)" if hint else ""
            out.add(path, f"unknown key{near}; expected one of: {expected}")
            continue
        if value is None:
            continue  # `key:` with nothing after it means "not set": the default applies
        if kind is _Kind.SECTION:
            _walk(value, path, raw, out)
            continue
        converted, rule = _convert_value(value, kind)
        if rule is not None:
            out.fail(path, rule)
        else:
            raw.values[path] = converted


def _parse_env_value(text: str, kind: _Kind) -> tuple[object, str | None]:
    match kind:
        case _Kind.STR | _Kind.SECRET:
            return text, None
        case _Kind.INT:
            try:
                return int(text.strip(), 10), None
            except ValueError:
                return _INVALID, f"must be an integer, got {text!r}"
        case _Kind.FLOAT:
            try:
                number = float(text.strip())
            except ValueError:
                return _INVALID, f"must be a number, got {text!r}"
            return _convert_value(number, kind)
        case _Kind.BOOL:
            word = text.strip().lower()
            if word in _TRUE_WORDS or word in _FALSE_WORDS:
                return word in _TRUE_WORDS, None
            return _INVALID, f"must be true or false, got {text!r}"
        case _Kind.STR_LIST | _Kind.STR_MAP | _Kind.PARAM_MAP:
            stripped = text.strip()
            if stripped.startswith(("[", "{")):  # a YAML flow collection, for commas in values
                try:
                    loaded: object = yaml.safe_load(stripped)
                except yaml.YAMLError:
                    return _INVALID, "is not a valid YAML flow list/mapping"
                return _convert_value(loaded, kind)
            items = [item.strip() for item in stripped.split(",") if item.strip()]
            if kind is _Kind.STR_LIST:
                return tuple(items), None
            pairs: list[tuple[str, str]] = []
            for item in items:
                key, eq, value = item.partition("=")
                if not eq or not key.strip():
                    return _INVALID, f"must be key=value pairs separated by commas, got {item!r}"
                pairs.append((key.strip(), value.strip()))
            return tuple(pairs), None
        case _Kind.SECTION:  # pragma: no cover - rejected by the caller
            raise AssertionError(kind)


def _apply_env(env: Mapping[str, str], raw: _Raw, out: _Collector) -> None:
    """PGWARDEN_<SECTION>__<FIELD>=value overrides; an empty value unsets the setting."""
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in RESERVED_ENV_VARS:
            continue
        path = ".".join(part.lower() for part in var[len(ENV_PREFIX) :].split("__"))
        kind = _SCHEMA.get(path)
        if kind is None:
            names = [env_var_name(p) for p in _SCHEMA if _SCHEMA[p] is not _Kind.SECTION]
            hint = difflib.get_close_matches(var, names, n=1, cutoff=0.8)
            near = f"; did you mean {hint[0]}?" if hint else ""
            out.add(var, f"does not name a setting (PGWARDEN_<SECTION>__<FIELD>){near}")
            continue
        if kind is _Kind.SECTION:
            out.add(var, f"names the section {path!r}; set its fields one by one")
            continue
        raw.origins[path] = var
        text = env[var]
        if text == "":
            raw.values.pop(path, None)
            continue
        value, rule = _parse_env_value(text, kind)
        if rule is not None:
            if kind is _Kind.SECRET:  # pragma: no cover - secrets are plain strings
                rule = "is invalid"
            out.fail(path, f"{var} {rule}")
            raw.values.pop(path, None)
            continue
        raw.values[path] = value
        raw.mark_present(path)


def _read_file(path: str, out: _Collector) -> object:
    source = f"file {path}"
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        out.fail(source, "configuration file does not exist")
        return {}
    except PermissionError:
        out.fail(source, "configuration file is not readable (permission denied)")
        return {}
    except IsADirectoryError:
        out.fail(source, "is a directory, not a configuration file")
        return {}
    except UnicodeDecodeError:
        out.fail(source, "configuration file is not UTF-8 text")
        return {}
    except OSError as exc:
        out.fail(source, f"cannot read the configuration file: {exc.strerror}")
        return {}
    try:
        loaded: object = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        # Only the position and the parser's own words: the offending line may hold a secret.
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        out.fail(source, f"is not valid YAML{where}: {exc.problem}")
        return {}
    except yaml.YAMLError:
        out.fail(source, "is not valid YAML")
        return {}
    if loaded is None:
        return {}  # an empty file: every setting from the environment or defaults
    if not isinstance(loaded, dict):
        out.fail(source, f"must hold a YAML mapping at the top level, not {_type_word(loaded)}")
        return {}
    return loaded


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (safe_load keeps the last
    silently, which would hide the first of two conflicting settings)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[object, object]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"duplicate key {key!r}",
                key_node.start_mark,
            )
        if isinstance(key, Hashable):
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


# --------------------------------------------------------------------------------------------
# Pass 2 and 3: build the dataclasses and check the rules.
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Builder:
    """Typed reads from the flat input, with defaults; rule checks report into `out`."""

    raw: _Raw
    out: _Collector
    env: Mapping[str, str]

    def opt_str(self, path: str) -> str | None:
        value = self.raw.values.get(path)
        return value if isinstance(value, str) else None

    def str_(self, path: str, default: str) -> str:
        value = self.opt_str(path)
        return default if value is None else value

    def required(self, path: str) -> str:
        value = self.opt_str(path)
        if value is None:
            self.out.fail(path, "is required")
            return ""
        return value

    def int_(self, path: str, default: int) -> int:
        value = self.raw.values.get(path)
        return value if isinstance(value, int) else default

    def float_(self, path: str, default: float) -> float:
        value = self.raw.values.get(path)
        return value if isinstance(value, float) else default

    def bool_(self, path: str, default: bool) -> bool:
        value = self.raw.values.get(path)
        return value if isinstance(value, bool) else default

    def strs(self, path: str) -> tuple[str, ...]:
        value = self.raw.values.get(path)
        return tuple(str(v) for v in value) if isinstance(value, tuple) else ()

    def pairs(self, path: str) -> tuple[tuple[str, str], ...]:
        value = self.raw.values.get(path)
        if not isinstance(value, tuple):
            return ()
        return tuple((str(k), str(v)) for k, v in value)

    def non_empty(self, path: str, value: str) -> None:
        if value == "":
            self.out.add(path, "must not be empty")

    def absolute(self, path: str, value: str | None) -> None:
        if value is not None and not os.path.isabs(value):
            self.out.add(path, "must be an absolute path")

    def readable_file(self, path: str, value: str | None) -> None:
        if value is None:
            return
        if not os.path.isabs(value):
            self.out.add(path, "must be an absolute path")
            return
        rule = _file_rule(value)
        if rule is not None:
            self.out.add(path, rule)

    def port(self, path: str, value: int) -> None:
        if not 1 <= value <= 65535:
            self.out.add(path, f"must be a port number in 1..65535, got {value}")

    def dns_label(self, path: str, value: str) -> None:
        if value and (len(value) > 63 or not _DNS_LABEL.fullmatch(value)):
            self.out.add(
                path,
                "must be a DNS label: at most 63 characters of a-z, 0-9 and '-', starting and "
                f"ending with a letter or digit, got {value[:80]!r}",
            )

    def secret(self, section: str, name: str = "password") -> Secret | None:
        """`<section>.<name>` given inline or read from `<section>.<name>_file`."""
        inline_path, file_path = f"{section}.{name}", f"{section}.{name}_file"
        inline, filename = self.opt_str(inline_path), self.opt_str(file_path)
        if inline is not None and filename is not None:
            self.out.add(inline_path, f"set {name} or {name}_file, not both")
            return None
        if inline is not None:
            if inline == "":
                self.out.add(inline_path, "must not be empty")
                return None
            return Secret(inline)
        if filename is None:
            return None
        if not os.path.isabs(filename):
            self.out.add(file_path, "must be an absolute path")
            return None
        text, rule = _read_secret_file(filename)
        if rule is not None:
            self.out.add(file_path, rule)
            return None
        return Secret(text)

    def from_pod_env(self, path: str, var: str) -> str | None:
        """An explicit setting, else the downward-API variable `var`, else None."""
        explicit = self.opt_str(path)
        if explicit is not None or path in self.out.failed:
            return explicit
        value = self.env.get(var, "")
        if value == "":
            return None
        self.raw.origins[path] = var
        return value


def _file_rule(path: str) -> str | None:
    """None when `path` is a file this process can open for reading, else the rule broken."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        return "file does not exist"
    except IsADirectoryError:
        return "is a directory, not a file"
    except PermissionError:
        return "file is not readable (permission denied)"
    except OSError as exc:
        return f"file cannot be read: {exc.strerror}"
    return None


def _read_secret_file(path: str) -> tuple[str, str | None]:
    """The secret in `path` without its trailing newline, or ("", the rule broken).
    Never puts the file's content into a rule."""
    rule = _file_rule(path)
    if rule is not None:
        return "", rule
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        return "", "file must hold UTF-8 text"
    except OSError as exc:
        return "", f"file cannot be read: {exc.strerror}"
    text = text.rstrip("\r\n")
    if text == "":
        return "", "file is empty"
    return text, None


def _url_rule(url: str, *, require_port: bool) -> str | None:
    """None when `url` is http(s)://host[:port] (port required if asked), else the rule.
    The URL itself is never quoted back: it may carry credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "scheme must be http or https"
    if not parts.hostname:
        return "must name a host"
    if require_port and port is None:
        return "must include a port, e.g. http://127.0.0.1:2379"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (use the username/password settings)"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must not have a path, query or fragment"
    return None


def _label_key_rule(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return f"label key {key!r}: the prefix must be a DNS subdomain (at most 253 characters)"
    if len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        return (
            f"label key {key!r}: the name must be 1-63 characters of A-Z, a-z, 0-9, '-', '_', "
            "'.', starting and ending with a letter or digit"
        )
    return None


def _label_value_rule(value: str) -> str | None:
    if value == "" or (len(value) <= 63 and _LABEL_NAME.fullmatch(value)):
        return None
    return (
        f"label value {value[:80]!r}: must be at most 63 characters of A-Z, a-z, 0-9, '-', '_', "
        "'.', starting and ending with a letter or digit"
    )


def _is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "*", "")


def _enum_value(b: _Builder, path: str, enum: type[_E], default: _E) -> _E | None:
    text = b.opt_str(path)
    if text is None:
        return None if path in b.out.failed else default
    try:
        return enum(text)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        b.out.add(path, f"must be one of {allowed}, got {text[:80]!r}")
        return None


def _build_credentials(b: _Builder, section: str, default_user: str) -> Credentials:
    username = b.str_(f"{section}.username", default_user)
    b.non_empty(f"{section}.username", username)
    return Credentials(username=username, password=b.secret(section))


def _build_basic(b: _Builder, section: str) -> Credentials | None:
    """Optional username + password; each requires the other."""
    username = b.opt_str(f"{section}.username")
    password = b.secret(section)
    has_password_setting = (
        f"{section}.password" in b.raw.values or f"{section}.password_file" in b.raw.values
    )
    if username is not None:
        b.non_empty(f"{section}.username", username)
        if password is None and not has_password_setting:
            b.out.add(f"{section}.password", f"is required when {section}.username is set")
    elif has_password_setting:
        b.out.add(f"{section}.username", f"is required when {section}.password is set")
    if username and password is not None:
        return Credentials(username=username, password=password)
    return None


def _build_etcd(b: _Builder) -> EtcdSettings | None:
    if "dcs.etcd" not in b.raw.sections:
        b.out.add("dcs.etcd", "is required when dcs.kind is etcd (at least dcs.etcd.endpoints)")
        return None
    endpoints = b.strs("dcs.etcd.endpoints")
    if not endpoints and "dcs.etcd.endpoints" not in b.out.failed:
        b.out.add("dcs.etcd.endpoints", "at least one endpoint is required")
    for i, url in enumerate(endpoints):
        rule = _url_rule(url, require_port=True)
        if rule is not None:
            b.out.add(f"dcs.etcd.endpoints[{i}]", rule)
    schemes = {
        urlsplit(url).scheme for url in endpoints if _url_rule(url, require_port=True) is None
    }
    if len(schemes) > 1:
        b.out.add("dcs.etcd.endpoints", "must all use the same scheme (http or https)")
    ca_file, cert_file, key_file = (
        b.opt_str("dcs.etcd.ca_file"),
        b.opt_str("dcs.etcd.cert_file"),
        b.opt_str("dcs.etcd.key_file"),
    )
    for name, value in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        b.readable_file(f"dcs.etcd.{name}", value)
    if cert_file is not None and key_file is None:
        b.out.add("dcs.etcd.key_file", "is required when dcs.etcd.cert_file is set")
    if key_file is not None and cert_file is None:
        b.out.add("dcs.etcd.cert_file", "is required when dcs.etcd.key_file is set")
    if (ca_file or cert_file or key_file) and schemes == {"http"}:
        b.out.add("dcs.etcd.endpoints", "TLS files are set, so the endpoints must use https")
    basic = _build_basic(b, "dcs.etcd")
    return EtcdSettings(
        endpoints=endpoints,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        username=basic.username if basic else None,
        password=basic.password if basic else None,
    )


def _build_kubernetes(b: _Builder, member: str, namespace: str) -> KubernetesSettings:
    d, p = KubernetesSettings(), "dcs.kubernetes"
    k8s_namespace = b.from_pod_env(f"{p}.namespace", "POD_NAMESPACE") or namespace
    b.dns_label(f"{p}.namespace", k8s_namespace)
    b.non_empty(f"{p}.namespace", k8s_namespace)
    pod_name = b.from_pod_env(f"{p}.pod_name", "POD_NAME") or member
    if pod_name and (len(pod_name) > 253 or not _DNS_SUBDOMAIN.fullmatch(pod_name)):
        b.out.add(f"{p}.pod_name", f"must be a DNS subdomain (a pod name), got {pod_name[:80]!r}")
    pod_ip = b.from_pod_env(f"{p}.pod_ip", "POD_IP")
    if pod_ip is not None:
        try:
            ipaddress.ip_address(pod_ip)
        except ValueError:
            b.out.add(f"{p}.pod_ip", f"must be an IP address, got {pod_ip[:80]!r}")
    kubeconfig = b.opt_str(f"{p}.kubeconfig")
    b.readable_file(f"{p}.kubeconfig", kubeconfig)
    labels = b.pairs(f"{p}.labels")
    for key, value in labels:
        rule = _label_key_rule(key) or _label_value_rule(value)
        if rule is not None:
            b.out.add(f"{p}.labels", rule)
    role_label = b.str_(f"{p}.role_label", d.role_label)
    rule = _label_key_rule(role_label)
    if rule is not None:
        b.out.add(f"{p}.role_label", rule)
    if role_label in dict(labels):
        b.out.add(f"{p}.labels", f"must not contain the role label {role_label!r}")
    primary_value = b.str_(f"{p}.primary_value", d.primary_value)
    replica_value = b.str_(f"{p}.replica_value", d.replica_value)
    for name, value in (("primary_value", primary_value), ("replica_value", replica_value)):
        b.non_empty(f"{p}.{name}", value)
        rule = _label_value_rule(value)
        if rule is not None:
            b.out.add(f"{p}.{name}", rule)
    if primary_value and primary_value == replica_value:
        b.out.add(f"{p}.replica_value", "must differ from dcs.kubernetes.primary_value")
    return KubernetesSettings(
        namespace=k8s_namespace,
        lock=_enum_value(b, f"{p}.lock", LockKind, d.lock) or d.lock,
        pod_name=pod_name,
        pod_ip=pod_ip,
        kubeconfig=kubeconfig,
        labels=labels,
        role_label=role_label,
        primary_value=primary_value,
        replica_value=replica_value,
        manage_role_label=b.bool_(f"{p}.manage_role_label", d.manage_role_label),
    )


def _build_dcs(b: _Builder, member: str, namespace: str) -> DcsSettings:
    kind_text = b.required("dcs.kind")
    kind = _enum_value(b, "dcs.kind", DcsKind, DcsKind.ETCD) if kind_text else None
    etcd: EtcdSettings | None = None
    kubernetes: KubernetesSettings | None = None
    if kind is DcsKind.ETCD:
        etcd = _build_etcd(b)
        # Inside Kubernetes with an etcd DCS, this section still drives the pod role labels.
        if "dcs.kubernetes" in b.raw.sections:
            kubernetes = _build_kubernetes(b, member, namespace)
    elif kind is DcsKind.KUBERNETES:
        kubernetes = _build_kubernetes(b, member, namespace)
        if "dcs.etcd" in b.raw.sections:
            b.out.add("dcs.etcd", "is only allowed when dcs.kind is etcd")
    return DcsSettings(kind=kind or DcsKind.ETCD, etcd=etcd, kubernetes=kubernetes)


def _build_postgres(b: _Builder) -> PostgresSettings:
    d, p = PostgresSettings(data_dir="/"), "postgresql"
    data_dir = b.required(f"{p}.data_dir")
    bin_dir = b.str_(f"{p}.bin_dir", d.bin_dir)
    socket_dir = b.opt_str(f"{p}.socket_dir")
    for name, value in (("data_dir", data_dir), ("bin_dir", bin_dir), ("socket_dir", socket_dir)):
        if value != "":
            b.absolute(f"{p}.{name}", value)
    listen_host = b.str_(f"{p}.listen_host", d.listen_host)
    connect_host = b.str_(f"{p}.connect_host", d.connect_host)
    for name, value in (("listen_host", listen_host), ("connect_host", connect_host)):
        b.non_empty(f"{p}.{name}", value)
        if any(c.isspace() for c in value):
            b.out.add(f"{p}.{name}", "must not contain whitespace")
    if connect_host and _is_wildcard(connect_host):
        b.out.add(f"{p}.connect_host", "must be an address others can connect to, not a wildcard")
    port = b.int_(f"{p}.port", d.port)
    b.port(f"{p}.port", port)
    os_user = b.opt_str(f"{p}.os_user")
    if os_user is not None:
        b.non_empty(f"{p}.os_user", os_user)
    parameters = b.pairs(f"{p}.parameters")
    for name, _ in parameters:
        if not _GUC_NAME.fullmatch(name):
            b.out.add(f"{p}.parameters", f"{name[:80]!r} is not a PostgreSQL parameter name")
        elif name.lower() in _MANAGED_PARAMETERS:
            why = _MANAGED_PARAMETERS[name.lower()]
            b.out.add(f"{p}.parameters", f"{name!r} is set by pgwarden ({why})")
    wal_level = dict((k.lower(), v) for k, v in parameters).get("wal_level")
    if wal_level is not None and wal_level not in _WAL_LEVELS:
        b.out.add(f"{p}.parameters", "wal_level must be replica or logical (replicas stream WAL)")
    pg_hba = b.strs(f"{p}.pg_hba")
    for i, line in enumerate(pg_hba):
        words = line.split()
        if "\n" in line or "\r" in line:
            b.out.add(f"{p}.pg_hba[{i}]", "must be a single line")
        elif not words or words[0] not in _HBA_TYPES:
            b.out.add(
                f"{p}.pg_hba[{i}]",
                "must start with a connection type: " + ", ".join(sorted(_HBA_TYPES)),
            )
    return PostgresSettings(
        bin_dir=bin_dir,
        data_dir=data_dir,
        listen_host=listen_host,
        port=port,
        connect_host=connect_host,
        socket_dir=socket_dir,
        os_user=os_user,
        superuser=_build_credentials(b, f"{p}.superuser", d.superuser.username),
        replication=_build_credentials(b, f"{p}.replication", d.replication.username),
        parameters=parameters,
        pg_hba=pg_hba,
    )


def _build_api(b: _Builder) -> ApiSettings:
    d, p = ApiSettings(), "api"
    listen_host = b.str_(f"{p}.listen_host", d.listen_host)
    b.non_empty(f"{p}.listen_host", listen_host)
    port = b.int_(f"{p}.port", d.port)
    b.port(f"{p}.port", port)
    connect_url = b.opt_str(f"{p}.connect_url")
    if connect_url is not None:
        rule = _url_rule(connect_url, require_port=False)
        if rule is not None:
            b.out.add(f"{p}.connect_url", rule)
    elif listen_host and _is_wildcard(listen_host):
        b.out.add(
            f"{p}.connect_url",
            "is required when api.listen_host is a wildcard address (peers need a reachable URL)",
        )
    token = b.secret(p, "token")
    basic = _build_basic(b, p)
    insecure = b.bool_(f"{p}.insecure_no_auth", d.insecure_no_auth)
    has_auth_settings = any(
        f"{p}.{name}" in b.raw.values
        for name in ("token", "token_file", "username", "password", "password_file")
    )
    if not insecure and not has_auth_settings:
        b.out.add(f"{p}.token", "set a token or basic credentials, or api.insecure_no_auth: true")
    if insecure and has_auth_settings:
        b.out.add(f"{p}.insecure_no_auth", "must not be true when a token or credentials are set")
    return ApiSettings(
        listen_host=listen_host,
        port=port,
        connect_url=connect_url,
        token=token,
        basic=basic,
        insecure_no_auth=insecure,
    )


def _build_timing(b: _Builder) -> Timing:
    d = Timing()
    values = {
        f.name: b.float_(f"timing.{f.name}", getattr(d, f.name)) for f in dataclasses.fields(d)
    }
    for name, value in values.items():
        if value <= 0:
            b.out.add(f"timing.{name}", f"must be > 0, got {value:g}")
    t = Timing(**values)
    if 0 < t.ttl_s < 4:
        b.out.add("timing.ttl_s", f"must be >= 4, got {t.ttl_s:g}")
    if 0 < t.fence_margin_s < 0.5:
        b.out.add("timing.fence_margin_s", f"must be >= 0.5, got {t.fence_margin_s:g}")
    if 0 < t.loop_wait_s <= t.peer_check_timeout_s:
        b.out.add(
            "timing.peer_check_timeout_s",
            f"must be < timing.loop_wait_s ({t.peer_check_timeout_s:g} >= {t.loop_wait_s:g})",
        )
    # Why: a hung server is only noticed by a probe that times out (within retry_timeout_s);
    # it must then be killed while the lease is surely still ours, before the fence deadline.
    hung_bound = t.postgres_unresponsive_s + t.retry_timeout_s
    if min(values.values()) > 0 and hung_bound > t.ttl_s - t.fence_margin_s:
        b.out.add(
            "timing.postgres_unresponsive_s",
            "must leave time to notice and kill a hung server inside the lease: "
            "postgres_unresponsive_s + retry_timeout_s <= ttl_s - fence_margin_s "
            f"({hung_bound:g} > {t.ttl_s - t.fence_margin_s:g})",
        )
    # Why: a renewal sent at the start of a cycle may fail after retry_timeout_s; the next
    # one is sent at most loop_wait_s later and may itself take retry_timeout_s; the primary
    # must still have fence_margin_s left to stop writes before its lease expires.
    needed = t.loop_wait_s + 2 * t.retry_timeout_s + t.fence_margin_s
    if min(values.values()) > 0 and needed > t.ttl_s:
        b.out.add(
            "timing.ttl_s",
            "must be >= loop_wait_s + 2 * retry_timeout_s + fence_margin_s = "
            f"{t.loop_wait_s:g} + 2 * {t.retry_timeout_s:g} + {t.fence_margin_s:g} = "
            f"{needed:g}, got {t.ttl_s:g}",
        )
    return t


def _build_settings(b: _Builder) -> Settings:
    name = b.required("name")
    cluster = b.required("cluster")
    namespace = b.str_("namespace", "pgwarden")
    for path, value in (("name", name), ("cluster", cluster), ("namespace", namespace)):
        b.non_empty(path, value)
        b.dns_label(path, value)
    # A member's name is its application_name in primary_conninfo and
    # synchronous_standby_names: ASCII and shorter than NAMEDATALEN (64 bytes).
    if name and not (name.isascii() and name.isprintable() and len(name) < 64):
        b.out.add("name", "must be a valid PostgreSQL application_name (ASCII, < 64 bytes)")
    run_dir = b.required("run_dir")
    if run_dir:
        b.absolute("run_dir", run_dir)
    d_tags, d_ha, d_log = Tags(), HaSettings(), LogSettings()
    tags = Tags(
        nofailover=b.bool_("tags.nofailover", d_tags.nofailover),
        failover_priority=b.int_("tags.failover_priority", d_tags.failover_priority),
        nosync=b.bool_("tags.nosync", d_tags.nosync),
        sync_priority=b.int_("tags.sync_priority", d_tags.sync_priority),
    )
    for field_name in ("failover_priority", "sync_priority"):
        value = getattr(tags, field_name)
        if value < 0:
            b.out.add(f"tags.{field_name}", f"must be >= 0, got {value}")
    # A member that is never synchronous has no synchronous priority, and one that never
    # takes over has no failover priority: a value for both says two things at once.
    if tags.nosync and "tags.sync_priority" in b.raw.values and tags.sync_priority > 0:
        b.out.add(
            "tags.sync_priority",
            f"conflicts with tags.nosync: true (a nosync member is never synchronous); "
            f"remove it or set it to 0, got {tags.sync_priority}",
        )
    if tags.nofailover and "tags.failover_priority" in b.raw.values and tags.failover_priority > 0:
        b.out.add(
            "tags.failover_priority",
            f"conflicts with tags.nofailover: true (such a member never takes over); "
            f"remove it or set it to 0, got {tags.failover_priority}",
        )
    ha = HaSettings(
        maximum_lag_on_failover_bytes=b.int_(
            "ha.maximum_lag_on_failover_bytes", d_ha.maximum_lag_on_failover_bytes
        ),
        synchronous_mode=b.str_("ha.synchronous_mode", d_ha.synchronous_mode),
        synchronous_node_count=b.int_("ha.synchronous_node_count", d_ha.synchronous_node_count),
        synchronous_mode_strict=b.bool_("ha.synchronous_mode_strict", d_ha.synchronous_mode_strict),
        maximum_lag_on_syncnode_bytes=b.int_(
            "ha.maximum_lag_on_syncnode_bytes", d_ha.maximum_lag_on_syncnode_bytes
        ),
        failsafe_mode=b.bool_("ha.failsafe_mode", d_ha.failsafe_mode),
    )
    if ha.synchronous_mode not in SYNC_MODES:
        b.out.add(
            "ha.synchronous_mode",
            f"must be one of {', '.join(SYNC_MODES)}, got {ha.synchronous_mode[:40]!r}",
        )
    if ha.synchronous_node_count < 1:
        b.out.add("ha.synchronous_node_count", f"must be >= 1, got {ha.synchronous_node_count}")
    if ha.maximum_lag_on_syncnode_bytes < -1:
        b.out.add(
            "ha.maximum_lag_on_syncnode_bytes",
            f"must be -1 (no limit) or >= 0, got {ha.maximum_lag_on_syncnode_bytes}",
        )
    if ha.maximum_lag_on_failover_bytes < 0:
        b.out.add(
            "ha.maximum_lag_on_failover_bytes",
            f"must be >= 0, got {ha.maximum_lag_on_failover_bytes}",
        )
    level = b.str_("log.level", d_log.level)
    if level not in LOG_LEVELS:
        b.out.add("log.level", f"must be one of {', '.join(LOG_LEVELS)}, got {level[:80]!r}")
    log = LogSettings(
        level=level, format=_enum_value(b, "log.format", LogFormat, d_log.format) or d_log.format
    )
    postgresql = _build_postgres(b)
    api = _build_api(b)
    if api.port == postgresql.port and api.listen_host == postgresql.listen_host:
        b.out.add("api.port", f"must differ from postgresql.port ({api.port}) on the same host")
    return Settings(
        name=name,
        cluster=cluster,
        namespace=namespace,
        run_dir=run_dir,
        dcs=_build_dcs(b, name, namespace),
        postgresql=postgresql,
        api=api,
        timing=_build_timing(b),
        tags=tags,
        ha=ha,
        log=log,
    )


def load_settings(path: str | None, env: Mapping[str, str]) -> Settings:
    """Read `path` (YAML; None for none), apply PGWARDEN_* overrides from `env`, validate.

    Returns frozen Settings, or raises ConfigError listing every problem found (never only
    the first). Secret files (`*_file`) are read here, once. `env` is also consulted for the
    Kubernetes downward-API variables POD_NAME, POD_IP and POD_NAMESPACE, which fill
    `dcs.kubernetes.pod_name/pod_ip/namespace` when those are not set explicitly.
    """
    out, raw = _Collector(), _Raw()
    document = _read_file(path, out) if path is not None else {}
    if isinstance(document, dict):
        _walk(document, "", raw, out)
    _apply_env(env, raw, out)
    settings = _build_settings(_Builder(raw=raw, out=out, env=env))
    if out.problems:
        raise ConfigError([_with_origin(p, raw.origins) for p in out.problems])
    return settings


def _with_origin(problem: ConfigProblem, origins: Mapping[str, str]) -> ConfigProblem:
    """Say which environment variable set a bad value, unless the rule already does."""
    base = problem.field.split("[", 1)[0]
    var = origins.get(base)
    if var is None or var in problem.rule:
        return problem
    return ConfigProblem(field=problem.field, rule=f"{problem.rule} (set by {var})")


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _secret_text(secret: Secret | None) -> str | None:
    return None if secret is None else MASK


def _credentials_layout(creds: Credentials) -> dict[str, object]:
    return {"username": creds.username, "password": _secret_text(creds.password)}


def render_effective(settings: Settings) -> str:
    """The effective settings as YAML, in the configuration file's layout, with every secret
    shown as "********" (secrets read from files appear as `password`, not `*_file`)."""
    s = settings
    dcs: dict[str, object] = {"kind": s.dcs.kind.value}
    if s.dcs.etcd is not None:
        e = s.dcs.etcd
        dcs["etcd"] = {
            "endpoints": list(e.endpoints),
            "ca_file": e.ca_file,
            "cert_file": e.cert_file,
            "key_file": e.key_file,
            "username": e.username,
            "password": _secret_text(e.password),
        }
    if s.dcs.kubernetes is not None:
        k = s.dcs.kubernetes
        dcs["kubernetes"] = {
            "namespace": k.namespace,
            "lock": k.lock.value,
            "pod_name": k.pod_name,
            "pod_ip": k.pod_ip,
            "kubeconfig": k.kubeconfig,
            "labels": dict(k.labels),
            "role_label": k.role_label,
            "primary_value": k.primary_value,
            "replica_value": k.replica_value,
            "manage_role_label": k.manage_role_label,
        }
    pg = s.postgresql
    document: dict[str, object] = {
        "name": s.name,
        "cluster": s.cluster,
        "namespace": s.namespace,
        "run_dir": s.run_dir,
        "dcs": dcs,
        "postgresql": {
            "bin_dir": pg.bin_dir,
            "data_dir": pg.data_dir,
            "listen_host": pg.listen_host,
            "port": pg.port,
            "connect_host": pg.connect_host,
            "socket_dir": pg.socket_dir,
            "os_user": pg.os_user,
            "superuser": _credentials_layout(pg.superuser),
            "replication": _credentials_layout(pg.replication),
            "parameters": dict(pg.parameters),
            "pg_hba": list(pg.pg_hba),
        },
        "api": {
            "listen_host": s.api.listen_host,
            "port": s.api.port,
            "connect_url": s.api.url,  # the effective one: unset means derived from the above
            "token": _secret_text(s.api.token),
            "username": s.api.basic.username if s.api.basic else None,
            "password": _secret_text(s.api.basic.password if s.api.basic else None),
            "insecure_no_auth": s.api.insecure_no_auth,
        },
        "timing": dataclasses.asdict(s.timing),
        "tags": dataclasses.asdict(s.tags),
        "ha": dataclasses.asdict(s.ha),
        "log": {"level": s.log.level, "format": s.log.format.value},
    }
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
