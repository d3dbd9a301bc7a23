"""Crash points: an agent process killed (SIGKILL) between any two of its effects.

An agent changes the world only through three seams: its PostgreSQL (start, stop, promote,
rewind, ...), the DCS (the lease, the records) and the fencer (arm, disarm). `Switch` sits
in front of all three for one incarnation of one member's agent and counts the calls that
change something; armed with `kill_at=k`, the k-th such call does not happen: the agent dies
right there (`Killed`, a BaseException no `except Exception` of the agent's catches), and
from then on every call of that incarnation through any seam raises `Killed` without effect
(a dead process does nothing more: no `finally` clean-up, no background task). What lives
outside the agent's process stays as it is: PostgreSQL keeps running (or dies with it, when
the test kills the whole pod), the fencer keeps its deadline, the DCS keeps the lease until
it expires. Crash points are so enumerated from the code: k = 1, 2, ... until an action runs
to its end without reaching the k-th call.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from agent.callback_settings import CallbackEvent
from agent.callbacks import CallbackRun
from agent.fence import FenceStatus

# PostgresControl calls that change the instance or its data directory.
PG_EFFECTS = frozenset(
    {
        "start",
        "open_to_clients",
        "stop",
        "promote",
        "follow",
        "restart_wal_receiver",
        "initdb",
        "create_roles",
        "clear_data_dir",
        "clone",
        "rewind",
        "set_slots",
        "drop_stale_logical_slots",
        "set_sync_standbys",
        "checkpoint",
        "apply_dynamic",
    }
)
# Dcs calls that change the store. publish_member is left out: it only republishes what the
# agent sees (a crash around it is a crash before the next counted call), and it runs every
# cycle, which would multiply the points without new states.
DCS_EFFECTS = frozenset({"acquire_leader", "renew_leader", "release_leader", "write_record"})


class Killed(BaseException):
    """The agent process was killed at this call."""


class Switch:
    """The life of one agent incarnation: counts its effects, kills it at the k-th; or, with
    `freeze`, stops it there (SIGSTOP, a paused VM) until `thaw()`: then that call and every
    other one it was making go on as if no time had passed (SIGCONT)."""

    def __init__(self, kill_at: int | None = None, *, freeze: bool = False) -> None:
        self.kill_at = kill_at
        self.freeze = freeze
        self.effects: list[str] = []  # the counted calls made, in order
        self.dead = False
        self.frozen = False
        self.killed_at: str | None = None  # the call it died (or froze) at
        self._thawed = asyncio.Event()

    def arm(self, kill_at: int) -> None:
        """Die at the `kill_at`-th effect from now."""
        self.kill_at = len(self.effects) + kill_at

    def thaw(self) -> None:
        self.frozen = False
        self._thawed.set()

    def check(self, call: str, *, effect: bool, can_wait: bool = False) -> bool:
        """Before a call; True: the caller must `wait()` first (the agent is frozen)."""
        if self.dead:
            raise Killed(call)
        if self.frozen:
            return can_wait
        if not effect:
            return False
        due = self.kill_at is not None and len(self.effects) + 1 >= self.kill_at
        if due and self.freeze and can_wait and not self._thawed.is_set():
            self.frozen = True
            self.killed_at = call
            self.effects.append(call)
            return True
        if due and not self.freeze:
            self.dead = True
            self.killed_at = call
            raise Killed(call)
        self.effects.append(call)
        return False

    async def wait(self) -> None:
        await self._thawed.wait()


class _Seam:
    """Delegates to `inner`; every call goes through the switch first."""

    _effects: frozenset[str] = frozenset()

    def __init__(self, inner: object, switch: Switch) -> None:
        self._inner = inner
        self._switch = switch

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if not callable(target):
            return target
        switch, effect = self._switch, name in self._effects
        prefix = type(self).__name__.removesuffix("Seam").lower()
        can_wait = inspect.iscoroutinefunction(target)

        async def later(*args: Any, **kwargs: Any) -> Any:
            await switch.wait()
            return await target(*args, **kwargs)

        def call(*args: Any, **kwargs: Any) -> Any:
            if switch.check(f"{prefix}.{name}", effect=effect, can_wait=can_wait):
                return later(*args, **kwargs)
            return target(*args, **kwargs)

        return call


class PostgresSeam(_Seam):
    _effects = PG_EFFECTS

    def pid(self) -> int | None:
        # The postmaster watch of a dead agent must not see its exit: read without a check
        # only while alive.
        self._switch.check("pg.pid", effect=False)
        pid: int | None = getattr(self._inner, "pid")()  # noqa: B009
        return pid


class DcsSeam(_Seam):
    _effects = DCS_EFFECTS

    @property
    def ttl_s(self) -> float:
        ttl: float = getattr(self._inner, "ttl_s")  # noqa: B009
        return ttl

    @property
    def name(self) -> str:
        name: str = getattr(self._inner, "name")  # noqa: B009
        return name


class CallbackSeam:
    """The callbacks the agent waits for (pre_promote, post_bootstrap): a crash point before
    each, and one inside it (`.midway`: the callback ran, the agent died before its result).
    The notifications it only starts (`fire`) are no crash points of their own."""

    def __init__(self, inner: Any, switch: Switch) -> None:
        self._inner = inner
        self._switch = switch

    def fire(self, event: CallbackEvent, role: str) -> None:
        self._switch.check("callback.fire", effect=False)
        self._inner.fire(event, role)

    async def run(self, event: CallbackEvent, role: str, *, timeout_s: float) -> CallbackRun | None:
        if self._switch.check(f"callback.{event.value}", effect=True, can_wait=True):
            await self._switch.wait()
        run: CallbackRun | None = await self._inner.run(event, role, timeout_s=timeout_s)
        if self._switch.check(f"callback.{event.value}.midway", effect=True, can_wait=True):
            await self._switch.wait()
        return run

    async def close(self) -> None:
        await self._inner.close()


class FenceSeam:
    """The agent's client of the fencer: the fencer itself (its deadline) outlives it."""

    def __init__(self, inner: Any, switch: Switch) -> None:
        self._inner = inner
        self._switch = switch

    async def _through(self, call: str, effect: bool, run: Callable[[], Awaitable[Any]]) -> Any:
        if self._switch.check(f"fence.{call}", effect=effect, can_wait=True):
            await self._switch.wait()
        return await run()

    async def arm(self, deadline: float) -> FenceStatus:
        status: FenceStatus = await self._through("arm", True, lambda: self._inner.arm(deadline))
        return status

    async def disarm(self) -> FenceStatus:
        status: FenceStatus = await self._through("disarm", True, self._inner.disarm)
        return status

    async def status(self) -> FenceStatus:
        status: FenceStatus = await self._through("status", False, self._inner.status)
        return status
