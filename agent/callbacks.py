"""Running the `callbacks` commands (agent/callback_settings.py) as separate processes.

`fire()` starts an `on_*` callback and returns at once: a supervising task (named
`callback-<event>`) waits for it, kills its process group at `callbacks.timeout_s`, and logs
and counts how it ended. A new call for the same event kills an older one still running
(its result is `superseded`): the newest call describes the current state. The HA loop and
the fencing deadline never wait for these.

`run()` awaits one callback (`pre_promote`, `post_bootstrap`) under its own timeout and
returns how it ended; the caller decides what a failure means. Nothing here raises for a
callback that fails, hangs or cannot be started: that is a result (`error` for the last).

Each run is logged as one `callback_done` event (event, role, result, exit code, duration,
the tail of its output when it failed) and counted in `pgwarden_callbacks_total` and
`pgwarden_callback_duration_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

import structlog

from agent.actions import (
    Action,
    Bootstrap,
    Clone,
    Demote,
    HandOver,
    Promote,
    Reconfigure,
    RestartPrimary,
    Rewind,
    StartPostgres,
    StopPostgres,
)
from agent.callback_settings import CallbackEvent
from agent.clock import Clock
from agent.metrics import Metrics
from agent.postgres.control import PostgresControl
from agent.postgres.osfiles import PostgresError, run_as
from agent.postgres.process import StopMode
from agent.postgres.tools import tool_env
from agent.settings import Settings

log = structlog.get_logger("pgwarden.callbacks")

_KILL_WAIT_S: Final = 2.0  # after SIGKILL to its group, how long to wait for the exit
_OUTPUT_TAIL: Final = 500  # characters of a failed callback's output kept in the log

# The role argument (the second after the command's own words).
ROLE_PRIMARY: Final = "primary"
ROLE_REPLICA: Final = "replica"
ROLE_DEMOTED: Final = "demoted"  # a former primary just stopped (demotion, hand-over)


class CallbackResult(StrEnum):
    OK = "ok"  # exit 0
    FAILED = "failed"  # non-zero exit (or killed by a signal it did not get from us)
    TIMEOUT = "timeout"  # killed at its timeout
    SUPERSEDED = "superseded"  # killed: a newer call for the same event started
    ERROR = "error"  # could not be started (no such program, no such OS user, ...)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallbackRun:
    """How one callback run ended."""

    event: CallbackEvent
    result: CallbackResult
    exit_code: int | None
    duration_s: float
    output: str = ""  # the tail of stdout+stderr, when it did not succeed

    @property
    def ok(self) -> bool:
        return self.result is CallbackResult.OK


class CallbackRunner(Protocol):
    """What the executor asks of callbacks (the unit tests record the calls instead)."""

    def fire(self, event: CallbackEvent, role: str) -> None:
        """Start the `event` callback (if configured) without waiting for it."""

    async def run(self, event: CallbackEvent, role: str, *, timeout_s: float) -> CallbackRun | None:
        """Run the `event` callback and wait for it, at most `timeout_s`; None: none is set."""

    async def close(self) -> None:
        """Give running callbacks a moment to finish (shutdown), then kill them."""


class NoCallbacks:
    """No callbacks configured (and the default of tests that do not care)."""

    def fire(self, event: CallbackEvent, role: str) -> None:
        pass

    async def run(self, event: CallbackEvent, role: str, *, timeout_s: float) -> CallbackRun | None:
        return None

    async def close(self) -> None:
        pass


class Callbacks:
    """`CallbackRunner` over real processes, as PostgreSQL's OS user."""

    def __init__(self, settings: Settings, *, clock: Clock, metrics: Metrics) -> None:
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._running: dict[CallbackEvent, asyncio.Task[CallbackRun | None]] = {}

    def fire(self, event: CallbackEvent, role: str) -> None:
        if self._settings.callbacks.command(event) is None:
            return
        older = self._running.pop(event, None)
        if older is not None and not older.done():
            older.cancel()  # its supervisor kills the process group and logs `superseded`
        task = asyncio.create_task(
            self.run(event, role, timeout_s=self._settings.callbacks.timeout_s),
            name=f"callback-{event.value}",
        )
        self._running[event] = task
        task.add_done_callback(lambda t: self._forget(event, t))

    def _forget(self, event: CallbackEvent, task: asyncio.Task[CallbackRun | None]) -> None:
        if self._running.get(event) is task:
            del self._running[event]
        if not task.cancelled():
            task.exception()  # retrieved (run() reports every ending itself)

    async def run(self, event: CallbackEvent, role: str, *, timeout_s: float) -> CallbackRun | None:
        argv = self._settings.callbacks.argv(event, role, self._settings.cluster)
        if argv is None:
            return None
        started = self._clock.monotonic()
        try:
            outcome = await self._supervise(event, argv, timeout_s, started)
        except asyncio.CancelledError:
            self._report(
                CallbackRun(
                    event=event,
                    result=CallbackResult.SUPERSEDED,
                    exit_code=None,
                    duration_s=self._clock.monotonic() - started,
                ),
                role,
            )
            raise
        except Exception as exc:  # a supervisor bug must not become an unretrieved task error
            outcome = CallbackRun(
                event=event,
                result=CallbackResult.ERROR,
                exit_code=None,
                duration_s=self._clock.monotonic() - started,
                output=repr(exc),
            )
        self._report(outcome, role)
        return outcome

    async def _supervise(
        self, event: CallbackEvent, argv: tuple[str, ...], timeout_s: float, started: float
    ) -> CallbackRun:
        def ended(result: CallbackResult, code: int | None, output: str = "") -> CallbackRun:
            return CallbackRun(
                event=event,
                result=result,
                exit_code=code,
                duration_s=self._clock.monotonic() - started,
                output=output[-_OUTPUT_TAIL:],
            )

        # Shielded: a cancel (a newer call) that lands while the process is being started
        # (it may already run) must still find it to kill it.
        spawning = asyncio.ensure_future(self._spawn(argv))
        try:
            proc = await asyncio.shield(spawning)
        except (OSError, PostgresError) as exc:
            return ended(CallbackResult.ERROR, None, str(exc))
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await _kill_group(await spawning)
            raise
        try:
            async with asyncio.timeout(timeout_s):
                out, _ = await proc.communicate()
        except BaseException as exc:
            await _kill_group(proc)
            if isinstance(exc, TimeoutError):
                return ended(CallbackResult.TIMEOUT, proc.returncode)
            raise
        code = proc.returncode
        text = out.decode(errors="replace").strip()
        if code == 0:
            return ended(CallbackResult.OK, code)
        return ended(CallbackResult.FAILED, code, text)

    async def _spawn(self, argv: tuple[str, ...]) -> asyncio.subprocess.Process:
        pg = self._settings.postgresql
        who = run_as(pg)
        env = tool_env(who, _client_env(self._settings))
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill reaches its children
            cwd="/",
            env=env,
            user=who.user,
            group=who.group,
            extra_groups=who.extra_groups,
        )

    def _report(self, run: CallbackRun, role: str) -> None:
        fields: dict[str, object] = {
            "callback": run.event.value,
            "role": role,
            "result": run.result.value,
            "exit_code": run.exit_code,
            "duration_s": round(run.duration_s, 3),
        }
        if run.output:
            fields["output"] = run.output
        if run.ok:
            log.info("callback_done", **fields)
        else:
            log.warning("callback_done", **fields)
        self._metrics.observe_callback(run.event.value, run.result.value, run.duration_s)

    async def close(self) -> None:
        """Wait for running callbacks up to min(timeout_s, loop_wait_s), then kill them."""
        running = [t for t in self._running.values() if not t.done()]
        if not running:
            return
        grace_s = min(self._settings.callbacks.timeout_s, self._settings.timing.loop_wait_s)
        _, late = await asyncio.wait(running, timeout=grace_s)
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _client_env(settings: Settings) -> Mapping[str, str]:
    """libpq variables that point `psql` in a callback at the local server."""
    pg = settings.postgresql
    socket_dir = pg.socket_dir or os.path.dirname(pg.data_dir.rstrip("/"))
    return {
        "PGHOST": socket_dir,
        "PGPORT": str(pg.port),
        "PGUSER": pg.superuser.username,
        "PGDATABASE": "postgres",
    }


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the callback's process group and reap it (bounded)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_KILL_WAIT_S):
            await proc.wait()


