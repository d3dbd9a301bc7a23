"""decide() in failsafe mode: the leader's record, the primary's rounds during a DCS outage,
the members' promise, and the safety properties (DESIGN.md section 3, DCS unreachable)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.actions import (
    AcquireLeader,
    ConfirmFailsafe,
    Demote,
    Promote,
    RenewLeader,
    SetFailsafeRecord,
    StopPostgres,
)
from agent.decide import (
    SLOT_GRACE_S,
    Memory,
    Observation,
    Outcome,
    Result,
    answer_failsafe,
    decide,
    failsafe_active,
    fence_deadline,
    record_outcome,
)
from agent.model import (
    ClusterView,
    DynamicConfig,
    FailsafeRecord,
    LocalState,
    MemberName,
    PgState,
    Role,
)
from tests.unit.fakes.replay import outcomes_of, promotes_unleased
from tests.unit.test_decide import (
    LEASED,
    ME_PRIMARY,
    NOW,
    PRIMARY,
    REPLICA,
    A,
    B,
    C,
    kinds,
    member,
    obs,
    view,
)

TTL, MARGIN = A.timing.ttl_s, A.timing.fence_margin_s
PEERS = ((MemberName("b"), "http://b:8008"), (MemberName("c"), "http://c:8008"))
RECORD_A = FailsafeRecord(leader=MemberName("a"), members=PEERS, version="3")


def fs_view(
    leader: str | None,
    *members: object,
    record: FailsafeRecord | None = RECORD_A,
    mode: bool = True,
) -> ClusterView:
    base = view(leader, *members)  # type: ignore[arg-type]
    return replace(
        base,
        config=DynamicConfig(failsafe_mode=mode),
        failsafe=record,
        failsafe_version=record.version if record is not None else "",
    )


IN_FAILSAFE = replace(LEASED, failsafe_peers=PEERS)


# --------------------------------------------------------------------------- the record


def test_leader_writes_the_failsafe_record_naming_every_other_member_and_its_api() -> None:
    decision, memory = decide(obs(fs_view("a", ME_PRIMARY, B, C, record=None), PRIMARY), LEASED, A)
    writes = [a for a in decision.actions if isinstance(a, SetFailsafeRecord)]
    assert len(writes) == 1 and writes[0].record is not None
    assert writes[0].record.leader == "a"
    assert writes[0].record.members == PEERS
    assert writes[0].expected_version is None
    # Not read back yet: nothing to rely on during an outage.
    assert memory.failsafe_peers is None


def test_leader_relies_on_the_record_once_it_reads_it_back() -> None:
    decision, memory = decide(obs(fs_view("a", ME_PRIMARY, B, C), PRIMARY), LEASED, A)
    assert SetFailsafeRecord not in kinds(decision)
    assert memory.failsafe_peers == PEERS


def test_a_new_member_is_added_and_consulted_before_the_record_says_so() -> None:
    d = member("d")
    decision, memory = decide(obs(fs_view("a", ME_PRIMARY, B, C, d), PRIMARY), LEASED, A)
    writes = [a for a in decision.actions if isinstance(a, SetFailsafeRecord)]
    assert writes and writes[0].record is not None
    assert [n for n, _ in writes[0].record.members] == ["b", "c", "d"]
    assert writes[0].expected_version == "3"
    # The write may land without us knowing: d is consulted from now on.
    assert memory.failsafe_peers is not None
    assert [n for n, _ in memory.failsafe_peers] == ["b", "c", "d"]


def test_a_member_whose_record_went_away_stays_named_for_the_grace_period() -> None:
    """Its agent was down for a ttl: if the record dropped it and we died next, nobody could
    take over (only named members may)."""
    decision, memory = decide(obs(fs_view("a", ME_PRIMARY, B), PRIMARY), LEASED, A)
    assert SetFailsafeRecord not in kinds(decision)
    assert memory.failsafe_peers == PEERS
    assert memory.failsafe_absent_since == ((MemberName("c"), NOW),)
    later = replace(obs(fs_view("a", ME_PRIMARY, B), PRIMARY), now=NOW + SLOT_GRACE_S)
    decision, memory = decide(later, replace(memory, lease_sent_at=NOW + SLOT_GRACE_S - 1), A)
    writes = [a for a in decision.actions if isinstance(a, SetFailsafeRecord)]
    assert writes and writes[0].record is not None
    assert [n for n, _ in writes[0].record.members] == ["b"]
    # Still consulted until the shorter record is read back (the write may have failed).
    assert memory.failsafe_peers == PEERS


def test_a_member_back_within_the_grace_is_no_longer_counted_absent() -> None:
    _, memory = decide(obs(fs_view("a", ME_PRIMARY, B), PRIMARY), LEASED, A)
    _, memory = decide(obs(fs_view("a", ME_PRIMARY, B, C), PRIMARY), memory, A)
    assert memory.failsafe_absent_since == ()


def test_a_record_of_a_former_leader_is_rewritten_and_not_relied_on() -> None:
    old = FailsafeRecord(leader=MemberName("b"), members=PEERS, version="9")
    decision, memory = decide(obs(fs_view("a", ME_PRIMARY, B, C, record=old), PRIMARY), LEASED, A)
    writes = [a for a in decision.actions if isinstance(a, SetFailsafeRecord)]
    assert writes and writes[0].expected_version == "9"
    assert memory.failsafe_peers is None


def test_with_failsafe_off_the_leader_deletes_the_record_and_does_not_use_it() -> None:
    decision, memory = decide(
        obs(fs_view("a", ME_PRIMARY, B, C, mode=False), PRIMARY), IN_FAILSAFE, A
    )
    writes = [a for a in decision.actions if isinstance(a, SetFailsafeRecord)]
    assert writes and writes[0].record is None and writes[0].expected_version == "3"
    assert memory.failsafe_peers is None


# --------------------------------------------------------------------------- DCS outage


def test_primary_asks_every_member_to_confirm_it_while_the_dcs_is_down() -> None:
    decision, _ = decide(obs(None, PRIMARY), IN_FAILSAFE, A)
    assert kinds(decision) == [ConfirmFailsafe, RenewLeader]
    first = decision.actions[0]
    assert isinstance(first, ConfirmFailsafe) and first.members == PEERS


def test_past_the_lease_deadline_a_failsafe_primary_only_asks_the_members() -> None:
    """Retrying the renewal would cost a whole DCS timeout per cycle for a lease that is gone
    by now; the lease is taken back with AcquireLeader when the DCS answers."""
    at = A.timing.fence_deadline(IN_FAILSAFE.lease_sent_at or 0) + 0.5
    memory = replace(IN_FAILSAFE, failsafe_sent_at=at - 1)
    decision, _ = decide(replace(obs(None, PRIMARY), now=at), memory, A)
    assert kinds(decision) == [ConfirmFailsafe]


def test_without_failsafe_the_primary_only_retries_its_renewal() -> None:
    decision, _ = decide(obs(None, PRIMARY), LEASED, A)
    assert kinds(decision) == [RenewLeader]


def test_a_confirmed_round_moves_the_deadline_to_its_send_time() -> None:
    sent = NOW + 5
    memory = record_outcome(
        IN_FAILSAFE,
        Outcome(action=ConfirmFailsafe(members=PEERS), result=Result.OK, sent_at=sent),
        A,
    )
    assert fence_deadline(memory, A) == sent + TTL - MARGIN
    assert failsafe_active(memory, sent + 1, A)


def test_a_round_not_every_member_accepted_changes_nothing() -> None:
    memory = record_outcome(
        IN_FAILSAFE,
        Outcome(action=ConfirmFailsafe(members=PEERS), result=Result.LOST, sent_at=NOW + 5),
        A,
    )
    assert memory == IN_FAILSAFE


def test_primary_confirmed_by_its_members_stays_primary_past_the_lease_deadline() -> None:
    lease_deadline = A.timing.fence_deadline(IN_FAILSAFE.lease_sent_at or 0)
    memory = replace(IN_FAILSAFE, failsafe_sent_at=lease_deadline - 1)
    decision, _ = decide(replace(obs(None, PRIMARY), now=lease_deadline + 1), memory, A)
    assert not any(isinstance(a, Demote) for a in decision.actions)
    assert ConfirmFailsafe in kinds(decision)


def test_primary_whose_last_confirmation_is_too_old_fences() -> None:
    memory = replace(IN_FAILSAFE, failsafe_sent_at=NOW)
    at = NOW + TTL - MARGIN  # exactly the failsafe deadline
    decision, _ = decide(replace(obs(None, PRIMARY), now=at + 10), memory, A)
    assert kinds(decision) == [Demote]


def test_when_the_dcs_returns_without_our_lease_the_failsafe_primary_takes_it_back() -> None:
    memory = replace(IN_FAILSAFE, lease_sent_at=None, failsafe_sent_at=NOW - 1)
    decision, after = decide(obs(fs_view(None, B, C), PRIMARY), memory, A)
    assert kinds(decision) == [ConfirmFailsafe, AcquireLeader]
    assert after.failsafe_sent_at == NOW - 1


def test_without_a_confirmation_a_primary_seeing_no_leader_still_fences_at_once() -> None:
    decision, _ = decide(obs(fs_view(None, B, C), PRIMARY), IN_FAILSAFE, A)
    assert kinds(decision) == [Demote]


def test_a_failsafe_primary_that_sees_another_leader_fences_at_once() -> None:
    memory = replace(IN_FAILSAFE, failsafe_sent_at=NOW - 1)
    other = member("b", Role.PRIMARY, PgState.RUNNING)
    decision, after = decide(obs(fs_view("b", other, C), PRIMARY), memory, A)
    assert kinds(decision) == [Demote]
    assert after.failsafe_sent_at is None and after.failsafe_peers is None


# --------------------------------------------------------------------------- candidates


def test_a_member_that_confirmed_a_failsafe_primary_does_not_race() -> None:
    promised = Memory(promised_to=MemberName("x"), promised_until=NOW + 3)
    decision, _ = decide(obs(fs_view(None, B, C), REPLICA), promised, A)
    assert decision.actions == ()
    assert "promised x" in decision.reason


def answer_x(local: LocalState, now: float) -> tuple[str | None, Memory]:
    """This member's answer to x, a primary in failsafe, with the DCS unreadable."""
    return answer_failsafe(
        "x",
        settings=A,
        local=local,
        racing=False,
        memory=Memory(),
        view=None,
        dcs_ok=False,
        now=now,
    )


