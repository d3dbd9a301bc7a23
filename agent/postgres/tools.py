"""Running PostgreSQL's tools (initdb, pg_basebackup, pg_rewind, pg_waldump, ...) as the OS user.

Each tool runs in a session of its own with a clean environment, under a deadline; a tool that
times out or whose caller is cancelled is killed with its whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.config import PostgresSettings
from agent.postgres.osfiles import PostgresError, RunAs, run_as

KILL_WAIT_S = 2.0
_TAIL_CHARS = 1500


def tool_env(who: RunAs, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for PostgreSQL and its tools (C messages, no inherited PG* vars)."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": who.home,
        "USER": who.name,
        "LOGNAME": who.name,
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
    }
    if extra:
        env.update(extra)
    return env


def tail(text: str) -> str:
    """The end of a tool's output or of a log, short enough for an error message."""
    text = text.strip()
    return text if len(text) <= _TAIL_CHARS else "..." + text[-_TAIL_CHARS:]


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolResult:
    """A finished tool: its exit code and decoded output."""

    returncode: int
    stdout: str
    stderr: str


async def run_tool(
    settings: PostgresSettings,
    args: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    what: str,
) -> str:
    """Run a PostgreSQL tool as the OS user; return its stdout.

    Raises PostgresError (with stderr's tail) on a non-zero exit or after `timeout_s`; a
    timed-out or cancelled tool is killed with its whole process group.
    """
    result = await run_tool_result(settings, args, timeout_s=timeout_s, env=env, what=what)
    if result.returncode != 0:
        message = tail(result.stderr) or tail(result.stdout)
        raise PostgresError(f"{what} failed (exit {result.returncode}): {message}")
    return result.stdout


async def run_tool_result(
    settings: PostgresSettings,
    args: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    what: str,
) -> ToolResult:
    """Like `run_tool`, but a non-zero exit is a result, not an error (for tools such as
    pg_waldump whose normal end is an error message). Raises PostgresError only after
    `timeout_s` (the tool is then killed with its process group)."""
    who = run_as(settings)
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd="/",
        env=tool_env(who, env),
        user=who.user,
        group=who.group,
        extra_groups=who.extra_groups,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(KILL_WAIT_S):
                await proc.wait()
        if isinstance(exc, TimeoutError):
            raise PostgresError(f"{what} timed out after {timeout_s:.1f} s") from None
        raise
    return ToolResult(
        returncode=proc.returncode if proc.returncode is not None else -1,
        stdout=out.decode(errors="replace"),
        stderr=err.decode(errors="replace"),
    )
