"""Permanent slots on the primary (agent/slot_config.py) and the primary's
`synchronized_standby_slots` list (agent/postgres/failover_slots.py says when they apply)."""

from __future__ import annotations

from collections.abc import Collection

import asyncpg

from agent.config import PostgresSettings
from agent.postgres.failover_slots import failover_slots_on
from agent.postgres.osfiles import PostgresError
from agent.postgres.process import Postmaster
from agent.postgres.sqlconn import connect_local
from agent.slot_config import PermanentSlot, SlotType

_SQL_TIMEOUT_S = 5.0


async def ensure_permanent_slots(
    postmaster: Postmaster, settings: PostgresSettings, slots: Collection[PermanentSlot]
) -> None:
    """On a primary: create each declared slot that does not exist (physical ones reserving
    WAL at once; logical ones in their database, with `failover` on 17+ when failover slots
    are on). Existing slots are left as they are. Raises PostgresError."""
    rows = await postmaster.fetch("SELECT slot_name FROM pg_replication_slots", timeout_s=5.0)
    existing = {row[0] for row in rows}
    failover = failover_slots_on(settings, postmaster.dynamic.parameters)
    for slot in slots:
        if slot.name in existing:
            continue
        if slot.type == SlotType.PHYSICAL:
            await postmaster.execute(
                "SELECT pg_create_physical_replication_slot($1, true)",
                slot.name,
                timeout_s=_SQL_TIMEOUT_S,
            )
            continue
        await _create_logical(settings, slot, failover=failover)


async def _create_logical(
    settings: PostgresSettings, slot: PermanentSlot, *, failover: bool
) -> None:
    assert slot.database is not None and slot.plugin is not None
    sql = (
        "SELECT pg_create_logical_replication_slot($1, $2, false, false, true)"
        if failover
        else "SELECT pg_create_logical_replication_slot($1, $2)"
    )
    try:
        conn = await connect_local(settings, timeout_s=_SQL_TIMEOUT_S, purpose="slots")
    except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
        raise PostgresError(f"logical slot {slot.name}: cannot connect: {exc!r}") from exc
    try:
        if slot.database != "postgres":
            await conn.close()
            conn = await connect_local(
                settings, timeout_s=_SQL_TIMEOUT_S, purpose="slots", database=slot.database
            )
        await conn.execute(sql, slot.name, slot.plugin, timeout=_SQL_TIMEOUT_S)
    except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
        raise PostgresError(f"logical slot {slot.name}: {exc!r}") from exc
    finally:
        await conn.close()


async def set_synchronized_standby_slots(postmaster: Postmaster, names: Collection[str]) -> None:
    """ALTER SYSTEM synchronized_standby_slots (empty: reset) and reload. 17+ only."""
    if names:
        value = ",".join(sorted(names)).replace("'", "''")
        sql = f"ALTER SYSTEM SET synchronized_standby_slots = '{value}'"
    else:
        sql = "ALTER SYSTEM RESET synchronized_standby_slots"
    await postmaster.execute(sql, timeout_s=_SQL_TIMEOUT_S)
    await postmaster.execute("SELECT pg_reload_conf()", timeout_s=_SQL_TIMEOUT_S)


async def drop_stale_logical_slots(postmaster: Postmaster, names: Collection[str]) -> None:
    """On a standby: drop the inactive logical slots among `names` that were not synchronized
    from the primary (`synced` exists on 17+; before, every slot is the standby's own).
    Drops nothing on a primary, whatever the caller believed: there such a slot is the one
    the consumers use."""
    await postmaster.execute(
        "SELECT pg_drop_replication_slot(s.slot_name) FROM pg_replication_slots AS s"
        " WHERE pg_is_in_recovery()"
        " AND s.slot_name = ANY($1::text[]) AND s.slot_type = 'logical' AND NOT s.active"
        " AND NOT coalesce((to_jsonb(s) ->> 'synced')::boolean, false)",
        sorted(names),
        timeout_s=_SQL_TIMEOUT_S,
    )
