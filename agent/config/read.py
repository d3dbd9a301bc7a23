"""Pass 1 of loading: the YAML file and the PGWARDEN_* environment into one flat, type-checked
map {dotted path: value}, checking keys and value types against the field list. Every problem
goes to one `Collector`, each naming its field (or variable) and rule."""

from __future__ import annotations

import difflib
import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import yaml

from agent.config.field import ENV_PREFIX, Kind, env_var_name
from agent.config.fields import FIELDS
from agent.value_rules import ConfigProblem

CONFIG_ENV_VAR: Final = "PGWARDEN_CONFIG"
"""Names the configuration file for `pgwarden run` when --config is not given; not a setting."""

RESERVED_ENV_VARS: Final = frozenset(
    {
        CONFIG_ENV_VAR,
        "PGWARDEN_URL",
        "PGWARDEN_TOKEN",
        "PGWARDEN_USER",
        "PGWARDEN_PASSWORD",
        "PGWARDEN_CA_FILE",
        "PGWARDEN_CERT_FILE",
        "PGWARDEN_KEY_FILE",
        "PGWARDEN_SA_DIR",
        "PGWARDEN_TEST_PG",
    }
)
"""PGWARDEN_* variables that are not settings (the config file path; `pgwarden ctl`'s
connection defaults, which may be set in the agent's own environment for `kubectl exec`;
the service-account directory override of agent/kube/client.py; the test suite's choice of
PostgreSQL versions, which the agents it starts inherit)."""

SCHEMA: Final[Mapping[str, Kind]] = {f.path: f.kind for f in FIELDS}
"""Every key by dotted path, sections included: the known keys and their value types."""

_TRUE_WORDS: Final = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS: Final = frozenset({"false", "no", "off", "0"})


def _children(section: str) -> list[str]:
    prefix = f"{section}." if section else ""
    return sorted(
        p[len(prefix) :] for p in SCHEMA if p.startswith(prefix) and "." not in p[len(prefix) :]
    )


