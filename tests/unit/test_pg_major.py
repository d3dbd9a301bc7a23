"""Members of one cluster run one PostgreSQL major version: the binaries' version is read and
published, and a member of another major refuses to clone from, rewind against or stream from
the leader, saying why (agent/decide/member.py, `major_refusal`)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.actions import Clone, Follow, StartPostgres
from agent.decide import Memory, decide
from agent.model import LocalState, MemberName, PgState, RawRecord, Role, parse_member
from agent.postgres.version import parse_major
from tests.unit.test_decide import (
    EMPTY,
    REPLICA,
    STOPPED_REPLICA,
    A,
    member,
    obs,
    view,
)


@pytest.mark.parametrize(
    ("line", "major"),
    [
        ("postgres (PostgreSQL) 18.6\n", 18),
        ("postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)\n", 15),
        ("postgres (PostgreSQL) 17beta2", 17),
    ],
)
def test_the_major_is_read_from_postgres_version(line: str, major: int) -> None:
    assert parse_major(line) == major


def test_an_answer_that_is_not_a_version_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a PostgreSQL version line"):
        parse_major("bash: postgres: command not found")


def test_the_member_record_carries_the_major_version() -> None:
    record = replace(member("b"), pg_major=18)
    parsed = parse_member("b", RawRecord(value=record.to_json(), version="1"))
    assert parsed.pg_major == 18
    legacy = RawRecord(
        value=record.to_json().replace('"pg_major":18', '"pg_major":null'), version="1"
    )
    assert parse_member("b", legacy).pg_major is None


LEADER_15 = replace(member("b", Role.PRIMARY, PgState.RUNNING), pg_major=15)


def test_an_empty_member_of_another_major_does_not_clone_and_says_why() -> None:
    decision, _ = decide(obs(view("b", LEADER_15), replace(EMPTY, pg_major=18)), Memory(), A)
    assert decision.actions == ()
    assert "PostgreSQL 18" in decision.reason and "PostgreSQL 15" in decision.reason
    assert "refusing to join" in decision.reason


@pytest.mark.parametrize("local", [REPLICA, STOPPED_REPLICA], ids=["running", "stopped"])
def test_a_replica_of_another_major_neither_follows_nor_starts(local: LocalState) -> None:
    decision, _ = decide(obs(view("b", LEADER_15), replace(local, pg_major=18)), Memory(), A)
    assert decision.actions == ()
    assert "refusing to join" in decision.reason


def test_the_same_major_or_an_unknown_one_joins_as_before() -> None:
    for local_major, leader_major in ((15, 15), (None, 15), (18, None)):
        leader = replace(LEADER_15, pg_major=leader_major)
        empty = replace(EMPTY, pg_major=local_major)
        decision, _ = decide(obs(view("b", leader), empty), Memory(), A)
        assert decision.actions == (Clone(source=MemberName("b")),)
        stopped = replace(STOPPED_REPLICA, pg_major=local_major)
        decision, _ = decide(obs(view("b", leader), stopped), Memory(), A)
        assert decision.actions == (StartPostgres(upstream=MemberName("b")),)
        running = replace(REPLICA, pg_major=local_major)
        decision, _ = decide(obs(view("b", leader), running), Memory(), A)
        assert decision.actions == (Follow(leader=MemberName("b")),)