def test_an_accepted_request_is_a_promise_that_holds_across_cycles() -> None:
    refusal, promised = answer_x(REPLICA, NOW - 1)
    assert refusal is None
    assert (promised.promised_to, promised.promised_until) == ("x", NOW - 1 + TTL)
    first, memory = decide(obs(fs_view(None, B, C), REPLICA), promised, A)
    second, _ = decide(replace(obs(fs_view(None, B, C), REPLICA), now=NOW + 1), memory, A)
    assert first.actions == () and second.actions == ()
    assert "promised x" in second.reason


def test_a_refused_request_promises_nothing() -> None:
    refusal, memory = answer_x(PRIMARY, NOW)
    assert refusal == "this member runs a primary"
    assert memory == Memory()


def test_once_its_promise_expired_the_member_races_again() -> None:
    promised = Memory(promised_to=MemberName("x"), promised_until=NOW - 0.1)
    decision, _ = decide(obs(fs_view(None, B, C), REPLICA), promised, A)
    assert kinds(decision) == [AcquireLeader, Promote]


def test_a_member_the_failsafe_record_does_not_name_never_takes_over() -> None:
    record = FailsafeRecord(leader=MemberName("x"), members=PEERS, version="3")
    decision, _ = decide(obs(fs_view(None, B, C, record=record), REPLICA), Memory(), A)
    assert decision.actions == ()
    assert "not named in the failsafe record" in decision.reason


