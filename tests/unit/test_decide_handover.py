"""decide(): hand-over on shutdown and switchover, named candidates, a hung PostgreSQL.

Issue 10, items 1 and 1b: a leader hands over only to a member that streams from it caught
up (serving meanwhile), a failed hand-over names nobody, a named candidate never skips the
WAL check, and a leader whose PostgreSQL does not answer kills it before the lease can go.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.actions import (
    AcquireLeader,
    ClearSwitchover,
    Exit,
    HandOver,
    Promote,
    PromoteReason,
    ReleaseLeader,
    RenewLeader,
    Rewind,
    StartPostgres,
    StopMode,
    StopPostgres,
)
from agent.decide import Memory, Observation, Outcome, Result, decide, record_outcome
from agent.decide.member import IDLE_POSTMASTER_S
from agent.model import HistoryEntry, LocalState, MemberName, PgState, Role, SwitchoverRequest
from tests.unit.test_decide import (
    CRASHED_PRIMARY,
    LEASED,
    ME_PRIMARY,
    NOW,
    PRIMARY,
    REPLICA,
    STREAMED_PRIMARY,
    TIMING,
    A,
    B,
    C,
    kinds,
    member,
    obs,
    streamed_by,
    view,
)

MAX_LAG = A.ha.maximum_lag_on_failover_bytes


def _request(
    leader: str | None, candidate: str | None, handover_lsn: int | None = None
) -> SwitchoverRequest:
    return SwitchoverRequest(
        leader=MemberName(leader) if leader else None,
        candidate=MemberName(candidate) if candidate else None,
        handover_lsn=handover_lsn,
        version="9",
    )


# --------------------------------------------------------------------------- shutdown


def test_shutdown_hands_over_only_to_a_member_streaming_from_us() -> None:
    # c streams from us caught up; b (say, still re-pointing) does not appear in
    # pg_stat_replication: c is the candidate although b's record is as good.
    decision, _ = decide(
        obs(view("a", ME_PRIMARY, B, C), streamed_by("c"), shutting_down=True), LEASED, A
    )
    assert decision.actions == (
        RenewLeader(),
        HandOver(candidate=MemberName("c"), shutting_down=True),
    )


def test_shutdown_keeps_serving_while_no_candidate_streams_caught_up() -> None:
    lagging = streamed_by("b", "c", lsn=1000 - MAX_LAG - 1)
    decision, memory = decide(
        obs(view("a", ME_PRIMARY, B, C), lagging, shutting_down=True), LEASED, A
    )
    assert decision.actions == (RenewLeader(),)
    assert memory.handover_wait_since == NOW


def test_shutdown_releases_naming_nobody_when_no_candidate_catches_up_in_time() -> None:
    since = NOW - TIMING.switchover_timeout_s
    memory = replace(LEASED, handover_wait_since=since, lease_sent_at=NOW - 0.5)
    own = _request("a", "b")
    cluster = view("a", ME_PRIMARY, B, C, switchover=own)
    decision, _ = decide(obs(cluster, PRIMARY, shutting_down=True), memory, A)
    assert decision.actions == (
        StopPostgres(mode=StopMode.FAST),
        ClearSwitchover(version="9"),
        ReleaseLeader(),
        Exit(),
    )


def test_a_failed_hand_over_on_shutdown_deletes_its_request_and_releases_naming_nobody() -> None:
    memory = replace(LEASED, failed_at=NOW - 0.1, shutdown_handover_failed=True)
    stopped = replace(CRASHED_PRIMARY, control=CRASHED_PRIMARY.control)
    cluster = view("a", ME_PRIMARY, B, C, switchover=_request("a", "b"))
    decision, _ = decide(obs(cluster, stopped, shutting_down=True), memory, A)
    assert decision.actions == (ClearSwitchover(version="9"), ReleaseLeader(), Exit())
    assert not any(isinstance(a, HandOver) for a in decision.actions)


def test_shutdown_after_a_completed_hand_over_leaves_the_request_to_the_candidate() -> None:
    memory = replace(LEASED, handed_over=True, lease_sent_at=None)
    cluster = view(None, member("a"), B, switchover=_request("a", "b", handover_lsn=1000))
    stopped = replace(CRASHED_PRIMARY, running=False)
    decision, _ = decide(obs(cluster, stopped, shutting_down=True), memory, A)
    assert decision.actions == (Exit(),)


def test_shutdown_waits_for_members_that_are_restarting() -> None:
    # b and c have no record (their agents are restarting) but we keep slots for them.
    decision, memory = decide(obs(view("a", ME_PRIMARY), PRIMARY, shutting_down=True), LEASED, A)
    assert decision.actions == (RenewLeader(),)
    assert "a member" in decision.reason and memory.handover_wait_since == NOW


def test_shutdown_kills_a_hung_server_before_releasing() -> None:
    hung = replace(CRASHED_PRIMARY, postmaster_pid=4242, unresponsive=True)
    decision, _ = decide(obs(view("a", ME_PRIMARY, B), hung, shutting_down=True), LEASED, A)
    assert decision.actions == (StopPostgres(mode=StopMode.KILL), ReleaseLeader(), Exit())


# --------------------------------------------------------------------------- switchover


def test_switchover_waits_serving_until_the_candidate_streams_from_us() -> None:
    cluster = view("a", ME_PRIMARY, B, C, switchover=_request("a", "b"))
    decision, memory = decide(obs(cluster, streamed_by("c")), LEASED, A)
    assert decision.actions == (RenewLeader(),)
    assert memory.handover_wait_since == NOW
    # It streams now: the hand-over starts.
    later = Observation(now=NOW + 1, wall_now=1.7e9, cluster=cluster, local=STREAMED_PRIMARY)
    decision, memory = decide(later, memory, A)
    assert decision.actions == (RenewLeader(), HandOver(candidate=MemberName("b")))
    assert memory.handover_wait_since is None


def test_switchover_is_cleared_when_the_candidate_never_streams_from_us() -> None:
    cluster = view("a", ME_PRIMARY, B, C, switchover=_request("a", "b"))
    memory = replace(LEASED, handover_wait_since=NOW - TIMING.switchover_timeout_s)
    decision, memory = decide(obs(cluster, PRIMARY), memory, A)
    assert decision.actions == (RenewLeader(), ClearSwitchover(version="9"))
    assert memory.handover_wait_since is None


# --------------------------------------------------------------------------- named candidates


def test_named_candidate_of_an_unfinished_hand_over_runs_the_normal_race() -> None:
    # b's hand-over was abandoned (no handover_lsn): we are named, but b was far ahead.
    memory = Memory(last_leader=MemberName("b"), last_leader_wal_lsn=1000 + MAX_LAG + 1)
    cluster = view(None, member("a"), C, switchover=_request("b", "a"))
    decision, _ = decide(obs(cluster, REPLICA), memory, A)
    assert not any(isinstance(a, Promote) for a in decision.actions)
    assert "lag" in decision.reason


def test_named_candidate_behind_the_hand_over_position_waits() -> None:
    cluster = view(None, member("a"), C, switchover=_request("b", "a", handover_lsn=1000))
    decision, _ = decide(obs(cluster, REPLICA), Memory(), A)  # REPLICA is at 1000
    assert decision.actions == ()


def test_named_candidate_past_the_hand_over_position_takes_the_lease() -> None:
    cluster = view(None, member("a"), C, switchover=_request("b", "a", handover_lsn=999))
    decision, _ = decide(obs(cluster, REPLICA), Memory(), A)
    assert decision.actions == (AcquireLeader(), Promote(reason=PromoteReason.SWITCHOVER))


def test_others_do_not_wait_for_the_candidate_of_an_unfinished_hand_over() -> None:
    cluster = view(None, member("a", lsn=1000), member("b", lsn=10), switchover=_request("c", "b"))
    decision, _ = decide(obs(cluster, REPLICA), Memory(), A)
    assert kinds(decision) == [AcquireLeader, Promote]


def test_others_wait_for_a_named_candidate_only_for_a_bounded_time() -> None:
    cluster = view(None, member("a"), B, switchover=_request("c", "b", handover_lsn=999))
    waiting = Memory(leaderless_since=NOW - 1)
    decision, _ = decide(obs(cluster, REPLICA), waiting, A)
    assert decision.actions == ()
    expired = Memory(leaderless_since=NOW - TIMING.ttl_s - TIMING.switchover_timeout_s)
    decision, _ = decide(obs(cluster, replace(REPLICA, wal_lsn=2000)), expired, A)
    assert kinds(decision) == [AcquireLeader, Promote]


def test_an_operator_failover_names_its_candidate_without_a_hand_over() -> None:
    cluster = view(None, member("a"), C, switchover=_request(None, "a"))
    decision, _ = decide(obs(cluster, REPLICA), Memory(), A)
    assert decision.actions == (AcquireLeader(), Promote(reason=PromoteReason.SWITCHOVER))


@st.composite
def _named_steps(draw: st.DrawFn) -> tuple[int, int | None, int | None, bool, str | None]:
    return (
        draw(st.integers(min_value=0, max_value=4 * MAX_LAG)),  # our position
        draw(st.none() | st.integers(min_value=0, max_value=4 * MAX_LAG)),  # hand-over lsn
        draw(st.none() | st.integers(min_value=0, max_value=4 * MAX_LAG)),  # leader's record
        draw(st.booleans()),  # the request names a leader (switchover) or not (failover)
        draw(st.sampled_from([None, "b", "c"])),  # who leads this cycle
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(_named_steps(), min_size=1, max_size=20))
def test_no_named_candidate_promotes_behind_the_last_known_leader_position(
    sequence: list[tuple[int, int | None, int | None, bool, str | None]],
) -> None:
    memory = Memory()
    now = NOW
    for position, handover, leader_lsn, has_leader, leader in sequence:
        now += 0.5
        request = _request("b" if has_leader else None, "a", handover)
        lead = (
            member("b", Role.PRIMARY, PgState.RUNNING, lsn=leader_lsn or 0)
            if leader is not None
            else member("b", lsn=leader_lsn or 0)
        )
        cluster = view(leader and "b", member("a", lsn=position), lead, switchover=request)
        local = replace(REPLICA, wal_lsn=position, receive_lsn=position, replay_lsn=position)
        ob = Observation(now=now, wall_now=1.7e9, cluster=cluster, local=local)
        before = memory
        decision, memory = decide(ob, memory, A)
        if any(isinstance(a, Promote) for a in decision.actions) and has_leader:
            known = [p for p in (before.last_leader_wal_lsn, handover) if p is not None]
            if leader is not None and leader_lsn is not None:
                known.append(leader_lsn)
            if handover is not None and now - (before.leaderless_since or now) < TIMING.ttl_s:
                assert position > handover, (decision, before, request)
            if known:
                assert max(known) - position <= MAX_LAG, (decision, before, request)
        for action in decision.actions:
            memory = record_outcome(
                memory, Outcome(action=action, result=Result.OK, sent_at=now), A
            )


def test_a_member_behind_a_recorded_timeline_switch_never_races() -> None:
    # The DCS history says timeline 2 ended: the leader that died was on 3 at least. A member
    # still on timeline 1 (its agent restarted, no memory of any leader position) must not
    # promote: it lacks that WAL and would pick timeline 2 again (sigterm-chain finding).
    history = (
        HistoryEntry(
            timeline=1, switch_lsn=900, reason="switchover", at=1.0, new_leader=MemberName("b")
        ),
        HistoryEntry(
            timeline=2, switch_lsn=950, reason="switchover", at=2.0, new_leader=MemberName("c")
        ),
    )
    cluster = view(None, member("a"), history=history)
    decision, _ = decide(obs(cluster, REPLICA), Memory(), A)  # REPLICA is on timeline 1
    assert decision.actions == () and "timeline" in decision.reason
    on_three = replace(REPLICA, timeline=3)
    decision, _ = decide(obs(cluster, on_three), Memory(), A)
    assert kinds(decision) == [AcquireLeader, Promote]
    forced = view(None, member("a"), history=history, switchover=_request(None, "a"))
    decision, _ = decide(obs(forced, REPLICA), Memory(), A)
    assert decision.actions == ()


# --------------------------------------------------------------------------- hung PostgreSQL

HUNG = replace(CRASHED_PRIMARY, postmaster_pid=4242, unresponsive=True)
STARTING = replace(CRASHED_PRIMARY, postmaster_pid=4242)


def test_a_leader_waits_a_bounded_time_on_a_server_that_does_not_answer() -> None:
    decision, memory = decide(obs(view("a", ME_PRIMARY, B), HUNG), LEASED, A)
    assert decision.actions == (RenewLeader(),)
    assert memory.pg_hung_since == NOW


def test_a_leader_kills_its_hung_server_after_postgres_unresponsive_s() -> None:
    memory = replace(LEASED, pg_hung_since=NOW - TIMING.postgres_unresponsive_s)
    decision, memory = decide(obs(view("a", ME_PRIMARY, B), HUNG), memory, A)
    assert decision.actions == (StopPostgres(mode=StopMode.KILL), RenewLeader())


def test_a_leader_never_releases_the_lease_while_its_server_process_exists() -> None:
    for local in (HUNG, STARTING):
        memory = replace(
            LEASED, pg_down_since=NOW - TIMING.primary_start_timeout_s, pg_hung_since=NOW
        )
        decision, _ = decide(obs(view("a", ME_PRIMARY, B), local), memory, A)
        assert decision.actions == (StopPostgres(mode=StopMode.KILL), ReleaseLeader())


def test_a_leader_does_not_restart_a_server_that_is_still_starting() -> None:
    decision, _ = decide(obs(view("a", ME_PRIMARY, B), STARTING), LEASED, A)
    assert decision.actions == (RenewLeader(),)


def test_a_killed_server_is_restarted_in_place() -> None:
    memory = replace(LEASED, pg_down_since=NOW - 1, pg_hung_since=NOW - 1)
    decision, memory = decide(obs(view("a", ME_PRIMARY, B), CRASHED_PRIMARY), memory, A)
    assert decision.actions == (RenewLeader(), StartPostgres(upstream=None, as_primary=True))
    assert memory.pg_hung_since is None


def test_a_former_primary_that_does_not_answer_is_killed_when_another_member_leads() -> None:
    leader = member("b", Role.PRIMARY, PgState.RUNNING)
    decision, _ = decide(obs(view("b", member("a"), leader), HUNG), Memory(), A)
    assert decision.actions == (StopPostgres(mode=StopMode.KILL),)
    decision, _ = decide(obs(view(None, member("a"), B), HUNG), Memory(), A)
    assert decision.actions == (StopPostgres(mode=StopMode.KILL),)


def test_a_hung_replica_that_never_was_a_primary_is_left_alone_by_followers() -> None:
    hung_standby = LocalState(
        data_dir_initialized=True, running=False, postmaster_pid=7, unresponsive=True
    )
    leader = member("b", Role.PRIMARY, PgState.RUNNING)
    decision, _ = decide(obs(view("b", member("a"), leader), hung_standby), Memory(), A)
    assert StopPostgres(mode=StopMode.KILL) not in decision.actions


# A standby's postmaster that refuses connections with no startup process (PostgreSQL 18 after
# its startup process PANICked in crash recovery on a full disk: it never exits by itself).
IDLE_STANDBY = LocalState(
    data_dir_initialized=True, running=False, postmaster_pid=7, postmaster_idle=True
)
RECOVERING_STANDBY = replace(IDLE_STANDBY, postmaster_idle=False)


def _cycles(local: LocalState, seconds: float, cluster_leader: str | None = "b") -> list[object]:
    """decide() once a second for `seconds` on the same local state; every cycle's actions."""
    leader = member("b", Role.PRIMARY, PgState.RUNNING)
    memory = Memory()
    seen: list[object] = []
    for tick in range(int(seconds) + 1):
        observed = replace(obs(view(cluster_leader, member("a"), leader), local), now=NOW + tick)
        decision, memory = decide(observed, memory, A)
        seen.append(decision.actions)
    return seen


