"""Permanent replication slots: declared in the DCS `config` record, kept by the leader.

    slots:
      cdc:    {type: logical, database: app, plugin: pgoutput}
      backup: {type: physical}

The leader creates every declared slot on its primary and never drops one (a slot the
operator removes from the record is left for the operator to drop). On PostgreSQL 17+ a
logical slot is created with `failover = true` and the standbys synchronize it
(`sync_replication_slots`), so a consumer continues on the new primary after a failover or
switchover from what it confirmed (docs/slots.md). On 15 and 16 a standby cannot keep a
logical slot's position: the new primary creates the slot afresh at its own position.

Pure: parsing and rendering only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

_NAME_RE = re.compile(r"^[a-z0-9_]{1,63}$")
_IDENT_RE = re.compile(r"^[A-Za-z0-9_]{1,63}$")


class SlotType(StrEnum):
    PHYSICAL = "physical"
    LOGICAL = "logical"


@dataclass(frozen=True, slots=True, kw_only=True)
class PermanentSlot:
    """One declared slot. `database` and `plugin` are set for logical slots only."""

    name: str
    type: SlotType
    database: str | None = None
    plugin: str | None = None


def parse_slots(value: object) -> tuple[PermanentSlot, ...]:
    """The `slots` object of the config record (or a PATCH /config body), sorted by name.
    Raises ValueError naming the slot and the rule it breaks."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ValueError("slots: expected an object of slot name: {type, database, plugin}")
    out = []
    for name, spec in value.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"slots.{name}: a slot name is 1-63 characters of [a-z0-9_]")
        if not isinstance(spec, Mapping):
            raise ValueError(f"slots.{name}: expected an object with type")
        unknown = set(spec) - {"type", "database", "plugin"}
        if unknown:
            raise ValueError(f"slots.{name}: unknown keys {sorted(unknown)}")
        try:
            kind = SlotType(spec.get("type", ""))
        except ValueError:
            raise ValueError(f"slots.{name}.type: must be physical or logical") from None
        if kind == SlotType.PHYSICAL:
            if "database" in spec or "plugin" in spec:
                raise ValueError(f"slots.{name}: a physical slot has no database or plugin")
            out.append(PermanentSlot(name=name, type=kind))
            continue
        database, plugin = spec.get("database"), spec.get("plugin")
        for key, item in (("database", database), ("plugin", plugin)):
            if not isinstance(item, str) or not _IDENT_RE.match(item):
                raise ValueError(f"slots.{name}.{key}: required for a logical slot, [A-Za-z0-9_]")
        assert isinstance(database, str) and isinstance(plugin, str)
        out.append(PermanentSlot(name=name, type=kind, database=database, plugin=plugin))
    return tuple(sorted(out, key=lambda slot: slot.name))


def slots_to_json(slots: tuple[PermanentSlot, ...]) -> dict[str, dict[str, str]]:
    """The inverse of `parse_slots`."""
    out: dict[str, dict[str, str]] = {}
    for slot in slots:
        spec = {"type": slot.type.value}
        if slot.database is not None:
            spec["database"] = slot.database
        if slot.plugin is not None:
            spec["plugin"] = slot.plugin
        out[slot.name] = spec
    return out


def has_logical(slots: tuple[PermanentSlot, ...]) -> bool:
    return any(slot.type == SlotType.LOGICAL for slot in slots)


def logical_names(slots: tuple[PermanentSlot, ...]) -> tuple[str, ...]:
    return tuple(slot.name for slot in slots if slot.type == SlotType.LOGICAL)


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotState:
    """One row of pg_replication_slots, as the probe reads it. `retained_bytes`: WAL the slot
    holds back on a primary (current WAL position - restart_lsn); None on a standby."""

    name: str
    type: str
    active: bool
    wal_status: str | None = None  # reserved, extended, unreserved, lost (PostgreSQL 13+)
    retained_bytes: int | None = None
    # Synchronized from the primary by the slot sync worker (17+; always False before).
    synced: bool = False

    @property
    def far_behind(self) -> bool:
        """Past max_wal_size (`unreserved`: its WAL may be removed at the next checkpoint,
        bounded by max_slot_wal_keep_size) or already invalidated (`lost`)."""
        return self.wal_status in ("unreserved", "lost")


def parse_slot_states(text: str | None) -> tuple[SlotState, ...]:
    """The probe's JSON array of slots; ValueError on anything else."""
    if not text:
        return ()
    rows = json.loads(text)
    if not isinstance(rows, list):
        raise ValueError("slots: not a list")
    out = []
    for row in rows:
        retained = row.get("retained_bytes")
        out.append(
            SlotState(
                name=str(row["name"]),
                type=str(row["type"]),
                active=bool(row["active"]),
                wal_status=row.get("wal_status"),
                retained_bytes=None if retained is None else int(retained),
                synced=bool(row.get("synced")),
            )
        )
    return tuple(out)


def stale_copies(
    declared: tuple[PermanentSlot, ...], local: tuple[SlotState, ...]
) -> tuple[str, ...]:
    """The logical slots of a standby that carry the name of a declared logical slot but were
    not synchronized from the primary and no one uses: a former primary's own copies, frozen
    where it stopped leading. The consumer's slot is the leader's; on 17+ such a copy also
    stops the slot sync worker from making the synchronized one ("exiting from slot
    synchronization because same name slot ... already exists on the standby"), so it must
    go for the standby to be ready for the next failover (agent/decide/member.py says when)."""
    wanted = set(logical_names(declared))
    return tuple(
        sorted(
            slot.name
            for slot in local
            if slot.name in wanted
            and slot.type == "logical"
            and not slot.synced
            and not slot.active
        )
    )


def effective_wal_level(
    own: Iterable[tuple[str, str]], dynamic: Iterable[tuple[str, str]] = ()
) -> str:
    """`wal_level` as the server runs it: the member's own parameters win over the DCS's,
    which win over the agent's default `replica`."""
    return dict([("wal_level", "replica"), *dynamic, *own])["wal_level"]


FAILOVER_SLOTS_MAJOR = 17
"""The first PostgreSQL major with failover slots (`failover`, `sync_replication_slots`,
`synchronized_standby_slots`)."""
