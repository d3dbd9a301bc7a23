"""Logging: JSON lines with bound context, console lines on a terminal, secrets masked."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import structlog

import agent.logging
from agent.config import LOG_LEVELS, LogFormat, LogLevel, LogSettings, Secret
from agent.logging import LEVELS, bind_member, configure_logging, get_logger


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Each test configures logging for its own stream; put the process back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    lines = stream.getvalue().splitlines()
    return [json.loads(line) for line in lines]


def test_json_mode_writes_one_object_per_line_with_event_level_and_member() -> None:
    stream = io.StringIO()
    configure_logging(LogSettings(level=LogLevel.INFO, format=LogFormat.JSON), stream=stream)
    bind_member("demo", "pg-0")
    log = get_logger("pgwarden.test")
    log.info("lease_acquired", ttl_s=10)
    log.warning("lease_lost", reason="expired")
    first, second = json_lines(stream)
    assert first["event"] == "lease_acquired" and first["level"] == "info"
    assert first["cluster"] == "demo" and first["member"] == "pg-0"
    assert first["ttl_s"] == 10 and first["logger"] == "pgwarden.test"
    assert second["event"] == "lease_lost" and second["level"] == "warning"
    stamp = datetime.fromisoformat(str(first["timestamp"]).replace("Z", "+00:00"))
    assert stamp.utcoffset() == timedelta(0)


def test_secrets_in_event_fields_are_masked() -> None:
    stream = io.StringIO()
    configure_logging(LogSettings(format=LogFormat.JSON), stream=stream)
    get_logger("t").info(
        "connecting", password=Secret("hunter2"), conninfo={"password": Secret("hunter3")}
    )
    text = stream.getvalue()
    assert "hunter2" not in text and "hunter3" not in text
    (event,) = json_lines(stream)
    assert event["password"] == "********"
    assert event["conninfo"] == {"password": "********"}


def test_plain_field_values_skip_the_secret_protocol_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Strings, numbers, booleans and None hold no secret: they are not checked against the
    runtime-checkable `Revealable` protocol, whose isinstance check was the largest single
    cost of an idle agent's cycle (issue 15). A secret is still masked."""
    checked: list[object] = []

    class CountingMeta(type):
        def __instancecheck__(cls, value: object) -> bool:
            checked.append(value)
            return isinstance(value, Secret)

    class Counting(metaclass=CountingMeta):
        pass

    monkeypatch.setattr(agent.logging, "Revealable", Counting)
    stream = io.StringIO()
    configure_logging(LogSettings(format=LogFormat.JSON), stream=stream)
    get_logger("t").info("ha_cycle", role="replica", duration_ms=2.5, lag=0, paused=False, x=None)
    assert checked == []
    get_logger("t").info("connecting", password=Secret("hunter2"))
    assert "hunter2" not in stream.getvalue() and len(checked) == 1


def test_events_below_the_configured_level_are_dropped() -> None:
    stream = io.StringIO()
    configure_logging(LogSettings(level=LogLevel.WARNING, format=LogFormat.JSON), stream=stream)
    log = get_logger("t")
    log.info("quiet")
    log.debug("quieter")
    log.error("loud")
    assert [e["event"] for e in json_lines(stream)] == ["loud"]


def test_library_logs_go_through_the_same_renderer_from_warning_up() -> None:
    stream = io.StringIO()
    configure_logging(LogSettings(level=LogLevel.DEBUG, format=LogFormat.JSON), stream=stream)
    bind_member("demo", "pg-1")
    logging.getLogger("aiohttp.access").info("GET /health 200")
    logging.getLogger("aiohttp.server").warning("bad request from %s", "127.0.0.1")
    (event,) = json_lines(stream)
    assert event["event"] == "bad request from 127.0.0.1"
    assert event["level"] == "warning" and event["logger"] == "aiohttp.server"
    assert event["member"] == "pg-1"


def test_exceptions_are_rendered_inside_the_json_object() -> None:
    stream = io.StringIO()
    configure_logging(LogSettings(format=LogFormat.JSON), stream=stream)
    try:
        raise ValueError("boom")
    except ValueError:
        get_logger("t").exception("action_failed")
    (event,) = json_lines(stream)
    assert event["event"] == "action_failed" and "ValueError: boom" in str(event["exception"])


def test_auto_format_writes_json_when_the_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging(LogSettings(format=LogFormat.AUTO), stream=stream)
    get_logger("t").info("started")
    assert json_lines(stream)[0]["event"] == "started"


def test_auto_format_writes_readable_lines_on_a_terminal() -> None:
    stream = FakeTerminal()
    configure_logging(LogSettings(format=LogFormat.AUTO), stream=stream)
    bind_member("demo", "pg-0")
    get_logger("t").info("started", password=Secret("hunter2"))
    line = re.sub(r"\x1b\[[0-9;]*m", "", stream.getvalue())  # colours are welcome on a TTY
    assert not line.startswith("{") and "started" in line and "member=pg-0" in line
    assert "hunter2" not in line


def test_console_format_on_a_plain_stream_has_no_colour_codes() -> None:
    stream = io.StringIO()
    configure_logging(LogSettings(format=LogFormat.CONSOLE), stream=stream)
    get_logger("t").info("started", x=1)
    text = stream.getvalue()
    assert "started" in text and "x=1" in text and "\x1b[" not in text


def test_configuring_again_replaces_the_previous_setup_instead_of_doubling_output() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LogSettings(format=LogFormat.JSON), stream=first)
    configure_logging(LogSettings(format=LogFormat.JSON), stream=second)
    logging.getLogger("lib").error("once")
    get_logger("t").info("twice?")
    assert first.getvalue() == ""
    assert [e["event"] for e in json_lines(second)] == ["once", "twice?"]


def test_a_logger_made_before_configuration_follows_it() -> None:
    early = get_logger("early")
    stream = io.StringIO()
    configure_logging(LogSettings(format=LogFormat.JSON), stream=stream)
    early.info("late_event")
    assert json_lines(stream)[0]["logger"] == "early"


def test_logging_knows_every_level_the_configuration_accepts() -> None:
    assert set(LEVELS) == set(LOG_LEVELS)
