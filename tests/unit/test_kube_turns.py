"""The turns of a leaderless cluster's members to read it from a throttling server
(agent/dcs/kubernetes/turns.py), pure: who reads first, and how long the others wait."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.dcs.kubernetes.api import Throttled
from agent.dcs.kubernetes.locks import LeaseLock
from agent.dcs.kubernetes.objects import (
    MEMBER_ANNOTATION,
    MEMBER_NAME_ANNOTATION,
    THROTTLED_ANNOTATION,
)
from agent.dcs.kubernetes.turns import RaceTurns, turn_order

LEASE = LeaseLock(namespace="default", cluster="c", ttl_s=6.0)


def pod(name: str, wal_lsn: int | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"name": name, "role": "replica"}
    if wal_lsn is not None:
        record["wal_lsn"] = wal_lsn
    notes = {MEMBER_ANNOTATION: json.dumps(record), MEMBER_NAME_ANNOTATION: name}
    return {"metadata": {"name": name, "annotations": notes}}


def lease(holder: str, *, throttled: bool) -> dict[str, Any]:
    notes = {THROTTLED_ANNOTATION: "true"} if throttled else {}
    return {
        "metadata": {"name": "c-leader", "annotations": notes},
        "spec": {"holderIdentity": holder},
    }


def test_the_last_holder_goes_first_only_if_it_said_it_was_throttled() -> None:
    pods = [pod("a", 100), pod("b", 300), pod("c", 300), pod("d")]
    # The others by the WAL position last published, the most advanced first, then by name.
    assert turn_order(pods, "", throttled=False, live=set("abcd")) == ["b", "c", "a", "d"]
    # Lost to the throttling, likely alive (and its WAL the newest): it takes the lock back.
    assert turn_order(pods, "a", throttled=True, live=set("abcd")) == ["a", "b", "c", "d"]
    # Stopped renewing though not throttled: likely dead, it goes last.
    assert turn_order(pods, "b", throttled=False, live=set("abcd")) == ["c", "a", "d", "b"]


def test_each_member_waits_its_turn_from_when_its_view_first_showed_no_leader() -> None:
    pods = [pod("a", 1), pod("b", 2), pod("c", 3)]
    locks = [lease("a", throttled=True)]
    turns = {name: RaceTurns(name, turn_s=6.0) for name in "abc"}
    for t in turns.values():
        t.seen(False, 0.0)
        assert (
            t.wait_s(pods, [LEASE], locks, 0.0, live=set("abc")) == 0.0
        )  # a leader: no turn to wait
        t.seen(True, 10.0)
        t.seen(True, 12.0)  # still the same leaderless spell
    assert [turns[n].wait_s(pods, [LEASE], locks, 12.0, live=set("abc")) for n in "acb"] == [
        0.0,
        4.0,
        10.0,
    ]
    turns["b"].seen(False, 13.0)  # a leader again: the next spell counts from its start
    turns["b"].seen(True, 30.0)
    assert turns["b"].wait_s(pods, [LEASE], locks, 30.0, live=set("abc")) == 12.0
    assert turns["b"].wait_s(pods, [LEASE], locks, 42.0, live=set("abc")) == 0.0


def test_a_member_second_in_turn_waits_one_turn() -> None:
    pods = [pod("a", 1), pod("b", 2)]
    turns = RaceTurns("a", turn_s=6.0)
    turns.seen(True, 0.0)
    quiet = [lease("c", throttled=False)]  # c stopped renewing; b, further ahead, goes first
    with pytest.raises(Throttled, match=r"turn to read in 6\.0 s"):
        turns.wait(pods, [LEASE], quiet, 0.0, live=set("ab"))
    told = [lease("c", throttled=True)]  # c was throttled: it goes first, then b, then a
    with pytest.raises(Throttled, match=r"turn to read in 7\.0 s"):
        turns.wait(pods, [LEASE], told, 5.0, live=set("ab"))
    turns.wait(pods, [LEASE], told, 12.0, live=set("ab"))  # its turn came


def test_members_whose_records_expired_take_their_turns_after_the_live_ones() -> None:
    """b crash-loops (or died long ago) with a high old WAL position: its record expired on
    our clock, so it no longer reads first and makes the live ones wait (review hreview3
    finding 7); the expired ones keep the same order among themselves."""
    pods = [pod("a", 100), pod("b", 900), pod("c", 200), pod("d", 800)]
    assert turn_order(pods, "", throttled=False, live={"a", "c"}) == ["c", "a", "b", "d"]
    assert turn_order(pods, "d", throttled=True, live={"a", "c"}) == ["d", "c", "a", "b"]
    turns = RaceTurns("c", turn_s=3.0)
    turns.seen(True, 0.0)
    assert turns.wait_s(pods, [LEASE], [lease("d", throttled=False)], 0.0, live=set("ac")) == 0.0
