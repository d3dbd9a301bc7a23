"""A slot that falls far behind is reported, not hidden: the probe reads pg_replication_slots
(wal_status, WAL held back); /health and the metrics carry it (tests/unit/test_slot_states.py)."""

from __future__ import annotations

import pytest

from agent.postgres.probe import Prober
from tests.support.postgres import PgNode

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

SMALL = {"max_slot_wal_keep_size": "1MB", "wal_keep_size": "0", "max_wal_size": "32MB"}


async def _probe_slots(node: PgNode) -> dict[str, tuple[str | None, int | None, bool]]:
    prober = Prober(node.settings, run_dir=node.run_dir, member_name=node.name)
    try:
        pid = node.postmaster.pid()
        state = await prober.probe(running=True, postmaster_pid=pid, timeout_s=5.0)
    finally:
        await prober.close()
    return {s.name: (s.wal_status, s.retained_bytes, s.far_behind) for s in state.slots}


async def test_a_slot_past_max_slot_wal_keep_size_is_reported_far_behind(node: PgNode) -> None:
    pm = node.postmaster
    await pm.execute("SELECT pg_create_physical_replication_slot('lagging', true)", timeout_s=5)
    try:
        slots = await _probe_slots(node)
        assert slots["lagging"][0] == "reserved" and not slots["lagging"][2]
        # Nothing else keeps the WAL (the agent's wal_keep_size, a large max_wal_size).
        for name, value in SMALL.items():
            await pm.execute(f"ALTER SYSTEM SET {name} = '{value}'", timeout_s=5)
        await pm.execute("SELECT pg_reload_conf()", timeout_s=5)
        for _ in range(4):  # WAL past the limit: the next checkpoint invalidates the slot
            await pm.execute("CREATE TABLE IF NOT EXISTS pad (v text)", timeout_s=5)
            await pm.execute(
                "INSERT INTO pad SELECT repeat('x', 1000) FROM generate_series(1, 2000)",
                timeout_s=10,
            )
            await pm.execute("SELECT pg_switch_wal()", timeout_s=5)
        await pm.execute("CHECKPOINT", timeout_s=30)
        status, retained, far = (await _probe_slots(node))["lagging"]
        assert far, f"wal_status {status}, retained {retained}"
        assert status in ("unreserved", "lost")
    finally:
        await pm.execute("SELECT pg_drop_replication_slot('lagging')", timeout_s=5)
        for name in SMALL:
            await pm.execute(f"ALTER SYSTEM RESET {name}", timeout_s=5)
        await pm.execute("SELECT pg_reload_conf()", timeout_s=5)