def _join(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def type_word(value: object) -> str:
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
class Collector:
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

    def report(self, section: str, problems: Iterable[ConfigProblem]) -> None:
        """A settings type's own problems, its fields (relative to the type) under `section`."""
        for problem in problems:
            self.add(_join(section, problem.field), problem.rule)


def _convert_value(value: object, kind: Kind) -> tuple[object, str | None]:
    """(`value` converted to the Python type of `kind`, None) or (_INVALID, the rule broken)."""
    quote = " (quote it in YAML)" if isinstance(value, bool | int | float) else ""
    match kind:
        case Kind.STR | Kind.SECRET:
            if isinstance(value, str):
                return value, None
            return _INVALID, f"must be a string, not {type_word(value)}{quote}"
        case Kind.INT:
            if isinstance(value, int) and not isinstance(value, bool):
                return value, None
            return _INVALID, f"must be an integer, not {type_word(value)}"
        case Kind.FLOAT:
            if isinstance(value, int | float) and not isinstance(value, bool):
                if not math.isfinite(value):
                    return _INVALID, "must be a finite number"
                return float(value), None
            return _INVALID, f"must be a number, not {type_word(value)}"
        case Kind.BOOL:
            if isinstance(value, bool):
                return value, None
            return _INVALID, f"must be a boolean (true or false), not {type_word(value)}"
        case Kind.STR_LIST:
            if not isinstance(value, list):
                return _INVALID, f"must be a list of strings, not {type_word(value)}"
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    return _INVALID, f"item {i} must be a string, not {type_word(item)}"
            return tuple(value), None
        case Kind.STR_MAP | Kind.PARAM_MAP:
            if not isinstance(value, dict):
                return _INVALID, f"must be a {kind}, not {type_word(value)}"
            pairs: list[tuple[str, str]] = []
            for key, item in value.items():
                if not isinstance(key, str):
                    return _INVALID, f"key {key!r} must be a string{quote}"
                text = _scalar_text(item) if kind is Kind.PARAM_MAP else item
                if not isinstance(text, str):
                    return _INVALID, f"value of {key!r} must be a {kind.split(' to ')[-1]}, " + (
                        f"not {type_word(item)}"
                    )
                pairs.append((key, text))
            return tuple(pairs), None
        case Kind.SECTION:  # pragma: no cover - sections are walked, never converted
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
class Raw:
    """The flat, type-checked input: {dotted path: value}, the sections that were present,
    and which environment variable set which path."""

    values: dict[str, object] = field(default_factory=dict)
    sections: set[str] = field(default_factory=set)
    origins: dict[str, str] = field(default_factory=dict)

    def mark_present(self, path: str) -> None:
        parts = path.split(".")
        for i in range(1, len(parts)):
            self.sections.add(".".join(parts[:i]))


def walk(node: object, section: str, raw: Raw, out: Collector) -> None:
    if not isinstance(node, dict):
        out.fail(section, f"must be a mapping, not {type_word(node)}")
        return
    raw.sections.add(section)
    for key, value in node.items():
        if not isinstance(key, str):
            out.add(_join(section, str(key)), "keys must be strings")
            continue
        path = _join(section, key)
        kind = SCHEMA.get(path)
        if kind is None:
            expected = ", ".join(_children(section))
            hint = difflib.get_close_matches(key, _children(section), n=1)
            near = f" (did you mean {hint[0]!r}?)" if hint else ""
            out.add(path, f"unknown key{near}; expected one of: {expected}")
            continue
        if value is None:
            continue  # `key:` with nothing after it means "not set": the default applies
        if kind is Kind.SECTION:
            walk(value, path, raw, out)
            continue
        converted, rule = _convert_value(value, kind)
        if rule is not None:
            out.fail(path, rule)
        else:
            raw.values[path] = converted


def _parse_env_value(text: str, kind: Kind) -> tuple[object, str | None]:
    match kind:
        case Kind.STR | Kind.SECRET:
            return text, None
        case Kind.INT:
            try:
                return int(text.strip(), 10), None
            except ValueError:
                return _INVALID, f"must be an integer, got {text!r}"
        case Kind.FLOAT:
            try:
                number = float(text.strip())
            except ValueError:
                return _INVALID, f"must be a number, got {text!r}"
            return _convert_value(number, kind)
        case Kind.BOOL:
            word = text.strip().lower()
            if word in _TRUE_WORDS or word in _FALSE_WORDS:
                return word in _TRUE_WORDS, None
            return _INVALID, f"must be true or false, got {text!r}"
        case Kind.STR_LIST | Kind.STR_MAP | Kind.PARAM_MAP:
            stripped = text.strip()
            if stripped.startswith(("[", "{")):  # a YAML flow collection, for commas in values
                try:
                    loaded: object = yaml.safe_load(stripped)
                except yaml.YAMLError:
                    return _INVALID, "is not a valid YAML flow list/mapping"
                return _convert_value(loaded, kind)
            items = [item.strip() for item in stripped.split(",") if item.strip()]
            if kind is Kind.STR_LIST:
                return tuple(items), None
            pairs: list[tuple[str, str]] = []
            for item in items:
                key, eq, value = item.partition("=")
                if not eq or not key.strip():
                    return _INVALID, f"must be key=value pairs separated by commas, got {item!r}"
                pairs.append((key.strip(), value.strip()))
            return tuple(pairs), None
        case Kind.SECTION:  # pragma: no cover - rejected by the caller
            raise AssertionError(kind)


def apply_env(env: Mapping[str, str], raw: Raw, out: Collector) -> None:
    """PGWARDEN_<SECTION>__<FIELD>=value overrides; an empty value unsets the setting."""
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in RESERVED_ENV_VARS:
            continue
        path = ".".join(part.lower() for part in var[len(ENV_PREFIX) :].split("__"))
        kind = SCHEMA.get(path)
        if kind is None:
            names = [env_var_name(p) for p in SCHEMA if SCHEMA[p] is not Kind.SECTION]
            hint = difflib.get_close_matches(var, names, n=1, cutoff=0.8)
            near = f"; did you mean {hint[0]}?" if hint else ""
            out.add(var, f"does not name a setting (PGWARDEN_<SECTION>__<FIELD>){near}")
            continue
        if kind is Kind.SECTION:
            out.add(var, f"names the section {path!r}; set its fields one by one")
            continue
        raw.origins[path] = var
        text = env[var]
        if text == "":
            raw.values.pop(path, None)
            continue
        value, rule = _parse_env_value(text, kind)
        if rule is not None:
            if kind is Kind.SECRET:  # pragma: no cover - secrets are plain strings
                rule = "is invalid"
            out.fail(path, f"{var} {rule}")
            raw.values.pop(path, None)
            continue
        raw.values[path] = value
        raw.mark_present(path)


def read_file(path: str, out: Collector) -> object:
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
        out.fail(source, f"must hold a YAML mapping at the top level, not {type_word(loaded)}")
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
