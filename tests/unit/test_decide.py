"""decide(): one table row per branch, and property tests of the safety rules.

No I/O, no clock: observations are built by hand, time is a number.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.actions import (
    AcquireLeader,
    Bootstrap,
    ClaimInitialize,
    ClearSwitchover,
    Clone,
    Decision,
    Demote,
    EnsureSlots,
    Exit,
    Follow,
    HandOver,
    Promote,
    PromoteReason,
    ReleaseLeader,
    RenewLeader,
    Rewind,
    SetInitialize,
    StartPostgres,
    StopMode,
    StopPostgres,
)
from agent.callback_settings import CallbackSettings
from agent.config import (
    DcsKind,
    DcsSettings,
    EtcdSettings,
    PostgresSettings,
    Settings,
    Tags,
    Timing,
)
from agent.decide import (
    SLOT_GRACE_S,
    Memory,
    Observation,
    Outcome,
    PeerStatus,
    Pending,
    Result,
    decide,
    record_outcome,
)
from agent.model import (
    ClusterView,
    ControlData,
    DynamicConfig,
    HistoryEntry,
    LeaderPosition,
    LeaderRecord,
    LocalRequestKind,
    LocalState,
    Member,
    MemberName,
    MemberTags,
    PgState,
    ReplicationRow,
    Role,
    StandbySyncState,
    SwitchoverRequest,
    WalSenderState,
)
from tests.unit.fakes.replay import outcomes_of, promotes_unleased

NOW = 1000.0
TIMING = Timing(ttl_s=10, loop_wait_s=2, retry_timeout_s=3, fence_margin_s=2)


def make_settings(name: str = "a", **tags: object) -> Settings:
    return Settings(
        name=name,
        cluster="c",
        run_dir="/run/x",
        dcs=DcsSettings(kind=DcsKind.ETCD, etcd=EtcdSettings(endpoints=("http://127.0.0.1:1",))),
        postgresql=PostgresSettings(data_dir="/data"),
        timing=TIMING,
        tags=Tags(**tags),  # type: ignore[arg-type]
    )


A = make_settings("a")


def member(
    name: str,
    role: Role = Role.REPLICA,
    state: PgState = PgState.STREAMING,
    lsn: int = 1000,
    timeline: int = 1,
    **tags: object,
) -> Member:
    return Member(
        name=MemberName(name),
        role=role,
        state=state,
        api_url=f"http://{name}:8008",
        host=name,
        port=5432,
        timeline=timeline,
        wal_lsn=lsn,
        replay_lsn=lsn,
        system_id="42",
        tags=MemberTags(**tags),  # type: ignore[arg-type]
    )


def view(
    leader: str | None,
    *members: Member,
    switchover: SwitchoverRequest | None = None,
    paused: bool = False,
    history: tuple[HistoryEntry, ...] = (),
    position: LeaderPosition | bool | None = True,
) -> ClusterView:
    """`position`: the DCS `position` record; True (default): the leader's, at the position
    PRIMARY has (so that a leader has nothing to write), none when nobody leads."""
    if position is True:
        position = (
            LeaderPosition(leader=MemberName(leader), timeline=1, wal_lsn=1000, version="9")
            if leader
            else None
        )
    return ClusterView(
        initialize="42",
        leader=LeaderRecord(name=MemberName(leader), version="7") if leader else None,
        members=members,
        switchover=switchover,
        config=DynamicConfig(paused=paused),
        history=history,
        position=position or None,
        position_version=position.version if isinstance(position, LeaderPosition) else "",
    )


PRIMARY = LocalState(
    data_dir_initialized=True,
    running=True,
    in_recovery=False,
    system_id="42",
    timeline=1,
    wal_lsn=1000,
)
REPLICA = LocalState(
    data_dir_initialized=True,
    running=True,
    in_recovery=True,
    system_id="42",
    timeline=1,
    wal_lsn=1000,
    receive_lsn=1000,
    replay_lsn=1000,
    streaming=True,
)
STOPPED_REPLICA = LocalState(
    data_dir_initialized=True,
    running=False,
    control=ControlData(
        system_id="42",
        cluster_state="shut down in recovery",
        timeline=1,
        checkpoint_lsn=900,
        min_recovery_end_lsn=1000,
    ),
)
CRASHED_PRIMARY = LocalState(
    data_dir_initialized=True,
    running=False,
    control=ControlData(
        system_id="42",
        cluster_state="in production",
        timeline=1,
        checkpoint_lsn=900,
        min_recovery_end_lsn=None,
    ),
)
EMPTY = LocalState(data_dir_initialized=False, running=False)
# Data directories of another system than the cluster's "42": the member refuses to join.
FOREIGN_STOPPED = LocalState(
    data_dir_initialized=True,
    running=False,
    control=ControlData(
        system_id="99",
        cluster_state="shut down",
        timeline=1,
        checkpoint_lsn=900,
        min_recovery_end_lsn=None,
    ),
)
FOREIGN_REPLICA = replace(REPLICA, system_id="99")
FOREIGN_PRIMARY = replace(PRIMARY, system_id="99")


def streamed_by(*names: str, lsn: int = 1000) -> LocalState:
    """Our primary, with `names` streaming from it (pg_stat_replication) flushed to `lsn`."""
    rows = tuple(
        ReplicationRow(
            application_name=n,
            state=WalSenderState.STREAMING,
            sync_state=StandbySyncState.ASYNC,
            sent_lsn=lsn,
            write_lsn=lsn,
            flush_lsn=lsn,
            replay_lsn=lsn,
        )
        for n in names
    )
    return replace(PRIMARY, replication=rows)


STREAMED_PRIMARY = streamed_by("b", "c")

LEASED = Memory(lease_sent_at=NOW - 1, slots=(MemberName("b"), MemberName("c")))


def obs(cluster: ClusterView | None, local: LocalState, **kw: object) -> Observation:
    return Observation(now=NOW, wall_now=1.7e9, cluster=cluster, local=local, **kw)  # type: ignore[arg-type]


def kinds(decision: Decision) -> list[type]:
    return [type(a) for a in decision.actions]


B, C = member("b"), member("c")
ME_PRIMARY = member("a", Role.PRIMARY, PgState.RUNNING)


# --------------------------------------------------------------------------- leader


def test_leader_renews_its_lease_and_does_nothing_else() -> None:
    decision, _ = decide(obs(view("a", ME_PRIMARY, B, C), PRIMARY), LEASED, A)
    assert kinds(decision) == [RenewLeader]


def test_restarted_leader_takes_its_own_record_back_before_anything_else() -> None:
    decision, _ = decide(obs(view("a", ME_PRIMARY, B, C), PRIMARY), Memory(), A)
    assert kinds(decision)[0] is AcquireLeader


def test_leader_creates_slots_for_the_members_it_does_not_have_yet() -> None:
    memory = replace(LEASED, slots=(MemberName("b"),))
    decision, _ = decide(obs(view("a", ME_PRIMARY, B, C), PRIMARY), memory, A)
    assert decision.actions == (
        RenewLeader(),
        EnsureSlots(names=(MemberName("b"), MemberName("c"))),
    )


def test_a_departed_members_slot_is_kept_through_the_grace_period_then_dropped() -> None:
    decision, memory = decide(obs(view("a", ME_PRIMARY, B), PRIMARY), LEASED, A)
    assert decision.actions == (RenewLeader(),)  # c is gone, its slot kept for now
    assert memory.slots_absent_since == ((MemberName("c"), NOW),)
    later = replace(obs(view("a", ME_PRIMARY, B), PRIMARY), now=NOW + SLOT_GRACE_S)
    memory = replace(memory, lease_sent_at=NOW + SLOT_GRACE_S - 1)
    decision, memory = decide(later, memory, A)
    assert EnsureSlots(names=(MemberName("b"),), drop=(MemberName("c"),)) in decision.actions
    assert memory.slots_absent_since == ()


def test_a_member_that_comes_back_within_the_grace_keeps_its_slot() -> None:
    memory = replace(LEASED, slots_absent_since=((MemberName("c"), NOW - 10),))
    decision, memory = decide(obs(view("a", ME_PRIMARY, B, C), PRIMARY), memory, A)
    assert decision.actions == (RenewLeader(),)
    assert memory.slots_absent_since == ()


def test_primary_fences_itself_once_its_deadline_has_passed() -> None:
    memory = Memory(lease_sent_at=NOW - TIMING.ttl_s + TIMING.fence_margin_s)  # deadline == now
    decision, _ = decide(obs(view("a", ME_PRIMARY, B), PRIMARY), memory, A)
    assert decision.actions == (Demote(mode=StopMode.FAST, reason="fence deadline passed"),)


def test_leader_restarts_a_crashed_postgres_in_place_while_holding_the_lease() -> None:
    decision, memory = decide(obs(view("a", ME_PRIMARY, B), CRASHED_PRIMARY), LEASED, A)
    assert decision.actions == (RenewLeader(), StartPostgres(upstream=None, as_primary=True))
    assert memory.pg_down_since == NOW


def test_leader_releases_the_lease_when_postgres_stays_down_past_primary_start_timeout() -> None:
    memory = replace(LEASED, pg_down_since=NOW - TIMING.primary_start_timeout_s)
    decision, memory = decide(obs(view("a", ME_PRIMARY, B), CRASHED_PRIMARY), memory, A)
    assert decision.actions == (ReleaseLeader(),)
    memory = record_outcome(
        memory, Outcome(action=ReleaseLeader(), result=Result.OK, sent_at=NOW), A
    )
    assert memory.lease_sent_at is None and memory.pg_down_since is None


def test_leader_whose_postgres_is_a_standby_promotes_it() -> None:
    decision, _ = decide(obs(view("a", member("a"), B), REPLICA), LEASED, A)
    assert kinds(decision) == [RenewLeader, Promote]


def test_switchover_request_makes_the_leader_hand_over_to_the_named_candidate() -> None:
    request = SwitchoverRequest(leader=MemberName("a"), candidate=MemberName("c"), version="3")
    cluster = view("a", ME_PRIMARY, B, C, switchover=request)
    decision, _ = decide(obs(cluster, STREAMED_PRIMARY), LEASED, A)
    assert decision.actions == (RenewLeader(), HandOver(candidate=MemberName("c")))


def test_switchover_without_candidate_picks_the_most_advanced_eligible_member() -> None:
    request = SwitchoverRequest(leader=MemberName("a"), candidate=None, version="3")
    cluster = view("a", ME_PRIMARY, member("b", lsn=900), member("c", lsn=1000), switchover=request)
    decision, _ = decide(obs(cluster, STREAMED_PRIMARY), LEASED, A)
    assert HandOver(candidate=MemberName("c")) in decision.actions


def test_scheduled_switchover_waits_for_its_time() -> None:
    request = SwitchoverRequest(
        leader=MemberName("a"), candidate=MemberName("b"), scheduled_at=2e9, version="3"
    )
    decision, _ = decide(obs(view("a", ME_PRIMARY, B, C, switchover=request), PRIMARY), LEASED, A)
    assert kinds(decision) == [RenewLeader]


def test_switchover_to_a_lagging_candidate_is_cleared_not_executed() -> None:
    request = SwitchoverRequest(leader=MemberName("a"), candidate=MemberName("b"), version="3")
    lagging = member("b", lsn=0)
    local = replace(PRIMARY, wal_lsn=10 * 1024 * 1024)
    memory = replace(LEASED, slots=(MemberName("b"),))
    here = LeaderPosition(leader=MemberName("a"), timeline=1, wal_lsn=10 * 1024 * 1024)
    cluster = view("a", ME_PRIMARY, lagging, switchover=request, position=here)
    decision, _ = decide(obs(cluster, local), memory, A)
    assert decision.actions == (RenewLeader(), ClearSwitchover(version="3"))


def test_new_leader_clears_the_switchover_request_that_named_it() -> None:
    request = SwitchoverRequest(leader=MemberName("b"), candidate=MemberName("a"), version="3")
    decision, _ = decide(obs(view("a", ME_PRIMARY, B, switchover=request), PRIMARY), LEASED, A)
    assert ClearSwitchover(version="3") in decision.actions


def test_leader_keeps_renewing_while_a_long_action_runs() -> None:
    pending = Pending(action=HandOver(candidate=MemberName("b")), started_at=NOW - 1)
    decision, _ = decide(obs(view("a", ME_PRIMARY, B), PRIMARY, pending=pending), LEASED, A)
    assert decision.actions == (RenewLeader(),)


# --------------------------------------------------------------------------- replicas


def test_replica_that_is_healthiest_races_for_the_lease_and_promotes() -> None:
    decision, _ = decide(obs(view(None, member("a"), member("b", lsn=900)), REPLICA), Memory(), A)
    assert decision.actions == (AcquireLeader(), Promote(reason=PromoteReason.FAILOVER))


def test_replica_does_not_race_when_a_peer_has_more_wal() -> None:
    peers = (
        PeerStatus(
            name=MemberName("b"), reachable=True, role=Role.REPLICA, timeline=1, wal_lsn=2000
        ),
    )
    decision, _ = decide(obs(view(None, member("a"), B), REPLICA, peers=peers), Memory(), A)
    assert decision.actions == ()
    assert "b is healthier" in decision.reason


def test_fresh_peer_answers_win_over_stale_dcs_records() -> None:
    stale_b = member("b", lsn=5000)  # its record says ahead, but it answers behind
    peers = (
        PeerStatus(
            name=MemberName("b"), reachable=True, role=Role.REPLICA, timeline=1, wal_lsn=500
        ),
    )
    decision, _ = decide(obs(view(None, member("a"), stale_b), REPLICA, peers=peers), Memory(), A)
    assert kinds(decision) == [AcquireLeader, Promote]


def test_unreachable_peers_do_not_block_the_race() -> None:
    peers = (PeerStatus(name=MemberName("b"), reachable=False),)
    decision, _ = decide(obs(view(None, member("a"), B), REPLICA, peers=peers), Memory(), A)
    assert kinds(decision) == [AcquireLeader, Promote]


def test_equal_wal_is_decided_by_failover_priority_then_name() -> None:
    peers = (
        PeerStatus(
            name=MemberName("b"),
            reachable=True,
            role=Role.REPLICA,
            timeline=1,
            wal_lsn=1000,
            failover_priority=5,
        ),
    )
    decision, _ = decide(obs(view(None, member("a"), B), REPLICA, peers=peers), Memory(), A)
    assert decision.actions == ()
    peers = (
        PeerStatus(
            name=MemberName("b"), reachable=True, role=Role.REPLICA, timeline=1, wal_lsn=1000
        ),
    )
    decision, _ = decide(obs(view(None, member("a"), B), REPLICA, peers=peers), Memory(), A)
    assert kinds(decision) == [AcquireLeader, Promote]  # "a" < "b"


def test_lagging_member_stays_out_of_the_race() -> None:
    memory = Memory(last_leader_wal_lsn=1000 + 2 * 1024 * 1024)
    decision, _ = decide(obs(view(None, member("a")), REPLICA), memory, A)
    assert decision.actions == ()
    assert "maximum_lag_on_failover_bytes" in decision.reason


def test_nofailover_member_never_races() -> None:
    decision, _ = decide(
        obs(view(None, member("a")), REPLICA), Memory(), make_settings("a", nofailover=True)
    )
    assert decision.actions == ()


def test_nofailover_peer_does_not_count_as_a_rival() -> None:
    peers = (
        PeerStatus(
            name=MemberName("b"),
            reachable=True,
            role=Role.REPLICA,
            timeline=1,
            wal_lsn=9000,
            nofailover=True,
        ),
    )
    decision, _ = decide(obs(view(None, member("a"), B), REPLICA, peers=peers), Memory(), A)
    assert kinds(decision) == [AcquireLeader, Promote]


def test_paused_cluster_does_not_fail_over() -> None:
    decision, _ = decide(obs(view(None, member("a"), paused=True), REPLICA), Memory(), A)
    assert decision.actions == ()


def test_named_switchover_candidate_takes_the_lease_without_the_healthiest_check() -> None:
    request = SwitchoverRequest(
        leader=MemberName("b"), candidate=MemberName("a"), handover_lsn=999, version="3"
    )
    peers = (
        PeerStatus(
            name=MemberName("c"), reachable=True, role=Role.REPLICA, timeline=1, wal_lsn=5000
        ),
    )
    cluster = view(None, member("a"), C, switchover=request)
    decision, _ = decide(obs(cluster, REPLICA, peers=peers), Memory(), A)
    assert decision.actions == (AcquireLeader(), Promote(reason=PromoteReason.SWITCHOVER))


def test_others_leave_the_lease_to_a_healthy_named_candidate() -> None:
    request = SwitchoverRequest(
        leader=MemberName("c"), candidate=MemberName("b"), handover_lsn=999, version="3"
    )
    decision, _ = decide(obs(view(None, member("a"), B, switchover=request), REPLICA), Memory(), A)
    assert decision.actions == ()


def test_replica_follows_a_new_leader_without_restarting() -> None:
    memory = Memory(following=MemberName("c"))
    decision, _ = decide(
        obs(view("b", member("b", Role.PRIMARY, PgState.RUNNING)), REPLICA), memory, A
    )
    assert decision.actions == (Follow(leader=MemberName("b")),)


def test_replica_already_following_the_leader_does_nothing() -> None:
    memory = Memory(following=MemberName("b"))
    decision, _ = decide(
        obs(view("b", member("b", Role.PRIMARY, PgState.RUNNING)), REPLICA), memory, A
    )
    assert decision.actions == ()


def test_primary_that_sees_another_leader_demotes_at_once() -> None:
    decision, _ = decide(
        obs(view("b", member("b", Role.PRIMARY, PgState.RUNNING)), PRIMARY), LEASED, A
    )
    assert kinds(decision) == [Demote]
    assert decision.actions[0] == Demote(mode=StopMode.IMMEDIATE, reason="b holds the lease")


def test_primary_with_no_leader_record_demotes_at_once() -> None:
    decision, _ = decide(obs(view(None, ME_PRIMARY), PRIMARY), LEASED, A)
    assert kinds(decision) == [Demote]


def test_replica_restarts_its_dead_postgres_as_a_standby() -> None:
    decision, _ = decide(
        obs(view("b", member("b", Role.PRIMARY, PgState.RUNNING)), STOPPED_REPLICA), Memory(), A
    )
    assert decision.actions == (StartPostgres(upstream=MemberName("b")),)


# --------------------------------------------------------------------------- rejoin


NEW_LEADER = member("b", Role.PRIMARY, PgState.RUNNING, timeline=2)


def test_former_primary_is_rewound_before_it_follows_the_new_leader() -> None:
    decision, _ = decide(obs(view("b", NEW_LEADER), CRASHED_PRIMARY), Memory(), A)
    assert decision.actions == (Rewind(source=MemberName("b")),)


def test_former_primary_waits_for_the_new_leader_to_run_before_rewinding() -> None:
    starting = member("b", Role.REPLICA, PgState.RUNNING, timeline=1)
    decision, _ = decide(obs(view("b", starting), CRASHED_PRIMARY), Memory(), A)
    assert decision.actions == ()


def test_failed_rewind_falls_back_to_a_fresh_clone() -> None:
    memory = Memory(rewind_failures=1, failed_at=NOW - 60)
    decision, _ = decide(obs(view("b", NEW_LEADER), CRASHED_PRIMARY), memory, A)
    assert decision.actions == (Clone(source=MemberName("b"), clear_first=True),)


# A fresh base backup of the leader whose first start outlasted the start timeout: its
# control file is the leader's ("in production", timeline 2), its backup_label not read yet
# (the startup process syncs every file first). Chaos finding 21: taken for a former
# primary, it was re-cloned (rewind failed before) or rewound, again at each slow start.
FRESH_CLONE = replace(
    CRASHED_PRIMARY,
    control=replace(CRASHED_PRIMARY.control, timeline=2),  # type: ignore[type-var]
    backup_label=True,
)


def test_a_fresh_clone_still_starting_is_waited_for_not_rewound_or_cloned_again() -> None:
    starting = replace(FRESH_CLONE, postmaster_pid=1234)
    for memory in (Memory(), Memory(rewind_failures=1, failed_at=NOW - 60)):
        decision, _ = decide(obs(view("b", NEW_LEADER), starting), memory, A)
        assert decision.actions == (), decision.reason


def test_a_fresh_clone_that_is_not_running_is_started_as_a_standby() -> None:
    memory = Memory(rewind_failures=1, failed_at=NOW - 60)
    decision, _ = decide(obs(view("b", NEW_LEADER), FRESH_CLONE), memory, A)
    assert kinds(decision) == [StartPostgres], decision.reason


def test_replica_with_wal_past_the_fork_point_is_rewound_too() -> None:
    history = (
        HistoryEntry(
            timeline=1, switch_lsn=950, reason="failover", at=0, new_leader=MemberName("b")
        ),
    )
    decision, _ = decide(obs(view("b", NEW_LEADER, history=history), REPLICA), Memory(), A)
    assert decision.actions == (Rewind(source=MemberName("b")),)


def test_replica_stopped_after_it_replayed_into_the_new_timeline_just_follows() -> None:
    """A standby that followed the new leader and was stopped before its first restartpoint
    on the new timeline: the control file's checkpoint is still on timeline 1, its minimum
    recovery point (past the switch) on timeline 2. Not diverged: pg_rewind would fail on it
    ("could not find previous WAL record") and cost a re-clone."""
    history = (
        HistoryEntry(
            timeline=1, switch_lsn=950, reason="switchover", at=0, new_leader=MemberName("b")
        ),
    )
    control = STOPPED_REPLICA.control
    assert control is not None
    for min_recovery_timeline, expected in (
        (2, StartPostgres(upstream=MemberName("b"))),
        (1, Rewind(source=MemberName("b"))),  # its WAL past the fork is timeline 1's
    ):
        stopped = replace(
            STOPPED_REPLICA,
            control=replace(control, min_recovery_end_timeline=min_recovery_timeline),
        )
        decision, _ = decide(obs(view("b", NEW_LEADER, history=history), stopped), Memory(), A)
        assert decision.actions == (expected,)


def test_replica_behind_the_fork_point_just_follows() -> None:
    history = (
        HistoryEntry(
            timeline=1, switch_lsn=5000, reason="failover", at=0, new_leader=MemberName("b")
        ),
    )
    decision, _ = decide(obs(view("b", NEW_LEADER, history=history), REPLICA), Memory(), A)
    assert decision.actions == (Follow(leader=MemberName("b")),)


def test_crashed_former_primary_with_no_leader_starts_read_only_first() -> None:
    decision, _ = decide(obs(view(None, member("b")), CRASHED_PRIMARY), Memory(), A)
    assert decision.actions == (StartPostgres(upstream=None),)


# --------------------------------------------------------------------------- bootstrap


def test_first_member_of_an_empty_cluster_claims_it_and_bootstraps() -> None:
    decision, _ = decide(obs(ClusterView(), EMPTY), Memory(), A)
    assert decision.actions == (ClaimInitialize(), AcquireLeader(), Bootstrap())


def test_member_without_data_does_not_bootstrap_over_members_that_hold_data() -> None:
    # The DCS lost its records (wiped, a namespace re-created with the volumes kept): a new
    # cluster here would fork the existing one (restored from a backup it even has the same
    # system id, so its members would be rewound onto it). Wait for them to elect a leader.
    lost = ClusterView(members=(member("b"), member("c", Role.PRIMARY, PgState.RUNNING)))
    decision, _ = decide(obs(lost, EMPTY), Memory(), A)
    assert decision.actions == ()
    assert "hold data" in decision.reason
    empty_b = replace(member("b", Role.UNKNOWN, PgState.STOPPED), system_id=None)
    fresh = ClusterView(members=(empty_b,))
    decision, _ = decide(obs(fresh, EMPTY), Memory(), A)
    assert decision.actions == (ClaimInitialize(), AcquireLeader(), Bootstrap())


def test_leader_records_its_system_id_when_the_dcs_has_none() -> None:
    cluster = replace(view("a", ME_PRIMARY, B, C), initialize=None, initialize_version="")
    decision, _ = decide(obs(cluster, PRIMARY), LEASED, A)
    assert SetInitialize(system_id="42", expected_version=None) in decision.actions


def test_member_without_data_clones_from_the_running_leader() -> None:
    decision, _ = decide(
        obs(view("b", member("b", Role.PRIMARY, PgState.RUNNING)), EMPTY), Memory(), A
    )
    assert decision.actions == (Clone(source=MemberName("b")),)


def test_member_without_data_waits_while_the_leader_bootstraps() -> None:
    leader = member("b", Role.UNKNOWN, PgState.BOOTSTRAPPING)
    decision, _ = decide(obs(view("b", leader), EMPTY), Memory(), A)
    assert decision.actions == ()


def test_an_interrupted_copy_counts_as_no_data_and_a_postmaster_on_it_is_stopped() -> None:
    """What pg_basebackup or pg_rewind left when killed midway is never used: with no
    postmaster the member clones; one found running on it (started by hand) is stopped."""
    torn = LocalState(data_dir_initialized=False, running=False, copy_incomplete=True)
    decision, _ = decide(obs(view("b", NEW_LEADER), torn), Memory(), A)
    assert decision.actions == (Clone(source=MemberName("b")),), decision
    running = replace(torn, running=True, postmaster_pid=77)
    decision, _ = decide(obs(view("b", NEW_LEADER), running), Memory(), A)
    assert decision.actions == (StopPostgres(mode=StopMode.IMMEDIATE),), decision


def test_member_of_another_system_refuses_to_join() -> None:
    foreign = replace(REPLICA, system_id="99")
    decision, memory = decide(obs(view("b", NEW_LEADER), foreign), Memory(), A)
    assert decision.actions == ()
    assert memory.refused is not None and "99" in memory.refused


def test_a_member_that_refused_to_join_reclones_when_reinitialize_is_requested() -> None:
    """The refusal names reinitialize as the way out; a request made after it (the refusal
    is remembered) clones the leader, not only one made before the first refusal."""
    cluster = view("b", NEW_LEADER)
    _, memory = decide(obs(cluster, FOREIGN_STOPPED), Memory(), A)
    assert memory.refused is not None
    request = (LocalRequestKind.REINITIALIZE,)
    decision, _ = decide(obs(cluster, FOREIGN_STOPPED, local_requests=request), memory, A)
    assert decision.actions == (Clone(source=MemberName("b"), clear_first=True),), decision


def test_reinitialize_request_reclones_a_replica() -> None:
    decision, _ = decide(
        obs(view("b", NEW_LEADER), REPLICA, local_requests=(LocalRequestKind.REINITIALIZE,)),
        Memory(following=MemberName("b")),
        A,
    )
    assert decision.actions == (Clone(source=MemberName("b"), clear_first=True),)


# --------------------------------------------------------------------------- DCS outage


def test_primary_keeps_retrying_renewal_while_the_dcs_is_down_and_the_lease_is_valid() -> None:
    decision, _ = decide(obs(None, PRIMARY), LEASED, A)
    assert decision.actions == (RenewLeader(),)


def test_primary_fences_when_the_dcs_is_down_past_its_deadline() -> None:
    decision, _ = decide(obs(None, PRIMARY), Memory(lease_sent_at=NOW - 9), A)
    assert kinds(decision) == [Demote]


def test_replica_does_nothing_while_the_dcs_is_down() -> None:
    decision, _ = decide(obs(None, REPLICA), Memory(), A)
    assert decision.actions == ()


# --------------------------------------------------------------------------- shutdown


def test_leader_hands_over_on_shutdown() -> None:
    decision, _ = decide(
        obs(view("a", ME_PRIMARY, B, C), STREAMED_PRIMARY, shutting_down=True), LEASED, A
    )
    assert kinds(decision) == [RenewLeader, HandOver]


def test_leader_stops_and_releases_after_handing_over() -> None:
    memory = replace(LEASED, handed_over=True, lease_sent_at=None)
    stopped = replace(PRIMARY, running=False)
    decision, _ = decide(obs(view("b", B), stopped, shutting_down=True), memory, A)
    assert decision.actions == (Exit(),)


def test_leader_without_candidates_stops_postgres_before_releasing_on_shutdown() -> None:
    alone = replace(LEASED, slots=())  # no other member known: nobody to wait for
    decision, _ = decide(obs(view("a", ME_PRIMARY), PRIMARY, shutting_down=True), alone, A)
    assert decision.actions == (StopPostgres(mode=StopMode.FAST), ReleaseLeader(), Exit())


def test_replica_stops_on_shutdown() -> None:
    decision, _ = decide(obs(view("b", B), REPLICA, shutting_down=True), Memory(), A)
    assert decision.actions == (StopPostgres(mode=StopMode.FAST), Exit())


# --------------------------------------------------------------------------- outcomes


def test_a_successful_renewal_moves_the_lease_to_its_send_time() -> None:
    memory = record_outcome(LEASED, Outcome(action=RenewLeader(), result=Result.OK, sent_at=NOW), A)
    assert memory.lease_sent_at == NOW


def test_a_lost_renewal_drops_the_lease() -> None:
    memory = record_outcome(
        LEASED, Outcome(action=RenewLeader(), result=Result.LOST, sent_at=NOW), A
    )
    assert memory.lease_sent_at is None


def test_a_failed_rewind_is_remembered() -> None:
    action = Rewind(source=MemberName("b"))
    memory = record_outcome(Memory(), Outcome(action=action, result=Result.LOST, sent_at=NOW), A)
    assert memory.rewind_failures == 1


# --------------------------------------------------------------------------- properties

# A refusal lasts until a clone (Memory.refused): the foreign data directories are drawn
# rarely, so that most sequences also run long without one.
LOCALS = st.sampled_from(
    [PRIMARY, REPLICA, STOPPED_REPLICA, CRASHED_PRIMARY, EMPTY] * 6
    + [FOREIGN_STOPPED, FOREIGN_REPLICA, FOREIGN_PRIMARY]
)
LEADERS = st.sampled_from([None, "a", "b"])


OUTCOMES = st.sampled_from(list(Result))


@st.composite
def steps(draw: st.DrawFn) -> tuple[str | None, LocalState, float, bool, Result]:
    return (
        draw(LEADERS),
        draw(LOCALS),
        draw(st.floats(min_value=0.0, max_value=6.0)),
        draw(st.booleans()),  # DCS readable this cycle
        draw(OUTCOMES),  # how the decision's actions fare
    )


def _lease_deadline(memory_before: Memory) -> float | None:
    sent = memory_before.lease_sent_at
    return A.timing.fence_deadline(sent) if sent is not None else None


def _i_lead(ob: Observation) -> bool:
    return (
        ob.cluster is not None and ob.cluster.leader is not None and (ob.cluster.leader.name == "a")
    )


def _leading(memory_before: Memory, ob: Observation) -> bool:
    """Our leader record stands and our lease has not passed its deadline."""
    deadline = _lease_deadline(memory_before)
    return deadline is not None and ob.now < deadline and _i_lead(ob)


def _check_safety(decision: Decision, memory_before: Memory, ob: Observation) -> None:
    actions = list(decision.actions)
    deadline = _lease_deadline(memory_before)
    i_lead = _i_lead(ob)
    for index, action in enumerate(actions):
        earlier = actions[:index]
        acquired = any(isinstance(a, AcquireLeader | RenewLeader) for a in earlier)
        if isinstance(action, Promote) or (isinstance(action, StartPostgres) and action.as_primary):
            # Only ever after taking/renewing the lease in the same decision (the executor
            # stops at a failed one), or while a valid lease is held.
            assert acquired or _leading(memory_before, ob), (decision, memory_before)
    if ob.local.is_primary:
        others_lead = ob.cluster is not None and not i_lead
        past_deadline = deadline is not None and ob.now >= deadline
        if others_lead or past_deadline:
            assert actions and isinstance(actions[0], Demote | StopPostgres | RenewLeader), (
                decision,
                memory_before,
                ob.cluster,
            )
            if past_deadline or (ob.cluster is not None and ob.cluster.leader is not None):
                assert isinstance(actions[0], Demote), decision


def _check_leader_keeps_or_lets_go(decision: Decision, ob: Observation) -> None:
    """Named leader in a view we read, we renew (or take) the lease, release it, or stop our
    server: never none of them. On etcd the leader key shares the lease our member record's
    keepalives keep alive, so a leader that only stops renewing holds the key for good (a
    leader whose data directory was emptied kept every member waiting on it, and one whose
    data directory holds another system, refusing to join, did the same: issue 16)."""
    if not _i_lead(ob):
        return
    lets_go = (AcquireLeader, RenewLeader, ReleaseLeader, Demote, StopPostgres)
    assert any(isinstance(a, lets_go) for a in decision.actions), (decision, ob.local)


@settings(max_examples=400, deadline=None)
@given(st.lists(steps(), min_size=1, max_size=25))
def test_no_sequence_promotes_without_the_lease_or_writes_past_the_fence(
    sequence: list[tuple[str | None, LocalState, float, bool, Result]],
) -> None:
    """Each decision's outcomes are fed back by the executor's own stop rules
    (`outcomes_of`), and what ran is checked too: a promotion only after a lease write that
    succeeded in the same run, or under a lease held."""
    _replay(sequence, A)


A_PRE_PROMOTE = replace(A, callbacks=CallbackSettings(pre_promote="/bin/true"))


@settings(max_examples=300, deadline=None)
@given(st.lists(steps(), min_size=1, max_size=25))
def test_with_pre_promote_no_sequence_promotes_without_the_lease_or_writes_past_the_fence(
    sequence: list[tuple[str | None, LocalState, float, bool, Result]],
) -> None:
    """As above, with a `pre_promote` callback: the promotion waits for it (a long action of
    its own), in a later decision that renews the lease first."""
    _replay(sequence, A_PRE_PROMOTE)


def _replay(
    sequence: list[tuple[str | None, LocalState, float, bool, Result]], config: Settings
) -> None:
    memory = Memory()
    now = NOW
    for leader, local, advance, readable, fate in sequence:
        now += advance
        cluster = (
            view(
                leader,
                ME_PRIMARY if leader == "a" else member("a"),
                member("b", Role.PRIMARY, PgState.RUNNING),
            )
            if readable
            else None
        )
        ob = Observation(now=now, wall_now=1.7e9, cluster=cluster, local=local)
        before = memory
        decision, memory = decide(ob, memory, config)
        assert decision.reason, decision  # the ha_cycle event says why, every cycle
        _check_safety(decision, before, ob)
        _check_leader_keeps_or_lets_go(decision, ob)
        outcomes = outcomes_of(decision, fate, now)
        unleased = promotes_unleased(outcomes)
        assert unleased is None or _leading(before, ob), (decision, outcomes, before)
        for outcome in outcomes:
            memory = record_outcome(memory, outcome, config)


def test_leader_past_its_deadline_with_postgres_down_releases_at_once() -> None:
    """Chaos finding 25: a leader whose renewals no longer move its deadline (a frozen fencer
    that takes no ARM) stopped its primary at the deadline, then tried to restart it in place
    for primary_start_timeout_s while nobody could take over; past the deadline, with no
    server left, it hands the lease on at once."""
    memory = Memory(lease_sent_at=NOW - TIMING.ttl_s + TIMING.fence_margin_s)  # deadline == now
    decision, _ = decide(obs(view("a", ME_PRIMARY, B), CRASHED_PRIMARY), memory, A)
    assert decision.actions == (ReleaseLeader(),)
    # Before the deadline the same server is restarted in place, as ever.
    decision, _ = decide(obs(view("a", ME_PRIMARY, B), CRASHED_PRIMARY), LEASED, A)
    assert decision.actions == (RenewLeader(), StartPostgres(upstream=None, as_primary=True))
