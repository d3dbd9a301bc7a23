"""synchronous_standby_names: the pure renderer and its tolerant inverse."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.model import SyncStandbys
from agent.postgres.replication import (
    ASYNC,
    parse_synchronous_standby_names,
    render_synchronous_standby_names,
)


@pytest.mark.parametrize(
    ("standbys", "text"),
    [
        (SyncStandbys(quorum=False, count=1, names=("b",)), 'FIRST 1 ("b")'),
        (SyncStandbys(quorum=False, count=2, names=("b", "c")), 'FIRST 2 ("b", "c")'),
        (SyncStandbys(quorum=True, count=1, names=("b", "c")), 'ANY 1 ("b", "c")'),
        (SyncStandbys(quorum=True, count=5, names=("b", "c")), 'ANY 2 ("b", "c")'),
        (
            SyncStandbys(quorum=False, count=1, names=('we"ird', "first")),
            'FIRST 1 ("we""ird", "first")',
        ),
        (SyncStandbys(quorum=True, count=1, names=()), ""),
        (ASYNC, ""),
    ],
)
def test_renders_first_and_any_with_quoted_names(standbys: SyncStandbys, text: str) -> None:
    assert render_synchronous_standby_names(standbys) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ASYNC),
        ("  ", ASYNC),
        ("b, C", SyncStandbys(quorum=False, count=1, names=("b", "c"))),
        ("2 (b, c)", SyncStandbys(quorum=False, count=2, names=("b", "c"))),
        ('any 1 ("B", c)', SyncStandbys(quorum=True, count=1, names=("B", "c"))),
        ("*", SyncStandbys(quorum=False, count=1, names=("*",))),
    ],
)
def test_parses_postgresql_spellings(text: str, expected: SyncStandbys) -> None:
    assert parse_synchronous_standby_names(text) == expected


def test_unreadable_text_is_none() -> None:
    assert parse_synchronous_standby_names('FIRST 1 ("b)') is None


NAMES = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=12
)


@given(
    st.booleans(),
    st.integers(min_value=1, max_value=4),
    st.lists(NAMES, min_size=1, max_size=4, unique=True),
)
def test_render_then_parse_is_the_identity(quorum: bool, count: int, names: list[str]) -> None:
    standbys = SyncStandbys(quorum=quorum, count=min(count, len(names)), names=tuple(names))
    assert parse_synchronous_standby_names(render_synchronous_standby_names(standbys)) == standbys