# --------------------------------------------------------------------------- the events


def notification(
    action: Action,
    *,
    running: bool,
    was_primary: bool,
    restart_requested: bool,
    restarting: bool,
) -> tuple[CallbackEvent, str] | None:
    """The `on_*` callback (event, role) that follows a successful `action`, if any. Pure.

    `running`, `was_primary`: the instance ran, as a primary, when the action was planned;
    `restart_requested`: the decision restarts this member (an operator's request, or its
    turn in a rolling restart): its stop is the first half of a restart, not an `on_stop`;
    `restarting`: such a stop happened and this start ends it."""
    role = ROLE_PRIMARY if was_primary else ROLE_REPLICA
    match action:
        case Promote():
            return CallbackEvent.ON_ROLE_CHANGE, ROLE_PRIMARY
        case Demote() | HandOver():
            return CallbackEvent.ON_ROLE_CHANGE, ROLE_DEMOTED
        case StopPostgres():
            return None if restart_requested else (CallbackEvent.ON_STOP, role)
        case Reconfigure():
            # A running server re-read its configuration (SIGHUP): a reload.
            return (CallbackEvent.ON_RELOAD, role) if running else None
        case RestartPrimary():
            return CallbackEvent.ON_RESTART, ROLE_PRIMARY
        case StartPostgres(as_primary=as_primary):
            event = CallbackEvent.ON_RESTART if restarting else CallbackEvent.ON_START
            return event, ROLE_PRIMARY if as_primary else ROLE_REPLICA
        case Bootstrap():
            return CallbackEvent.ON_START, ROLE_PRIMARY
        case Clone() | Rewind():
            return CallbackEvent.ON_START, ROLE_REPLICA
        case _:
            return None


