"""The leader's restart in place (`RestartPrimary`): POST /restart on the leader, its turn in a
rolling restart in place (or when its hand-over failed, or a hot-standby minimum goes down).

It runs as a long action, so the HA loop keeps renewing the lease meanwhile (`when_busy`): a
shutdown checkpoint or a crash recovery longer than the lease's remaining time no longer
turns a planned restart into a failover (review finding R1). The fencer stays armed
throughout and every renewal moves its deadline, so the deadline still holds when renewals
fail: the start happens only while the lease is still ours, and a server that came up after
the fencing deadline is stopped again at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import structlog

from agent.handover import ActionFailed
from agent.postgres.control import PostgresControl
from agent.postgres.process import PostgresError, StopMode
from agent.settings import Timing

log = structlog.get_logger("pgwarden.loop")


async def restart_in_place(
    pg: PostgresControl, timing: Timing, *, lease_holds: Callable[[], bool]
) -> None:
    """CHECKPOINT (while writable: the shutdown checkpoint is then short), stop fast, start as
    the primary. Each step is bounded by its timeout (shutdown_timeout_s for the checkpoint
    and the stop, which then escalates to SIGQUIT and SIGKILL; primary_start_timeout_s for
    the start). `lease_holds()`: our lease is still valid now (fencing deadline not passed).
    Raises ActionFailed when the lease did not hold (PostgreSQL is left stopped)."""
    with contextlib.suppress(PostgresError, TimeoutError):
        # Only a speed-up: a checkpoint that fails leaves the work to the shutdown checkpoint.
        await pg.checkpoint(timeout_s=timing.shutdown_timeout_s)
    await pg.stop(StopMode.FAST, timeout_s=timing.shutdown_timeout_s)
    if not lease_holds():
        raise ActionFailed("the lease was not renewed during the restart: not starting")
    await pg.start(standby=None, timeout_s=timing.primary_start_timeout_s)
    if not lease_holds():
        # The deadline passed while it started (crash recovery, renewals failing): it must
        # not take writes; the fencer may have fired before this postmaster existed.
        log.error("restart_past_fence_deadline")
        await pg.stop(StopMode.IMMEDIATE, timeout_s=timing.fence_margin_s / 2)
        raise ActionFailed("the fencing deadline passed while PostgreSQL started: stopped")