def test_a_standby_postmaster_idle_past_the_bound_is_stopped_to_be_started_again() -> None:
    for leader in ("b", None):
        seen = _cycles(IDLE_STANDBY, IDLE_POSTMASTER_S, cluster_leader=leader)
        assert all(actions == () for actions in seen[:-1]), seen
        assert seen[-1] == (StopPostgres(mode=StopMode.IMMEDIATE),), (leader, seen[-1])


def test_a_standby_postmaster_that_is_still_recovering_is_waited_for_however_long() -> None:
    seen = _cycles(RECOVERING_STANDBY, 10 * IDLE_POSTMASTER_S)
    assert all(actions == () for actions in seen), [a for a in seen if a]


def test_an_idle_stretch_that_ended_does_not_count_towards_the_next() -> None:
    leader = member("b", Role.PRIMARY, PgState.RUNNING)
    memory = Memory()
    for tick, local in enumerate([IDLE_STANDBY] * 10 + [REPLICA] + [IDLE_STANDBY] * 10):
        decision, memory = decide(
            replace(obs(view("b", member("a"), leader), local), now=NOW + tick), memory, A
        )
        assert StopPostgres(mode=StopMode.IMMEDIATE) not in decision.actions, tick


# --------------------------------------------------------------------------- rewind


def test_a_rewind_whose_source_was_unreachable_is_retried_not_replaced_by_a_clone() -> None:
    rewind = Rewind(source=MemberName("b"))
    memory = record_outcome(
        Memory(), Outcome(action=rewind, result=Result.UNREACHABLE, sent_at=NOW), A
    )
    assert memory.rewind_failures == 0 and memory.failed_at == NOW
    memory = record_outcome(Memory(), Outcome(action=rewind, result=Result.LOST, sent_at=NOW), A)
    assert memory.rewind_failures == 1