def test_the_record_binds_candidates_even_with_the_mode_switched_off() -> None:
    record = FailsafeRecord(leader=MemberName("x"), members=PEERS, version="3")
    decision, _ = decide(obs(fs_view(None, B, C, record=record, mode=False), REPLICA), Memory(), A)
    assert decision.actions == ()


def test_a_freshly_started_agent_waits_one_ttl_in_failsafe_mode() -> None:
    decision, _ = decide(obs(fs_view(None, B, C), REPLICA, started_at=NOW - 1), Memory(), A)
    assert decision.actions == ()
    assert "just started" in decision.reason
    later, _ = decide(obs(fs_view(None, B, C), REPLICA, started_at=NOW - TTL), Memory(), A)
    assert kinds(later) == [AcquireLeader, Promote]


def test_without_failsafe_a_fresh_agent_races_at_once() -> None:
    ob = obs(fs_view(None, B, C, record=None, mode=False), REPLICA, started_at=NOW - 1)
    decision, _ = decide(ob, Memory(), A)
    assert kinds(decision) == [AcquireLeader, Promote]


# --------------------------------------------------------------------------- properties

LOCALS = st.sampled_from([PRIMARY, REPLICA])
RECORDS = st.sampled_from(
    [
        RECORD_A,
        None,
        FailsafeRecord(leader=MemberName("x"), members=PEERS, version="5"),
        FailsafeRecord(leader=MemberName("x"), members=PEERS[1:], version="6"),
    ]
)


