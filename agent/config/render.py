"""The effective settings as YAML (`pgwarden run --check-config`), walked from the field list."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import yaml

from agent.config.field import Kind
from agent.config.fields import FIELDS
from agent.settings import Settings
from agent.value_rules import Secret

MASK: Final = "********"


def attribute(settings: object, dotted: str) -> object:
    """The attribute at `dotted` (None past a None on the way: an unset optional section)."""
    value = settings
    for part in dotted.split("."):
        if value is None:
            return None
        value = getattr(value, part)
    return value


def _shown(value: object, kind: Kind) -> object:
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, tuple):
        if kind in (Kind.STR_MAP, Kind.PARAM_MAP):
            return dict(value)
        return [item.value if isinstance(item, StrEnum) else item for item in value]
    return value


def render_effective(settings: Settings) -> str:
    """The effective settings as YAML, in the configuration file's layout, with every secret
    shown as "********" (secrets read from files appear as `password`, not `*_file`), and
    `api.connect_url` as the URL in effect (unset means derived from host and port)."""
    document: dict[str, object] = {}
    for f in FIELDS:
        source = f.attribute_path
        if f.kind is Kind.SECTION or source is None:
            continue
        *sections, key = f.path.split(".")
        if sections and attribute(settings, ".".join(sections)) is None:
            continue  # an optional section that is not configured (dcs.etcd with kubernetes)
        node = document
        for part in sections:
            child = node.setdefault(part, {})
            assert isinstance(child, dict)
            node = child
        node[key] = _shown(attribute(settings, source), f.kind)
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
