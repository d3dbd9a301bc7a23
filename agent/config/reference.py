"""The reference tables of docs/configuration.md, generated from the field list.

Each table follows a marker line `<!-- reference: <section> -->` in the document; `update()`
replaces the table under every marker and leaves the prose alone. A unit test fails when the
committed document differs from `update(document)`; to refresh it, run
`python -m agent.config.reference docs/configuration.md`.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from enum import StrEnum
from typing import Final

from agent.config.field import Field, Kind
from agent.config.fields import FIELDS
from agent.settings import Settings

CHAPTERS: Final = (
    "", "dcs", "dcs.etcd", "dcs.kubernetes", "postgresql", "api", "timing", "tags", "ha", "log",
    "fencer", "callbacks", "pgbackrest", "bootstrap",
)  # fmt: skip
"""The sections with a table of their own; a key is listed in the longest one holding it."""

_MARKER: Final = re.compile(r"^<!-- reference: ([a-z.]*) -->$", re.MULTILINE)
_TYPE_WORDS: Final = {
    Kind.SECTION: "mapping",
    Kind.STR: "string",
    Kind.SECRET: "string, secret",
    Kind.INT: "integer",
    Kind.FLOAT: "number",
    Kind.BOOL: "boolean",
    Kind.STR_LIST: "list",
    Kind.STR_MAP: "mapping",
    Kind.PARAM_MAP: "mapping",
}


class _NoDefault:
    """A settings attribute without a default."""


_NO_DEFAULT: Final = _NoDefault()


def type_default(dotted: str) -> object:
    """The default the settings types give the attribute at `dotted` (from `Settings`)."""
    owner: object = Settings  # a class, until a default instance is reached
    *parents, last = dotted.split(".")
    for part in parents:
        value = _default_of(owner, part)
        if dataclasses.is_dataclass(value):
            owner = value
        else:  # no default, or None: the defaults are those of the section's own class
            cls = owner if isinstance(owner, type) else type(owner)
            hint = typing.get_type_hints(cls)[part]
            owner = next(t for t in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(t))
    return _default_of(owner, last)


def _default_of(owner: object, name: str) -> object:
    if not isinstance(owner, type):
        return getattr(owner, name)
    spec = next(f for f in dataclasses.fields(owner) if f.name == name)
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return _NO_DEFAULT


def _default_text(f: Field) -> str:
    if f.default_doc is not None:
        return f.default_doc
    if f.required:
        return "required"
    value = type_default(f.attribute_path) if f.attribute_path else None
    if value is None or value is _NO_DEFAULT:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, StrEnum):
        return f"`{value.value}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if value == ():
        return "`{}`" if f.kind in (Kind.STR_MAP, Kind.PARAM_MAP) else "`[]`"
    return f"`{value}`"


def chapter_of(path: str) -> str:
    """The table a key is listed in: the longest chapter that holds it (not itself)."""
    holders = [c for c in CHAPTERS if c != path and (c == "" or path.startswith(c + "."))]
    return max(holders, key=len)


def table(chapter: str) -> str:
    """The markdown table of `chapter`: its keys, and its sub-sections that have a doc."""
    lines = ["| field | type | default | variable | rules |", "|---|---|---|---|---|"]
    start = len(chapter) + 1 if chapter else 0
    for f in FIELDS:
        if chapter_of(f.path) != chapter or (f.kind is Kind.SECTION and not f.doc):
            continue
        variable = "—" if f.kind is Kind.SECTION else f"`{f.env_var}`"
        rules = " ".join(text for text in (f.rule, f.doc) if text)
        cells = (f"`{f.path[start:]}`", _TYPE_WORDS[f.kind], _default_text(f), variable, rules)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def update(document: str) -> str:
    """`document` with the table under every reference marker generated anew."""
    out: list[str] = []
    position = 0
    for marker in _MARKER.finditer(document):
        end = marker.end() + 1
        out.append(document[position:end])
        rest = document[end:]
        old_table = re.match(r"(?:\|[^\n]*\n)*", rest)
        position = end + (old_table.end() if old_table else 0)
        out.append(table(marker.group(1)))
    out.append(document[position:])
    return "".join(out)


def main(argv: list[str]) -> int:
    for path in argv:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(update(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
