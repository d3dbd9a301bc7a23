"""Loading the configuration: a YAML file plus PGWARDEN_* environment overrides.

`load_settings()` reads, merges and validates, and either returns `Settings` or raises
`ConfigError` listing every problem at once, each naming the field (dotted path, e.g.
`timing.ttl_s`), the rule it breaks and, for a value from the environment, the variable that
set it. Nothing is ever silently corrected.

The settings types and their own rules live in agent/settings.py and its sections
(dcs_settings.py, postgres_settings.py, api_settings.py, ...; re-exported here); every
configuration key is listed once, in agent/config/fields.py, from which reading (read.py),
building (build.py), rendering (render.py) and the docs' reference tables (reference.py)
derive. The pure core imports agent.settings, never this package.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.api_settings import ApiSettings
from agent.config.build import Builder, build_settings, with_origin
from agent.config.field import ENV_PREFIX, env_var_name
from agent.config.fields import FIELDS
from agent.config.read import (
    CONFIG_ENV_VAR,
    RESERVED_ENV_VARS,
    Collector,
    Raw,
    apply_env,
    read_file,
    walk,
)
from agent.config.render import MASK, render_effective
from agent.dcs_settings import DcsKind, DcsSettings, EtcdSettings, KubernetesSettings, LockKind
from agent.postgres_settings import PostgresSettings
from agent.settings import (
    LOG_LEVELS,
    SYNC_MODES,
    HaSettings,
    InvalidSettings,
    LogFormat,
    LogLevel,
    LogSettings,
    Settings,
    SyncMode,
    Tags,
    Timing,
)
from agent.value_rules import ConfigProblem, Credentials, Secret

__all__ = [
    "CONFIG_ENV_VAR",
    "ENV_PREFIX",
    "LOG_LEVELS",
    "MASK",
    "RESERVED_ENV_VARS",
    "SYNC_MODES",
    "ApiSettings",
    "ConfigError",
    "ConfigProblem",
    "Credentials",
    "DcsKind",
    "DcsSettings",
    "EtcdSettings",
    "HaSettings",
    "InvalidSettings",
    "KubernetesSettings",
    "LockKind",
    "LogFormat",
    "LogLevel",
    "LogSettings",
    "PostgresSettings",
    "Secret",
    "Settings",
    "SyncMode",
    "Tags",
    "Timing",
    "env_var_name",
    "known_settings",
    "load_settings",
    "render_effective",
]


class ConfigError(Exception):
    """Every problem found in one configuration, each naming its field and rule."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def known_settings() -> Mapping[str, str]:
    """Every key's dotted path and its value type in words (for docs and tests)."""
    return {f.path: str(f.kind) for f in FIELDS}


def load_settings(path: str | None, env: Mapping[str, str]) -> Settings:
    """Read `path` (YAML; None for none), apply PGWARDEN_* overrides from `env`, validate.

    Returns frozen Settings, or raises ConfigError listing every problem found (never only
    the first). Secret files (`*_file`) are read here, once. `env` is also consulted for the
    Kubernetes downward-API variables POD_NAME, POD_IP and POD_NAMESPACE, which fill
    `dcs.kubernetes.pod_name/pod_ip/namespace` when those are not set explicitly.
    """
    out, raw = Collector(), Raw()
    document = read_file(path, out) if path is not None else {}
    if isinstance(document, dict):
        walk(document, "", raw, out)
    apply_env(env, raw, out)
    settings = build_settings(Builder(raw=raw, out=out, env=env))
    if out.problems:
        raise ConfigError([with_origin(p, raw.origins) for p in out.problems])
    return settings