async def pre_promote(runner: CallbackRunner, settings: Settings) -> bool:
    """Run `pre_promote` (we hold the lease, still a standby); False: it vetoes."""
    run = await runner.run(
        CallbackEvent.PRE_PROMOTE,
        ROLE_REPLICA,
        timeout_s=settings.callbacks.pre_promote_timeout_s,
    )
    if run is not None and not run.ok:
        log.warning("promotion_vetoed", result=run.result.value, exit_code=run.exit_code)
        return False
    return True


async def post_bootstrap(runner: CallbackRunner, settings: Settings, pg: PostgresControl) -> None:
    """Run `post_bootstrap` on the new primary. When it fails, nothing half-initialized may
    lead: PostgreSQL is stopped and the data directory emptied, and PostgresError is raised
    (the bootstrap failed; the next decision withdraws the claim and releases the lease)."""
    run = await runner.run(
        CallbackEvent.POST_BOOTSTRAP,
        ROLE_PRIMARY,
        timeout_s=settings.callbacks.post_bootstrap_timeout_s,
    )
    if run is None or run.ok:
        return
    await pg.stop(StopMode.IMMEDIATE, timeout_s=settings.timing.shutdown_timeout_s)
    pg.clear_data_dir()
    log.error("bootstrap_discarded", reason=f"post_bootstrap {run.result.value}")
    raise PostgresError(
        f"post_bootstrap {run.result.value} (exit {run.exit_code}): the new cluster was "
        "discarded (PostgreSQL stopped, data directory emptied)"
    )