@st.composite
def steps(
    draw: st.DrawFn,
) -> tuple[str | None, bool, LocalState, float, Result, float | None, object]:
    return (
        draw(st.sampled_from([None, "a", "b"])),  # leader record
        draw(st.booleans()),  # DCS readable this cycle
        draw(LOCALS),
        draw(st.floats(min_value=0.0, max_value=6.0)),  # time passing
        draw(st.sampled_from(list(Result))),  # how the actions fare
        draw(st.one_of(st.none(), st.floats(min_value=-5.0, max_value=10.0))),  # promise
        draw(RECORDS),
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(steps(), min_size=1, max_size=25))
def test_no_sequence_keeps_a_primary_past_every_deadline_or_races_against_a_promise(
    sequence: list[tuple[str | None, bool, LocalState, float, Result, float | None, object]],
) -> None:
    """Tracked outside decide(): the send time of the last lease write and of the last round
    every member accepted. A primary that decide() lets go on writing (no Demote/Stop first)
    is within one of those deadlines or is taking the lease in this very decision; a member
    never races for a free lease while promised, nor when a standing failsafe record does not
    name it. Each decision's outcomes are fed back by the executor's own stop rules
    (`outcomes_of`)."""
    memory = Memory()
    now = NOW
    last_lease: float | None = None
    last_round: float | None = None
    for leader, readable, local, advance, fate, promise, record in sequence:
        now += advance
        assert record is None or isinstance(record, FailsafeRecord)
        cluster = (
            fs_view(
                leader,
                ME_PRIMARY if leader == "a" else member("a"),
                member("b", Role.PRIMARY, PgState.RUNNING) if leader == "b" else B,
                C,
                record=record,
            )
            if readable
            else None
        )
        promised = None if promise is None else now + promise
        # The promise as the API leaves it in Memory between cycles (`answer_failsafe`).
        memory = replace(
            memory,
            promised_until=promised,
            promised_to=MemberName("x") if promised is not None else None,
        )
        ob = Observation(now=now, wall_now=1.7e9, cluster=cluster, local=local)
        decision, memory = decide(ob, memory, A)
        actions = list(decision.actions)
        sent = [t for t in (last_lease, last_round) if t is not None]
        within = bool(sent) and now < A.timing.fence_deadline(max(sent))
        if local.is_primary and not (actions and isinstance(actions[0], Demote | StopPostgres)):
            # With the DCS readable, the lease write comes first (the executor stops at a
            # failed one); with it unreachable, nothing but a deadline keeps us primary.
            taking = cluster is not None and any(
                isinstance(a, AcquireLeader | RenewLeader) for a in actions
            )
            assert within or taking, (decision, memory, ob)
            if cluster is not None and cluster.leader is not None and cluster.leader.name != "a":
                raise AssertionError(f"primary kept under another leader: {decision}")
        free = cluster is not None and cluster.leader is None
        if free and any(isinstance(a, AcquireLeader) for a in actions) and not local.is_primary:
            # Racing for a free lease (re-taking our own record is not a race).
            assert promised is None or now >= promised, decision
            if cluster is not None and cluster.failsafe is not None:
                fs = cluster.failsafe
                assert fs.leader == "a" or "a" in fs.names(), decision
        outcomes = outcomes_of(decision, fate, now)
        # A promotion planned after a lease write ran only once the write succeeded.
        assert promotes_unleased(outcomes) is None or within, (decision, outcomes)
        for outcome in outcomes:
            memory = record_outcome(memory, outcome, A)
            action = outcome.action
            if isinstance(action, ConfirmFailsafe) and outcome.ok:
                last_round = now
            unknown = isinstance(action, RenewLeader) and outcome.result is Result.UNREACHABLE
            if isinstance(action, AcquireLeader | RenewLeader) and not unknown:
                # A renewal that did not reach the DCS leaves the last accepted write standing.
                last_lease = now if outcome.ok else None
