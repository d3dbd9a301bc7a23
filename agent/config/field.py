"""What one configuration key is (`Field`), and the constructors of the common shapes of keys
(a section, a secret with its `_file` twin, credentials, a timing value) that the one list
of keys (fields.py) is written with.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

ENV_PREFIX: Final = "PGWARDEN_"


class Kind(StrEnum):
    """The value type a key takes in the file, in the words the docs and errors use."""

    SECTION = "mapping"
    STR = "string"
    SECRET = "string (secret)"
    INT = "integer"
    FLOAT = "number"
    BOOL = "boolean"
    STR_LIST = "list of strings"
    STR_MAP = "mapping of string to string"
    PARAM_MAP = "mapping of name to string, number or boolean"


def env_var_name(path: str) -> str:
    """The environment variable that overrides the setting at dotted `path`."""
    return ENV_PREFIX + path.upper().replace(".", "__")


@dataclass(frozen=True, slots=True, kw_only=True)
class Field:
    """One configuration key.

    `source` is the attribute path in `Settings` the key fills ("" for the same as `path`,
    None for an input-only key such as a `*_file` one, which is neither rendered nor has a
    default of its own). `rule` states the checks in words, `doc` what the key is for; the
    reference's "rules" column is both. `default_doc` replaces the type's default there when
    the default is computed (from another setting or a downward-API variable)."""

    path: str
    kind: Kind
    rule: str = ""
    doc: str = ""
    default_doc: str | None = None
    source: str | None = ""
    required: bool = False
    choices: type[StrEnum] | None = None  # the key takes one of these values

    @property
    def env_var(self) -> str:
        return env_var_name(self.path)

    @property
    def attribute_path(self) -> str | None:
        return self.path if self.source == "" else self.source


def section_field(path: str, doc: str = "", default_doc: str | None = None) -> Field:
    return Field(path=path, kind=Kind.SECTION, doc=doc, default_doc=default_doc)


def secret_pair(
    section: str, name: str, rule: str, doc: str = "", source: str = ""
) -> tuple[Field, Field]:
    """`<name>` inline (masked) and `<name>_file` (a path read once at start)."""
    return (
        Field(path=f"{section}.{name}", kind=Kind.SECRET, rule=rule, doc=doc, source=source),
        Field(
            path=f"{section}.{name}_file",
            kind=Kind.STR,
            rule=f"Absolute path of a readable file; not together with `{name}`.",
            doc=f"The {name} is read from it at start (see Secrets).",
            source=None,
        ),
    )


def credentials(section: str, doc: str) -> tuple[Field, ...]:
    return (
        section_field(section),
        Field(path=f"{section}.username", kind=Kind.STR, rule="Non-empty.", doc=doc),
        *secret_pair(section, "password", "One of `password` and `password_file` at most."),
    )


def timing(name: str, default_rule: str, doc: str) -> Field:
    return Field(path=f"timing.{name}", kind=Kind.FLOAT, rule=default_rule, doc=doc)
