"""Rules on single values, shared by the settings types (agent/settings.py): names, hosts,
ports, paths, URLs and Kubernetes labels. Each yields `ConfigProblem`s naming the field it was
given and the rule broken; none does I/O. Also `Secret`, the masked string of settings,
`Credentials` (a user and its password) and `check`, which a settings type's `__post_init__`
calls to refuse a broken rule."""

from __future__ import annotations

import os.path
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit


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


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class InvalidSettings(ValueError):
    """A settings value broke its rules; `problems` names each field and rule."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


def check(problems: Iterable[ConfigProblem]) -> None:
    """Raise InvalidSettings naming every problem, if there is any (a settings type's
    `__post_init__`: it refuses to be built with a broken rule)."""
    found = list(problems)
    if found:
        raise InvalidSettings(found)


_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN: Final = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
_LABEL_NAME: Final = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
GUC_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
WAL_LEVELS: Final = ("replica", "logical")
HBA_TYPES: Final = frozenset(
    {"local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc", "include",
     "include_if_exists", "include_dir"}
)  # fmt: skip


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "*", "")


def url_rule(url: str, *, require_port: bool) -> str | None:
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


def label_key_rule(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not DNS_SUBDOMAIN.fullmatch(prefix)):
        return f"label key {key!r}: the prefix must be a DNS subdomain (at most 253 characters)"
    if len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        return (
            f"label key {key!r}: the name must be 1-63 characters of A-Z, a-z, 0-9, '-', '_', "
            "'.', starting and ending with a letter or digit"
        )
    return None


def label_value_rule(value: str) -> str | None:
    if value == "" or (len(value) <= 63 and _LABEL_NAME.fullmatch(value)):
        return None
    return (
        f"label value {value[:80]!r}: must be at most 63 characters of A-Z, a-z, 0-9, '-', '_', "
        "'.', starting and ending with a letter or digit"
    )


def non_empty(name: str, value: str) -> Iterator[ConfigProblem]:
    if value == "":
        yield ConfigProblem(name, "must not be empty")


def absolute(name: str, value: str | None) -> Iterator[ConfigProblem]:
    if value and not os.path.isabs(value):
        yield ConfigProblem(name, "must be an absolute path")


def port_number(name: str, value: int) -> Iterator[ConfigProblem]:
    if not 1 <= value <= 65535:
        yield ConfigProblem(name, f"must be a port number in 1..65535, got {value}")


def dns_label(name: str, value: str) -> Iterator[ConfigProblem]:
    if value and (len(value) > 63 or not _DNS_LABEL.fullmatch(value)):
        yield ConfigProblem(
            name,
            "must be a DNS label: at most 63 characters of a-z, 0-9 and '-', starting and "
            f"ending with a letter or digit, got {value[:80]!r}",
        )


def host(name: str, value: str) -> Iterator[ConfigProblem]:
    yield from non_empty(name, value)
    if any(c.isspace() for c in value):
        yield ConfigProblem(name, "must not contain whitespace")


def one_of(name: str, value: str, choices: type[StrEnum]) -> Iterator[ConfigProblem]:
    if value not in {c.value for c in choices}:
        allowed = ", ".join(c.value for c in choices)
        yield ConfigProblem(name, f"must be one of {allowed}, got {str(value)[:80]!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    username: str
    password: Secret | None = None

    def __post_init__(self) -> None:
        check(self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        yield from non_empty("username", self.username)
