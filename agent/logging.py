"""Structured logging: JSON lines in containers, readable lines on a terminal.

Events are snake_case names with key-value fields (`log.info("lease_acquired", ttl_s=10)`).
`configure_logging()` sets up one renderer for two sources:

- structlog loggers (`get_logger(name)`), filtered at `log.level`;
- the standard `logging` module (aiohttp, asyncio, ...), at WARNING and above only, so that
  library messages land in the same stream in the same format.

Context bound with `bind_member()` (cluster, member) is merged into every event, and any
`Secret` in an event's fields is rendered as "********".

Not a replacement for the standard module despite the name: import it as `agent.logging`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol, TextIO, runtime_checkable

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

# This module sits in the bottom layer beside agent.config and may not import it (the
# import-linter contract keeps that layer's modules independent), so it states what it needs
# of the settings and of secrets as protocols; config.LogSettings and config.Secret fit them.

LEVELS: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class LogConfig(Protocol):
    """What `configure_logging()` reads: config.LogSettings."""

    @property
    def level(self) -> str:
        """One of LEVELS."""
        ...

    @property
    def format(self) -> str:
        """One of "auto", "json", "console" (config.LogFormat)."""
        ...


@runtime_checkable
class Revealable(Protocol):
    """A secret value (config.Secret): its str() is already masked; `reveal()` is not."""

    def reveal(self) -> str: ...


LIBRARY_LEVEL: Final = logging.WARNING
"""Records of the standard `logging` module below this level are dropped."""


class _PgwardenHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one stdlib handler this module installs (found and replaced on reconfiguration)."""


# Field values that are never secrets and hold none: skipped before the protocol check, which
# costs far more (isinstance on a runtime-checkable Protocol walks its attributes each time;
# it was the largest single cost in an idle agent's profile, a log event per cycle).
_PLAIN: Final = frozenset({str, int, float, bool, type(None)})


def _masked(value: object) -> object:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, Revealable):
        return str(value)  # the masked form, e.g. "********"
    if isinstance(value, Mapping):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_masked(v) for v in value]
    return value


def mask_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Processor: replace every `Secret` in the event's fields (also inside containers)."""
    for key, value in event_dict.items():
        if key.startswith("_"):
            continue  # structlog's own bookkeeping (e.g. the stdlib record)
        event_dict[key] = _masked(value)
    return event_dict


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's line writer, plus the name it was asked for (structlog.get_logger(name))."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


@dataclass(frozen=True, slots=True)
class _NamedWriteLoggerFactory:
    file: TextIO

    def __call__(self, *args: object) -> _NamedWriteLogger:
        return _NamedWriteLogger(self.file, str(args[0]) if args else "")


def _add_logger_name(logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", "")
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or unusual streams are not terminals
        return False


def configure_logging(settings: LogConfig, *, stream: TextIO = sys.stderr) -> None:
    """Route all logging to `stream`: JSON objects, one per line (format json, or auto when
    `stream` is not a TTY), or console lines (console, or auto on a TTY). Safe to call again:
    the previous configuration is replaced, not stacked."""
    level = LEVELS[settings.level]
    as_json = settings.format == "json" or (settings.format == "auto" and not _is_tty(stream))
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        mask_secrets,
    ]
    renderer: Processor
    if as_json:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_is_tty(stream))

    structlog.configure(
        processors=[_add_logger_name, *shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_NamedWriteLoggerFactory(stream),
        # Not cached: module-level loggers must follow a later reconfiguration (tests do).
        cache_logger_on_first_use=False,
    )

    handler = _PgwardenHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _PgwardenHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LIBRARY_LEVEL)


def bind_member(cluster: str, member: str) -> None:
    """Add `cluster` and `member` to every later event of this context (and the tasks it
    starts, which inherit the contextvars)."""
    structlog.contextvars.bind_contextvars(cluster=cluster, member=member)


def get_logger(name: str) -> FilteringBoundLogger:
    """A logger whose events carry `logger=name`. Lazy: it follows `configure_logging()`
    even when created at import time. (`structlog.get_logger(name)` is the same.)"""
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger
