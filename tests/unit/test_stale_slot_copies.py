"""A former primary's own copies of the permanent logical slots: dropped, every cycle they are
there, while it streams from a running leader (itself, not a cascade source); kept whenever
it could need them
(agent/slot_config.py `stale_copies`, agent/decide/member.py `when_follower`).

On PostgreSQL 17+ such a copy (not `synced`) stops the slot sync worker from making the
synchronized one ("exiting from slot synchronization because same name slot ... already
exists on the standby"), so the standby is never ready for the next failover. The drop ran
once, after a start or a Follow: a former primary that is rewound (the usual path after a
switchover, when the new leader is already there; pg_rewind finds no rewind required and
leaves the data directory, the slot included) never dropped it (tests/e2e/test_slots.py failed
1 run in 3 that way).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from agent.actions import DropStaleSlots, Follow
from agent.decide import Memory, decide
from agent.model import ClusterView, DynamicConfig, MemberName, PgState, RecordKind, Role
from agent.slot_config import PermanentSlot, SlotState, SlotType, stale_copies
from tests.unit.fakes.loop_cluster import LoopCluster
from tests.unit.test_decide import REPLICA, A, make_settings, member, obs, view

CDC = PermanentSlot(name="cdc", type=SlotType.LOGICAL, database="postgres", plugin="pgoutput")
OWN = SlotState(name="cdc", type="logical", active=False)
FOLLOWING_B = Memory(following=MemberName("b"))


def _view(*, leader: str | None = "b", state: PgState = PgState.RUNNING) -> ClusterView:
    members = (member("b", Role.PRIMARY, state, timeline=1), member("c"))
    return replace(view(leader, *members), config=DynamicConfig(slots=(CDC,)))


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ((OWN,), ("cdc",)),
        ((replace(OWN, synced=True),), ()),  # the slot sync worker's copy: the one we want
        ((replace(OWN, active=True),), ()),  # someone decodes from it
        ((replace(OWN, type="physical"),), ()),
        ((replace(OWN, name="other"),), ()),  # not a declared slot: not ours to judge
        ((), ()),
    ],
)
def test_only_unused_unsynchronized_logical_copies_of_declared_slots_are_stale(
    local: tuple[SlotState, ...], expected: tuple[str, ...]
) -> None:
    assert stale_copies((CDC,), local) == expected


def test_a_streaming_standby_drops_its_stale_copy_each_cycle_it_is_there() -> None:
    local = replace(REPLICA, slots=(OWN,))
    decision, memory = decide(obs(_view(), local), FOLLOWING_B, A)
    assert decision.actions == (DropStaleSlots(names=("cdc",)),)
    # Still there at the next cycle (the drop failed, or raced with a decoding session):
    # asked again.
    decision, _ = decide(obs(_view(), local), memory, A)
    assert decision.actions == (DropStaleSlots(names=("cdc",)),)
    # Gone, and the synchronized copy made: nothing more to do.
    synced = replace(REPLICA, slots=(replace(OWN, synced=True),))
    decision, _ = decide(obs(_view(), synced), memory, A)
    assert decision.actions == ()


@pytest.mark.parametrize(
    ("cluster", "local", "memory", "why"),
    [
        (_view(leader=None), replace(REPLICA, slots=(OWN,)), FOLLOWING_B, "no leader"),
        (_view(state=PgState.STOPPED), replace(REPLICA, slots=(OWN,)), FOLLOWING_B, "down"),
        (_view(), replace(REPLICA, slots=(OWN,), streaming=False), FOLLOWING_B, "no stream"),
    ],
)
def test_the_copy_is_kept_while_this_member_could_need_it(
    cluster: ClusterView, local: object, memory: Memory, why: str
) -> None:
    # No leader: we may win the race, and our copy is then all a consumer has. A leader
    # that does not run as the primary: its slot may be gone with it. Not streaming: no
    # synchronized copy could replace ours yet (a failover now would find neither).
    decision, _ = decide(obs(cluster, local), memory, A)  # type: ignore[arg-type]
    assert not [a for a in decision.actions if isinstance(a, DropStaleSlots)], why


def test_a_standby_pointed_elsewhere_follows_first_and_drops_once_it_streams() -> None:
    local = replace(REPLICA, slots=(OWN,))
    decision, _ = decide(obs(_view(), local), Memory(following=MemberName("c")), A)
    assert decision.actions == (Follow(leader=MemberName("b")),)


def test_a_cascading_member_keeps_its_copy_while_its_stream_proves_nothing_of_the_leader() -> None:
    # Review S1: we stream from c (tags.replicatefrom), so our stream says nothing about b,
    # whose record says "running" for up to a ttl after it died; we may be next to lead,
    # and the slot sync worker cannot copy from a standby: our copy is all we have.
    cascading = make_settings("a", replicatefrom="c")
    local = replace(REPLICA, slots=(OWN,))
    decision, _ = decide(obs(_view(), local), Memory(following=MemberName("c")), cascading)
    assert "streaming from c" in decision.reason
    assert not [a for a in decision.actions if isinstance(a, DropStaleSlots)]
    # The same member once it streams from the leader (its cascade source stopped streaming).
    alone = replace(_view(), members=(_view().members[0], member("c", state=PgState.STOPPED)))
    decision, _ = decide(obs(alone, local), FOLLOWING_B, cascading)
    assert decision.actions == (DropStaleSlots(names=("cdc",)),)


async def _declare(c: LoopCluster) -> None:
    view = await c["a"].dcs.get_cluster()
    record = json.loads(view.config.to_json())
    record["slots"] = {"cdc": {"type": "logical", "database": "postgres", "plugin": "pgoutput"}}
    assert await c["a"].dcs.write_record(
        RecordKind.CONFIG, json.dumps(record), expected_version=view.config.version
    )


async def test_a_rewound_former_primary_ends_up_with_the_synchronized_copy() -> None:
    c = LoopCluster()
    assert await c.bootstrap() == "a"
    a, b = c["a"], c["b"]
    await _declare(c)
    await c.run_until(lambda: "cdc" in b.pg.synced and "cdc" in c["c"].pg.synced)
    assert "cdc" in a.pg.logical and "cdc" not in a.pg.synced  # the consumer's slot
    # Three cycles of a's failing drops: the first attempts, as late as they may come, do
    # not decide whether it ever gets its synchronized copy.
    a.pg.fail("drop_stale_logical_slots", times=3)
    await c.request_switchover("a", "b")
    await c.run_until(lambda: c.healthy("b"))
    assert "rewind" in a.pg.calls  # the path that never dropped the copy
    await c.run_until(lambda: "cdc" in a.pg.synced)
    assert a.pg.calls.count("drop_stale_logical_slots") >= 4
    # The new leader's slot (a synchronized copy before its promotion) is never touched.
    assert "cdc" in b.pg.slots and "drop_stale_logical_slots" not in b.pg.calls
    calls = len(a.pg.calls)
    for _ in range(3):
        await c.round()
    assert "drop_stale_logical_slots" not in a.pg.calls[calls:]  # nothing stale: not asked
