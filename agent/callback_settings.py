"""The `callbacks` settings: commands the agent runs on PostgreSQL events (issue 12).

A callback is a command line (split like a shell would, without a shell: `shlex`), whose
program is an absolute path; the agent appends three arguments, as Patroni does: the event
(`on_start`, ...), the member's role (`primary`, `replica`, `demoted`) and the cluster name.
The `on_*` callbacks are fire-and-forget (agent/callbacks.py); `pre_promote` and
`post_bootstrap` are awaited and their exit status decides (agent/decide, executor).

Pure: no I/O (the loader checks that each program exists and is executable).
"""

from __future__ import annotations

import os.path
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from agent.value_rules import ConfigProblem, InvalidSettings


class CallbackEvent(StrEnum):
    """What a callback is called for; its value is the callback's first argument."""

    ON_START = "on_start"
    ON_STOP = "on_stop"
    ON_RESTART = "on_restart"
    ON_RELOAD = "on_reload"
    ON_ROLE_CHANGE = "on_role_change"
    PRE_PROMOTE = "pre_promote"
    POST_BOOTSTRAP = "post_bootstrap"


NOTIFY_EVENTS: Final = (
    CallbackEvent.ON_START,
    CallbackEvent.ON_STOP,
    CallbackEvent.ON_RESTART,
    CallbackEvent.ON_RELOAD,
    CallbackEvent.ON_ROLE_CHANGE,
)
"""The fire-and-forget callbacks (bounded by `callbacks.timeout_s`)."""


def command_rule(command: str) -> str | None:
    """None when `command` splits into words whose first is an absolute path, else the rule."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        return f"must be a command line (shell quoting): {exc}"
    if not words:
        return "must not be empty"
    if not os.path.isabs(words[0]):
        return f"the program must be an absolute path, got {words[0][:80]!r}"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallbackSettings:
    """Commands per event (None: none), and how long each may run (seconds)."""

    on_start: str | None = None
    on_stop: str | None = None
    on_restart: str | None = None
    on_reload: str | None = None
    on_role_change: str | None = None
    pre_promote: str | None = None
    post_bootstrap: str | None = None
    timeout_s: float = 60.0  # the on_* callbacks: killed (process group) after this long
    pre_promote_timeout_s: float = 10.0  # no answer in time vetoes the promotion
    post_bootstrap_timeout_s: float = 300.0  # no answer in time fails the bootstrap

    def __post_init__(self) -> None:
        found = list(self.problems())
        if found:
            raise InvalidSettings(found)

    def command(self, event: CallbackEvent) -> str | None:
        value: str | None = getattr(self, event.value)
        return value

    def argv(self, event: CallbackEvent, role: str, cluster: str) -> tuple[str, ...] | None:
        """The argument vector for `event` (the command's words, then event, role, cluster);
        None when no command is set for it."""
        command = self.command(event)
        if command is None:
            return None
        return (*shlex.split(command), event.value, role, cluster)

    def problems(self) -> Iterator[ConfigProblem]:
        for event in CallbackEvent:
            command = self.command(event)
            if command is not None:
                rule = command_rule(command)
                if rule is not None:
                    yield ConfigProblem(event.value, rule)
        for name in ("timeout_s", "pre_promote_timeout_s", "post_bootstrap_timeout_s"):
            value = getattr(self, name)
            if value <= 0:
                yield ConfigProblem(name, f"must be > 0, got {value:g}")
