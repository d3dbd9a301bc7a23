"""Parsing a PostgreSQL timeline history file (pg_wal/0000000N.history)."""

from __future__ import annotations

from agent.model import parse_lsn
from agent.postgres.bootstrap import parse_timeline_history


def test_the_last_line_names_the_timeline_that_ended_and_where() -> None:
    text = "1\t0/3000158\tno recovery target specified\n\n2\t0/5A0001C8\tno recovery target\n"
    assert parse_timeline_history(text) == (2, parse_lsn("0/5A0001C8"))


def test_comments_blank_lines_and_garbage_are_skipped() -> None:
    text = "# a comment\n\nnot a line\n1\t0/3000158\tfine\nx\ty\tz\n"
    assert parse_timeline_history(text) == (1, parse_lsn("0/3000158"))


def test_an_empty_history_gives_nothing() -> None:
    assert parse_timeline_history("") is None
