"""Pass 2 of loading: the settings types from the flat input, and every rule checked.

Plain keys go to their type generically (`Builder.build`, driven by the field list); the type
supplies defaults and checks its own rules (`problems()`). What is read here by hand: secrets
(inline or from a file), credentials pairs, values computed from other settings or from the
Kubernetes downward API; and the rules that depend on how the input was written (a file must
be readable, a setting conflicts with another only when given explicitly).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol, TypeVar

from agent.api_settings import ApiSettings, ApiTlsSettings
from agent.backup_settings import (
    DEFAULT_REPLICA_METHODS,
    BootstrapSettings,
    PgBackRestSettings,
    ReplicaMethod,
)
from agent.callback_settings import CallbackEvent, CallbackSettings, command_rule
from agent.config.field import Field, Kind
from agent.config.fields import FIELDS
from agent.config.read import Collector, Raw
from agent.dcs_settings import DcsKind, DcsSettings, EtcdSettings, KubernetesSettings
from agent.pgparams import AGENT_OWNED
from agent.postgres_settings import PostgresSettings, PostgresTls
from agent.settings import (
    FencerSettings,
    HaSettings,
    LogSettings,
    Settings,
    Tags,
    Timing,
    unchecked,
)
from agent.value_rules import ConfigProblem, Credentials, Secret


class _Checked(Protocol):
    def problems(self) -> Iterable[ConfigProblem]: ...


_T = TypeVar("_T", bound=_Checked)
_E = TypeVar("_E", bound=StrEnum)

# Parameters the agent sets itself are refused in `postgresql.parameters` (the file's and the
# DCS's alike): agent/pgparams.py AGENT_OWNED, one list with the reason for each.
MANAGED_PARAMETERS: Final = AGENT_OWNED


def _plain_fields(section: str) -> list[Field]:
    """The keys directly in `section` that fill an attribute of the same name."""
    prefix = f"{section}." if section else ""
    return [
        f
        for f in FIELDS
        if f.path.startswith(prefix)
        and "." not in f.path[len(prefix) :]
        and f.kind not in (Kind.SECTION, Kind.SECRET)
        and f.source == ""
    ]


@dataclass(slots=True)
class Builder:
    """Typed reads from the flat input; every problem goes to `out`."""

    raw: Raw
    out: Collector
    env: Mapping[str, str]

    def values(self, section: str) -> dict[str, object]:
        """The plain keys of `section` that are set, by attribute name (the type has the
        defaults); a required key that is missing is reported and given "" to go on."""
        found: dict[str, object] = {}
        for f in _plain_fields(section):
            name = f.path.rsplit(".", 1)[-1]
            if f.required:
                found[name] = self.required(f.path)
            elif f.choices is not None:
                choice = self.enum(f.path, f.choices)
                if choice is not None:
                    found[name] = choice
            elif f.path in self.raw.values:
                found[name] = self.raw.values[f.path]
        return found

    def build(self, section: str, cls: type[_T], **values: object) -> _T:
        """`cls` from the plain keys of `section` and `values`, its problems reported."""
        instance = unchecked(cls, **(self.values(section) | values))
        self.check(section, instance)
        return instance

    def check(self, section: str, instance: _Checked) -> None:
        self.out.report(section, instance.problems())

    def opt_str(self, path: str) -> str | None:
        value = self.raw.values.get(path)
        return value if isinstance(value, str) else None

    def required(self, path: str) -> str:
        value = self.opt_str(path)
        if value is None:
            self.out.fail(path, "is required")
            return ""
        return value

    def enum(self, path: str, enum: type[_E]) -> _E | None:
        text = self.opt_str(path)
        if text is None:
            return None
        try:
            return enum(text)
        except ValueError:
            allowed = ", ".join(e.value for e in enum)
            self.out.add(path, f"must be one of {allowed}, got {text[:80]!r}")
            return None

    def readable_file(self, path: str, value: object) -> None:
        """An absolute path must name a readable file (the type checks that it is absolute)."""
        if isinstance(value, str) and os.path.isabs(value):
            rule = _file_rule(value)
            if rule is not None:
                self.out.add(path, rule)

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


# ------------------------------------------------------------------------- sections


def _credentials(b: Builder, section: str, default: Credentials) -> Credentials:
    username = b.values(section).get("username", default.username)
    return b.build(section, Credentials, username=username, password=b.secret(section))


def _basic(b: Builder, section: str) -> Credentials | None:
    """Optional username + password; each requires the other."""
    username = b.opt_str(f"{section}.username")
    password = b.secret(section)
    has_password_setting = (
        f"{section}.password" in b.raw.values or f"{section}.password_file" in b.raw.values
    )
    if username is not None:
        if username == "":
            b.out.add(f"{section}.username", "must not be empty")
        if password is None and not has_password_setting:
            b.out.add(f"{section}.password", f"is required when {section}.username is set")
    elif has_password_setting:
        b.out.add(f"{section}.username", f"is required when {section}.password is set")
    if username and password is not None:
        return Credentials(username=username, password=password)
    return None


def _etcd(b: Builder) -> EtcdSettings | None:
    section = "dcs.etcd"
    if section not in b.raw.sections:
        return None  # DcsSettings says whether it was required
    values = b.values(section)
    for name in ("ca_file", "cert_file", "key_file"):
        b.readable_file(f"{section}.{name}", values.get(name))
    basic = _basic(b, section)
    return b.build(
        section,
        EtcdSettings,
        endpoints=values.get("endpoints", ()),
        username=basic.username if basic else None,
        password=basic.password if basic else None,
    )


def _kubernetes(b: Builder, member: str, namespace: str) -> KubernetesSettings:
    p = "dcs.kubernetes"
    b.readable_file(f"{p}.kubeconfig", b.raw.values.get(f"{p}.kubeconfig"))
    return b.build(
        p,
        KubernetesSettings,
        namespace=b.from_pod_env(f"{p}.namespace", "POD_NAMESPACE") or namespace,
        pod_name=b.from_pod_env(f"{p}.pod_name", "POD_NAME") or member,
        pod_ip=b.from_pod_env(f"{p}.pod_ip", "POD_IP"),
    )


def _dcs(b: Builder, member: str, namespace: str) -> DcsSettings:
    kind_text = b.required("dcs.kind")
    kind = b.enum("dcs.kind", DcsKind) if kind_text else None
    etcd: EtcdSettings | None = None
    kubernetes: KubernetesSettings | None = None
    if kind is DcsKind.ETCD:
        etcd = _etcd(b)
        # Inside Kubernetes with an etcd DCS, this section still drives the pod role labels.
        if "dcs.kubernetes" in b.raw.sections:
            kubernetes = _kubernetes(b, member, namespace)
    elif kind is DcsKind.KUBERNETES:
        kubernetes = _kubernetes(b, member, namespace)
        if "dcs.etcd" in b.raw.sections:  # present, so refused: not built, not checked
            etcd = unchecked(EtcdSettings, endpoints=())
    dcs = unchecked(DcsSettings, kind=kind or DcsKind.ETCD, etcd=etcd, kubernetes=kubernetes)
    if kind is not None:
        b.check("dcs", dcs)
    return dcs


def _postgres_tls(b: Builder) -> PostgresTls | None:
    section = "postgresql.tls"
    if section not in b.raw.sections:
        return None
    tls = b.build(section, PostgresTls)
    for name in ("cert_file", "key_file", "ca_file"):
        b.readable_file(f"{section}.{name}", getattr(tls, name))
    return tls


def _postgres(b: Builder) -> PostgresSettings:
    p = "postgresql"
    defaults = unchecked(PostgresSettings, data_dir="")
    postgres = b.build(
        p,
        PostgresSettings,
        superuser=_credentials(b, f"{p}.superuser", defaults.superuser),
        replication=_credentials(b, f"{p}.replication", defaults.replication),
        tls=_postgres_tls(b),
    )
    for name, _ in postgres.parameters:
        if name.lower() in MANAGED_PARAMETERS:
            why = MANAGED_PARAMETERS[name.lower()]
            b.out.add(f"{p}.parameters", f"{name!r} is set by pgwarden ({why})")
    return postgres


def _api_tls(b: Builder) -> ApiTlsSettings | None:
    section = "api.tls"
    if section not in b.raw.sections:
        return None
    values = b.values(section)
    for name in ("cert_file", "key_file", "ca_file"):
        b.readable_file(f"{section}.{name}", values.get(name))
    for name in ("cert_file", "key_file"):
        if name not in values:
            b.out.add(f"{section}.{name}", "is required when api.tls is set")
            values[name] = ""
    return b.build(section, ApiTlsSettings, **values)


def _api(b: Builder) -> ApiSettings:
    p = "api"
    api = b.build(
        p,
        ApiSettings,
        connect_url=b.opt_str(f"{p}.connect_url"),
        token=b.secret(p, "token"),
        basic=_basic(b, p),
        tls=_api_tls(b),
    )
    has_auth_settings = any(
        f"{p}.{name}" in b.raw.values
        for name in ("token", "token_file", "username", "password", "password_file")
    )
    if not api.insecure_no_auth and not has_auth_settings:
        b.out.add(f"{p}.token", "set a token or basic credentials, or api.insecure_no_auth: true")
    if api.insecure_no_auth and has_auth_settings:
        b.out.add(f"{p}.insecure_no_auth", "must not be true when a token or credentials are set")
    return api


def _tags(b: Builder) -> Tags:
    tags = b.build("tags", Tags)
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
    return tags


def _callbacks(b: Builder) -> CallbackSettings:
    callbacks = b.build("callbacks", CallbackSettings)
    for event in CallbackEvent:
        command = callbacks.command(event)
        if command is not None and command_rule(command) is None:
            program = shlex.split(command)[0]
            if not (os.path.isfile(program) and os.access(program, os.X_OK)):
                b.out.add(f"callbacks.{event.value}", f"{program!r} is not an executable file")
    return callbacks


def _pgbackrest(b: Builder) -> PgBackRestSettings | None:
    section = "pgbackrest"
    if section not in b.raw.sections:
        return None
    values = b.values(section)
    if "repo_path" not in values:
        b.out.add(f"{section}.repo_path", "is required when pgbackrest is set")
        values["repo_path"] = "/"
    settings = b.build(section, PgBackRestSettings, **values)
    command = settings.command
    if os.path.isabs(command) and not (os.path.isfile(command) and os.access(command, os.X_OK)):
        b.out.add(f"{section}.command", f"{command!r} is not an executable file")
    return settings


def _replica_methods(b: Builder, given: object) -> tuple[ReplicaMethod, ...]:
    if not isinstance(given, tuple):
        return DEFAULT_REPLICA_METHODS
    methods = []
    for i, name in enumerate(given):
        try:
            methods.append(ReplicaMethod(name))
        except ValueError:
            allowed = ", ".join(m.value for m in ReplicaMethod)
            b.out.add(f"create_replica_methods[{i}]", f"must be one of {allowed}, got {name!r}")
    return tuple(methods)


def _archive_parameters(b: Builder, settings: Settings) -> None:
    """With pgBackRest the agent sets the archive settings itself."""
    if settings.pgbackrest is None:
        return
    for name, _ in settings.postgresql.parameters:
        if name.lower() in ("archive_mode", "archive_command", "restore_command"):
            b.out.add("postgresql.parameters", f"{name!r} is set by pgwarden (pgbackrest)")


def build_settings(b: Builder) -> Settings:
    """Every section built and checked; the result is only valid when `b.out` stayed empty."""
    top = b.values("")
    default_namespace = next(
        f.default for f in dataclasses.fields(Settings) if f.name == "namespace"
    )
    name, namespace = str(top["name"]), str(top.get("namespace", default_namespace))
    methods = _replica_methods(b, top.pop("create_replica_methods", None))
    settings = unchecked(
        Settings,
        **top,
        create_replica_methods=methods,
        pgbackrest=_pgbackrest(b),
        bootstrap=b.build("bootstrap", BootstrapSettings),
        dcs=_dcs(b, name, namespace),
        postgresql=_postgres(b),
        api=_api(b),
        timing=b.build("timing", Timing),
        tags=_tags(b),
        ha=b.build("ha", HaSettings),
        log=b.build("log", LogSettings),
        fencer=b.build("fencer", FencerSettings),
        callbacks=_callbacks(b),
    )
    b.check("", settings)
    _archive_parameters(b, settings)
    return settings


def with_origin(problem: ConfigProblem, origins: Mapping[str, str]) -> ConfigProblem:
    """Say which environment variable set a bad value, unless the rule already does."""
    base = problem.field.split("[", 1)[0]
    var = origins.get(base)
    if var is None or var in problem.rule:
        return problem
    return ConfigProblem(field=problem.field, rule=f"{problem.rule} (set by {var})")
