"""The reference tables of docs/configuration.md are the field list's, row for row."""

from __future__ import annotations

from pathlib import Path

from agent.config import known_settings
from agent.config.field import Kind
from agent.config.fields import FIELDS
from agent.config.reference import CHAPTERS, chapter_of, table, update

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_the_committed_reference_tables_match_the_field_list() -> None:
    text = DOC.read_text("utf-8")
    assert update(text) == text, "run: python -m agent.config.reference docs/configuration.md"


def test_every_chapter_has_its_marker_in_the_document() -> None:
    text = DOC.read_text("utf-8")
    for chapter in CHAPTERS:
        assert f"<!-- reference: {chapter} -->\n| field |" in text, chapter


def test_a_row_edited_by_hand_or_a_field_without_its_row_is_caught() -> None:
    text = DOC.read_text("utf-8")
    edited = text.replace("| `ttl_s` | number | `6` |", "| `ttl_s` | number | `30` |")
    assert edited != text and update(edited) != edited
    missing = text.replace(table("timing").splitlines()[-1] + "\n", "")
    assert missing != text and update(missing) != missing


def test_every_key_has_a_row_with_its_environment_variable() -> None:
    tables = {chapter: table(chapter) for chapter in CHAPTERS}
    for f in FIELDS:
        if f.kind is Kind.SECTION:
            continue
        assert f"`{f.env_var}`" in tables[chapter_of(f.path)], f.path
    assert len(known_settings()) == len(FIELDS)


def test_a_new_timing_limit_is_documented_with_its_default() -> None:
    assert "| `clone_timeout_s` | number | `600` | `PGWARDEN_TIMING__CLONE_TIMEOUT_S` |" in (
        table("timing")
    )
    assert "| `rewind_timeout_s` | number | `300` |" in table("timing")
