"""Label and field selectors (the `labelSelector` / `fieldSelector` query parameters).

Label selectors follow k8s.io/apimachinery `labels.Parse`: comma-separated requirements that
must all hold, each one of `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a)`, `k`, `!k`,
`k>n`, `k<n`. `k!=v` and `notin` also match objects without the label, as in Kubernetes.
Field selectors support `=`, `==` and `!=` on `metadata.name`, `metadata.namespace` and a few
per-kind fields; other fields are rejected (400), as the real server does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tests.k8s_apiserver.errors import bad_request

_KEY_RE = re.compile(
    r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_TOKEN_RE = re.compile(r"\s*(==|!=|=|\(|\)|,|!|>|<|[^\s=!(),<>]+)")


class Op(StrEnum):
    """Operators of a label requirement."""

    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"
    GREATER_THAN = ">"
    LESS_THAN = "<"


@dataclass(frozen=True, slots=True, kw_only=True)
class Requirement:
    """One requirement of a label selector."""

    key: str
    op: Op
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether `labels` satisfies this requirement."""
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case Op.EQUALS | Op.IN:
                return present and value in self.values
            case Op.NOT_EQUALS | Op.NOT_IN:
                return not present or value not in self.values
            case Op.EXISTS:
                return present
            case Op.DOES_NOT_EXIST:
                return not present
            case Op.GREATER_THAN | Op.LESS_THAN:
                if value is None:
                    return False
                try:
                    have = int(value)
                except ValueError:
                    return False
                want = int(self.values[0])
                return have > want if self.op is Op.GREATER_THAN else have < want


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelSelector:
    """A parsed label selector; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether every requirement holds for `labels`."""
        return all(r.matches(labels) for r in self.requirements)


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            raise bad_request(f"unable to parse requirement: invalid label selector {text!r}")
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


def _check_key(key: str, text: str) -> str:
    if not _KEY_RE.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
        raise bad_request(f"unable to parse requirement: invalid label key {key!r} in {text!r}")
    return key


def _check_value(value: str, text: str) -> str:
    if not _VALUE_RE.match(value) or len(value) > 63:
        raise bad_request(f"unable to parse requirement: invalid label value {value!r} in {text!r}")
    return value


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse a `labelSelector`; raises ApiError 400 on a syntax error."""
    if text is None or text.strip() == "":
        return LabelSelector()
    tokens = _tokens(text)
    requirements: list[Requirement] = []
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(tokens):
            raise bad_request(f"unable to parse requirement: unexpected end of {text!r}")
        token = tokens[i]
        i += 1
        return token

    def peek() -> str | None:
        return tokens[i] if i < len(tokens) else None

    while i < len(tokens):
        token = take()
        if token == "!":
            key = _check_key(take(), text)
            requirements.append(Requirement(key=key, op=Op.DOES_NOT_EXIST))
        else:
            key = _check_key(token, text)
            nxt = peek()
            if nxt is None or nxt == ",":
                requirements.append(Requirement(key=key, op=Op.EXISTS))
            elif nxt in ("=", "==", "!="):
                take()
                value = peek()
                if value is None or value == ",":
                    value = ""
                else:
                    take()
                op = Op.NOT_EQUALS if nxt == "!=" else Op.EQUALS
                requirements.append(
                    Requirement(key=key, op=op, values=(_check_value(value, text),))
                )
            elif nxt in (">", "<"):
                take()
                value = take()
                if not value.lstrip("-").isdigit():
                    raise bad_request(
                        f"unable to parse requirement: for 'Gt', 'Lt' operators, the value must"
                        f" be an integer: {text!r}"
                    )
                op = Op.GREATER_THAN if nxt == ">" else Op.LESS_THAN
                requirements.append(Requirement(key=key, op=op, values=(value,)))
            elif nxt in ("in", "notin"):
                take()
                if take() != "(":
                    raise bad_request(f"unable to parse requirement: expected '(' in {text!r}")
                values: list[str] = []
                while True:
                    item = take()
                    if item == ")":
                        break
                    if item == ",":
                        continue
                    values.append(_check_value(item, text))
                op = Op.IN if nxt == "in" else Op.NOT_IN
                requirements.append(Requirement(key=key, op=op, values=tuple(values)))
            else:
                raise bad_request(f"unable to parse requirement: unexpected {nxt!r} in {text!r}")
        nxt = peek()
        if nxt is not None:
            if nxt != ",":
                raise bad_request(f"unable to parse requirement: expected ',' in {text!r}")
            take()
    return LabelSelector(requirements=tuple(requirements))


# Field paths each kind supports in field selectors, besides metadata.name/namespace.
_EXTRA_FIELDS: dict[str, tuple[str, ...]] = {
    "Pod": (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
    "Namespace": ("status.phase",),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldRequirement:
    """`path = value` (or `!=`) on a dotted field path."""

    path: str
    value: str
    negated: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldSelector:
    """A parsed field selector; the empty selector matches everything."""

    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether every requirement holds for the object."""
        return all(_field_matches(r, obj) for r in self.requirements)

    def only_name(self) -> str | None:
        """The name when the selector is exactly `metadata.name=X` (single-object watch)."""
        if len(self.requirements) == 1:
            req = self.requirements[0]
            if req.path == "metadata.name" and not req.negated:
                return req.value
        return None


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return ""
        node = node.get(part)
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def _field_matches(req: FieldRequirement, obj: Mapping[str, Any]) -> bool:
    equal = _field_value(obj, req.path) == req.value
    return not equal if req.negated else equal


def parse_field_selector(text: str | None, kind: str) -> FieldSelector:
    """Parse a `fieldSelector` for objects of `kind`; 400 for unsupported fields."""
    if text is None or text.strip() == "":
        return FieldSelector()
    allowed = ("metadata.name", "metadata.namespace", *_EXTRA_FIELDS.get(kind, ()))
    requirements: list[FieldRequirement] = []
    for raw_part in text.split(","):
        part = raw_part.strip()
        match = re.match(r"^([^=!]+?)\s*(==|!=|=)\s*(.*)$", part)
        if match is None:
            raise bad_request(f"invalid selector: {text!r}; can't understand {part!r}")
        path, op, value = match.group(1).strip(), match.group(2), match.group(3).strip()
        if path not in allowed:
            raise bad_request(f'field label not supported: "{path}"')
        requirements.append(FieldRequirement(path=path, value=value, negated=op == "!="))
    return FieldSelector(requirements=tuple(requirements))
