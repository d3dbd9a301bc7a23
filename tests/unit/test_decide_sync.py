"""decide() in synchronous mode: the leader's ordering steps, failover eligibility under the
DCS `sync` record (R + W > N), and property tests of invariant 3 (DESIGN.md section 3)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.actions import (
    AcquireLeader,
    ClearSwitchover,
    HandOver,
    Promote,
    ReleaseLeader,
    RenewLeader,
    SetConfig,
    SetSyncRecord,
    SetSyncStandbyNames,
)
from agent.config import HaSettings
from agent.decide import (
    Memory,
    Outcome,
    PeerStatus,
    Result,
    decide,
    local_position,
    record_outcome,
    seed_config,
)
from agent.model import (
    ClusterView,
    DynamicConfig,
    LeaderRecord,
    LocalState,
    MemberName,
    PgState,
    ReplicationRow,
    Role,
    StandbySyncState,
    SwitchoverRequest,
    SyncMode,
    SyncRecord,
    SyncStandbys,
    WalSenderState,
)
from tests.unit.test_decide import (
    LEASED,
    ME_PRIMARY,
    NOW,
    PRIMARY,
    REPLICA,
    kinds,
    make_settings,
    member,
    obs,
    view,
)

A = make_settings("a")
B_ONLY = SyncStandbys(quorum=False, count=1, names=("b",))
C_ONLY = SyncStandbys(quorum=False, count=1, names=("c",))
ANY1_BC = SyncStandbys(quorum=True, count=1, names=("b", "c"))
NO_STANDBYS = SyncStandbys(quorum=False, count=0, names=())


def row(
    name: str,
    *,
    flush: int = 1000,
    sync_state: StandbySyncState = StandbySyncState.ASYNC,
    flush_lag_s: float | None = None,
) -> ReplicationRow:
    return ReplicationRow(
        application_name=name,
        state=WalSenderState.STREAMING,
        sync_state=sync_state,
        sent_lsn=flush,
        write_lsn=flush,
        flush_lsn=flush,
        replay_lsn=flush,
        flush_lag_s=flush_lag_s,
    )


def sync_view(
    leader: str | None,
    *members: object,
    mode: SyncMode = SyncMode.ON,
    k: int = 1,
    strict: bool = False,
    max_lag: int = -1,
    record: SyncRecord | None = None,
    switchover: SwitchoverRequest | None = None,
) -> ClusterView:
    base = view(leader, *members, switchover=switchover)  # type: ignore[arg-type]
    config = DynamicConfig(
        synchronous_mode=mode,
        synchronous_node_count=k,
        synchronous_mode_strict=strict,
        maximum_lag_on_syncnode_bytes=max_lag,
        version="3",
    )
    return replace(base, config=config, sync=record, sync_version=record.version if record else "")


def rec(leader: str, *members: str, quorum: int = 1) -> SyncRecord:
    return SyncRecord(
        leader=MemberName(leader),
        members=tuple(MemberName(m) for m in members),
        quorum=quorum,
        version="9",
    )


def primary(ssn: SyncStandbys, *rows: ReplicationRow, wal: int = 1000) -> LocalState:
    return replace(PRIMARY, sync_standbys=ssn, replication=rows, wal_lsn=wal)


B, C = member("b"), member("c")


def leader_step(cluster: ClusterView, local: LocalState, memory: Memory = LEASED) -> object:
    decision, _ = decide(obs(cluster, local), memory, A)
    steps = [a for a in decision.actions if isinstance(a, SetSyncRecord | SetSyncStandbyNames)]
    return steps[0] if steps else None


# --------------------------------------------------------------------------- leader: ordering


def test_adding_a_standby_writes_the_record_before_postgresql() -> None:
    step = leader_step(sync_view("a", ME_PRIMARY, B, C), primary(NO_STANDBYS, row("b"), row("c")))
    assert step == SetSyncRecord(record=replace(rec("a", "b"), version=""), expected_version=None)


def test_postgresql_is_changed_once_the_record_names_the_standby() -> None:
    cluster = sync_view("a", ME_PRIMARY, B, C, record=rec("a", "b"))
    step = leader_step(cluster, primary(NO_STANDBYS, row("b"), row("c")))
    assert step == SetSyncStandbyNames(standbys=B_ONLY)


def test_a_settled_set_needs_no_step() -> None:
    cluster = sync_view("a", ME_PRIMARY, B, C, record=rec("a", "b"))
    local = primary(B_ONLY, row("b", sync_state=StandbySyncState.SYNC), row("c"))
    _, memory = decide(obs(cluster, local), LEASED, A)
    assert leader_step(cluster, local, memory) is None


def test_swapping_a_standby_widens_the_record_first_then_changes_postgresql() -> None:
    # b went away: c is wanted. PostgreSQL still waits for b.
    cluster = sync_view("a", ME_PRIMARY, C, record=rec("a", "b"))
    step = leader_step(cluster, primary(B_ONLY, row("c")))
    assert isinstance(step, SetSyncRecord)
    assert set(step.record.members) == {"b", "c"} and step.record.quorum == 1
    widened = sync_view("a", ME_PRIMARY, C, record=rec("a", "b", "c"))
    assert leader_step(widened, primary(B_ONLY, row("c"))) == SetSyncStandbyNames(standbys=C_ONLY)


def test_the_record_narrows_only_after_the_new_standby_flushed_past_the_switch() -> None:
    cluster = sync_view("a", ME_PRIMARY, C, record=rec("a", "b", "c"))
    switched = primary(C_ONLY, row("c", flush=900, sync_state=StandbySyncState.SYNC), wal=1000)
    # First cycle with the new setting: notes the position, writes nothing.
    decision, memory = decide(obs(cluster, switched), LEASED, A)
    assert not any(isinstance(a, SetSyncRecord) for a in decision.actions)
    assert memory.sync_effective == (C_ONLY, 1000)
    # c has not flushed past 1000 yet: the record keeps b.
    assert leader_step(cluster, switched, memory) is None
    caught_up = primary(C_ONLY, row("c", flush=1000, sync_state=StandbySyncState.SYNC), wal=1100)
    step = leader_step(cluster, caught_up, memory)
    assert step == SetSyncRecord(record=replace(rec("a", "c"), version=""), expected_version="9")


def test_non_strict_mode_without_standbys_falls_back_postgresql_first_then_the_record() -> None:
    cluster = sync_view("a", ME_PRIMARY, record=rec("a", "b"))
    assert leader_step(cluster, primary(B_ONLY)) == SetSyncStandbyNames(standbys=NO_STANDBYS)
    async_local = primary(NO_STANDBYS)
    _, memory = decide(obs(cluster, async_local), LEASED, A)
    step = leader_step(cluster, async_local, memory)
    assert isinstance(step, SetSyncRecord)
    assert step.record.members == () and step.record.quorum == 0


def test_strict_mode_without_standbys_keeps_commits_waiting() -> None:
    cluster = sync_view("a", ME_PRIMARY, strict=True, record=rec("a", "b"))
    assert leader_step(cluster, primary(B_ONLY)) is None
    fresh = sync_view("a", ME_PRIMARY, strict=True)
    step = leader_step(fresh, primary(NO_STANDBYS))
    assert isinstance(step, SetSyncRecord) and step.record.quorum == 1


def test_quorum_mode_lists_every_eligible_standby_as_any_k() -> None:
    cluster = sync_view("a", ME_PRIMARY, B, C, mode=SyncMode.QUORUM, record=rec("a", "b", "c"))
    step = leader_step(cluster, primary(NO_STANDBYS, row("b"), row("c")))
    assert step == SetSyncStandbyNames(standbys=ANY1_BC)


def test_nosync_nofailover_and_priority_zero_members_are_never_synchronous() -> None:
    d, e, f = member("d", nosync=True), member("e", nofailover=True), member("f", sync_priority=0)
    cluster = sync_view("a", ME_PRIMARY, d, e, f, mode=SyncMode.QUORUM)
    local = primary(NO_STANDBYS, row("d"), row("e"), row("f"))
    assert leader_step(cluster, local) is None


def test_higher_sync_priority_is_preferred() -> None:
    b, c = member("b", sync_priority=1), member("c", sync_priority=5)
    cluster = sync_view("a", ME_PRIMARY, b, c, record=rec("a", "c"))
    step = leader_step(cluster, primary(NO_STANDBYS, row("b"), row("c")))
    assert step == SetSyncStandbyNames(standbys=C_ONLY)


def test_a_lagging_standby_is_swapped_out_when_another_is_available() -> None:
    cluster = sync_view("a", ME_PRIMARY, B, C, max_lag=100, record=rec("a", "b", "c"))
    local = primary(
        B_ONLY,
        row("b", flush=500, sync_state=StandbySyncState.SYNC),
        row("c", flush=1000),
        wal=1000,
    )
    assert leader_step(cluster, local) == SetSyncStandbyNames(standbys=C_ONLY)


def test_a_standby_that_flushes_slowly_is_swapped_out_the_record_first() -> None:
    # Finding 22: b streams and is caught up in bytes (commits wait for it, so little WAL is
    # written), but each flush takes 1.2 s; c is healthy. The record first names both (c may
    # hold commits once PostgreSQL waits for it), then PostgreSQL waits for c, then, once c
    # confirmed, the record narrows to c: never a moment where b could have acknowledged a
    # commit the record does not cover.
    slow = row("b", flush=1000, sync_state=StandbySyncState.SYNC, flush_lag_s=1.2)
    local = primary(B_ONLY, slow, row("c", flush=1000, flush_lag_s=0.004), wal=1000)
    first = leader_step(sync_view("a", ME_PRIMARY, B, C, record=rec("a", "b")), local)
    assert first == SetSyncRecord(
        record=replace(rec("a", "b", "c"), version=""), expected_version="9"
    )
    widened = sync_view("a", ME_PRIMARY, B, C, record=rec("a", "b", "c"))
    assert leader_step(widened, local) == SetSyncStandbyNames(standbys=C_ONLY)
    swapped = primary(
        C_ONLY,
        replace(slow, sync_state=StandbySyncState.ASYNC),
        row("c", flush=2000, sync_state=StandbySyncState.SYNC),
        wal=1000,
    )
    memory, steps = LEASED, []
    for _ in range(2):
        decision, memory = decide(obs(widened, swapped), memory, A)
        steps += [a for a in decision.actions if isinstance(a, SetSyncRecord)]
    assert steps and steps[-1].record.members == ("c",)


def test_a_slow_flush_is_ignored_when_the_bound_is_off_or_not_exceeded() -> None:
    cluster = sync_view("a", ME_PRIMARY, B, C, record=rec("a", "b"))
    slow = row("b", sync_state=StandbySyncState.SYNC, flush_lag_s=0.8)
    local = primary(B_ONLY, slow, row("c"))
    assert leader_step(cluster, local) is None  # 0.8 s: below the default bound of 1 s
    off = replace(A, ha=HaSettings(maximum_flush_lag_on_syncnode_s=-1))
    local = primary(B_ONLY, replace(slow, flush_lag_s=30.0), row("c"))
    decision, _ = decide(obs(cluster, local), LEASED, off)
    assert not [a for a in decision.actions if isinstance(a, SetSyncRecord | SetSyncStandbyNames)]


def test_a_lagging_standby_stays_when_it_is_the_only_one() -> None:
    cluster = sync_view("a", ME_PRIMARY, B, max_lag=100, record=rec("a", "b"))
    local = primary(B_ONLY, row("b", flush=500, sync_state=StandbySyncState.SYNC), wal=1000)
    assert leader_step(cluster, local) is None


def test_off_mode_resets_postgresql_before_the_record() -> None:
    cluster = sync_view("a", ME_PRIMARY, B, mode=SyncMode.OFF, record=rec("a", "b"))
    assert leader_step(cluster, primary(B_ONLY, row("b"))) == SetSyncStandbyNames(
        standbys=NO_STANDBYS
    )


def test_a_new_leader_writes_its_own_record_before_changing_postgresql() -> None:
    # Promoted: PostgreSQL still has the old leader's setting naming us.
    inherited = SyncStandbys(quorum=False, count=1, names=("a",))
    cluster = sync_view("a", ME_PRIMARY, B, record=rec("z", "a"))
    step = leader_step(cluster, primary(inherited, row("b")))
    assert isinstance(step, SetSyncRecord)
    assert step.record.leader == "a" and set(step.record.members) >= {"a", "b"}


def test_the_bootstrapping_leader_seeds_the_config_record_from_its_settings() -> None:
    settings = replace(A, ha=HaSettings(synchronous_mode=SyncMode.QUORUM, synchronous_node_count=2))
    cluster = replace(view("a", ME_PRIMARY), initialize="", initialize_version="1")
    decision, _ = decide(obs(cluster, PRIMARY), LEASED, settings)
    seeded = [a for a in decision.actions if isinstance(a, SetConfig)]
    assert seeded == [SetConfig(config=seed_config(settings), expected_version=None)]
    assert seeded[0].config.synchronous_mode == SyncMode.QUORUM
    assert seeded[0].config.synchronous_node_count == 2


def test_switchover_to_a_member_outside_the_synchronous_set_is_refused() -> None:
    request = SwitchoverRequest(leader=MemberName("a"), candidate=MemberName("c"))
    cluster = sync_view("a", ME_PRIMARY, B, C, record=rec("a", "b"), switchover=request)
    local = primary(B_ONLY, row("b", sync_state=StandbySyncState.SYNC), row("c"))
    decision, _ = decide(obs(cluster, local), LEASED, A)
    assert ClearSwitchover in kinds(decision) and HandOver not in kinds(decision)


def test_switchover_without_a_candidate_goes_to_the_synchronous_standby() -> None:
    request = SwitchoverRequest(leader=MemberName("a"), candidate=None)
    far = member("c", lsn=5000)
    cluster = sync_view("a", ME_PRIMARY, B, far, record=rec("a", "b"), switchover=request)
    local = primary(B_ONLY, row("b", sync_state=StandbySyncState.SYNC), row("c"))
    decision, _ = decide(obs(cluster, local), LEASED, A)
    assert HandOver(candidate=MemberName("b")) in decision.actions


# --------------------------------------------------------------------------- failover


def reachable(name: str, lsn: int) -> PeerStatus:
    return PeerStatus(
        name=MemberName(name),
        reachable=True,
        role=Role.REPLICA,
        state=PgState.STREAMING,
        timeline=1,
        wal_lsn=lsn,
    )


def race(cluster: ClusterView, peers: tuple[PeerStatus, ...] | None, me: str = "a") -> bool:
    settings = make_settings(me)
    decision, _ = decide(obs(cluster, REPLICA, peers=peers), Memory(), settings)
    return AcquireLeader in kinds(decision)


def test_a_member_outside_the_recorded_set_does_not_promote() -> None:
    cluster = sync_view(None, member("a"), B, record=rec("z", "b"))
    assert not race(cluster, (reachable("b", 0),))
    assert not race(cluster, None)


def test_a_member_of_the_recorded_set_promotes_even_if_an_async_member_is_ahead() -> None:
    cluster = sync_view(None, member("a"), B, record=rec("z", "a"))
    assert race(cluster, (reachable("b", 99_999),))


def test_a_sync_member_ignores_the_failover_lag_limit() -> None:
    cluster = sync_view(None, member("a"), B, record=rec("z", "a"))
    memory = Memory(last_leader_wal_lsn=10**9)
    decision, _ = decide(obs(cluster, REPLICA, peers=()), memory, A)
    assert AcquireLeader in kinds(decision)


def test_without_a_record_or_with_an_async_record_anyone_may_promote() -> None:
    assert race(sync_view(None, member("a")), ())
    assert race(sync_view(None, member("a"), record=rec("z", quorum=0)), ())


def test_quorum_candidate_needs_n_minus_k_plus_one_members_of_the_set_in_sight() -> None:
    cluster = sync_view(
        None, member("a"), B, C, mode=SyncMode.QUORUM, record=rec("z", "a", "b", "c", quorum=2)
    )
    # N = 3, k = 2: must see 2 (itself included).
    assert not race(cluster, (PeerStatus(name=MemberName("b"), reachable=False),))
    assert race(cluster, (reachable("b", 900),))


def test_quorum_candidate_defers_to_a_more_advanced_member_of_the_set() -> None:
    cluster = sync_view(
        None, member("a"), B, C, mode=SyncMode.QUORUM, record=rec("z", "a", "b", "c", quorum=1)
    )
    # N = 3, k = 1: must see all 3 and be the most advanced.
    assert not race(cluster, (reachable("b", 900),))
    assert not race(cluster, (reachable("b", 900), reachable("c", 1001)))
    assert race(cluster, (reachable("b", 900), reachable("c", 999)))


def test_an_unreadable_sync_record_lets_no_one_promote() -> None:
    broken = SyncRecord(leader=MemberName(""), members=(), quorum=1, version="4")
    assert not race(sync_view(None, member("a"), record=broken), ())


def test_named_failover_candidate_outside_the_set_does_not_take_the_lease() -> None:
    request = SwitchoverRequest(leader=None, candidate=MemberName("a"))
    cluster = sync_view(None, member("a"), B, record=rec("z", "b"), switchover=request)
    decision, _ = decide(obs(cluster, REPLICA), Memory(), A)
    assert Promote not in kinds(decision)


# --------------------------------------------------------------------------- properties

NAMES = ("a", "b", "c", "d")


@st.composite
def sync_records(draw: st.DrawFn) -> SyncRecord | None:
    if draw(st.booleans()):
        return None
    members = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=4))
    quorum = draw(st.integers(min_value=0, max_value=max(len(members), 1)))
    return rec(draw(st.sampled_from(("a", "z"))), *members, quorum=quorum)


@st.composite
def failover_observations(
    draw: st.DrawFn,
) -> tuple[ClusterView, LocalState, tuple[PeerStatus, ...] | None]:
    record = draw(sync_records())
    mode = draw(st.sampled_from(list(SyncMode)))
    peers = tuple(
        PeerStatus(
            name=MemberName(n),
            reachable=draw(st.booleans()),
            role=Role.REPLICA,
            state=PgState.STREAMING,
            timeline=1,
            wal_lsn=draw(st.integers(min_value=0, max_value=3000)),
        )
        for n in NAMES[1:]
    )
    switchover = None
    if draw(st.booleans()):
        switchover = SwitchoverRequest(leader=None, candidate=MemberName("a"))
    cluster = sync_view(
        None,
        member("a"),
        *(member(n) for n in NAMES[1:]),
        mode=mode,
        record=record,
        switchover=switchover,
    )
    local = replace(REPLICA, wal_lsn=draw(st.integers(min_value=0, max_value=3000)))
    return cluster, local, draw(st.one_of(st.none(), st.just(peers)))


@settings(max_examples=300, deadline=None)
@given(st.lists(failover_observations(), min_size=1, max_size=12))
def test_no_sequence_of_observations_lets_a_member_outside_the_recorded_set_promote(
    sequence: list[tuple[ClusterView, LocalState, tuple[PeerStatus, ...] | None]],
) -> None:
    """Random sync records, modes, peer answers and WAL positions, cycle after cycle with the
    memory carried over (and a leader seen now and then): a Promote only ever comes for a
    member of the record (or its leader) that saw enough of the set and none further ahead."""
    memory = Memory()
    for step, (drawn, local, peers) in enumerate(sequence):
        cluster = drawn
        if step % 3 == 1:  # now and then a leader is seen (Memory learns its WAL position)
            cluster = replace(drawn, leader=LeaderRecord(name=MemberName("b"), version="1"))
        decision, memory = decide(obs(cluster, local, peers=peers), memory, A)
        for action in decision.actions:
            memory = record_outcome(
                memory, Outcome(action=action, result=Result.OK, sent_at=NOW), A
            )
        if Promote not in kinds(decision):
            continue
        record = cluster.sync
        if record is None or record.quorum <= 0:
            continue
        assert "a" in record.members or record.leader == "a", (record, decision)
        needed = len(record.members) - record.quorum + 1
        if (needed > 1 or "a" not in record.members) and cluster.switchover is None:
            visible = [p for p in peers or () if p.reachable and p.name in record.members]
            assert len(({"a"} & set(record.members)) | {p.name for p in visible}) >= needed
            assert all((p.wal_lsn or 0) <= (local_position(local) or 0) for p in visible)


STANDBY_SETS = st.sampled_from([NO_STANDBYS, B_ONLY, C_ONLY, ANY1_BC])


@st.composite
def leader_cycles(draw: st.DrawFn) -> tuple[ClusterView, LocalState, bool]:
    mode = draw(st.sampled_from(list(SyncMode)))
    present = draw(st.lists(st.sampled_from(("b", "c")), unique=True))
    rows = tuple(
        row(
            n,
            flush=draw(st.integers(800, 1100)),
            sync_state=draw(st.sampled_from(list(StandbySyncState))),
            flush_lag_s=draw(st.sampled_from([None, 0.01, 2.5])),  # a slow disk swaps too
        )
        for n in present
    )
    cluster = sync_view(
        "a",
        ME_PRIMARY,
        *(member(n) for n in present),
        mode=mode,
        k=draw(st.integers(1, 2)),
        strict=draw(st.booleans()),
    )
    local = primary(NO_STANDBYS, *rows, wal=draw(st.integers(900, 1200)))
    return cluster, local, draw(st.booleans())  # whether the step's write succeeds


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([NO_STANDBYS, B_ONLY, ANY1_BC]),
    st.lists(leader_cycles(), min_size=1, max_size=20),
)
def test_the_record_never_drops_a_standby_postgresql_still_waits_for(
    start: SyncStandbys, cycles: list[tuple[ClusterView, LocalState, bool]]
) -> None:
    """Simulate the leader against a PostgreSQL and a DCS that apply its steps (or fail to),
    under random membership, lag and mode changes: after every step the record covers what
    PostgreSQL promises (every standby it may wait for is named in the record)."""
    ssn = start
    record: SyncRecord | None = rec("a", *start.names, quorum=start.count) if start.count else None
    memory = LEASED
    for drawn, drawn_local, applies in cycles:
        cluster = replace(drawn, sync=record, sync_version=record.version if record else "")
        local = replace(drawn_local, sync_standbys=ssn)
        decision, memory = decide(obs(cluster, local), memory, A)
        for action in decision.actions:
            if isinstance(action, SetSyncStandbyNames) and applies:
                ssn = action.standbys
            elif isinstance(action, SetSyncRecord) and applies:
                record = replace(action.record, version=str(NOW))
            memory = record_outcome(
                memory,
                Outcome(action=action, result=Result.OK if applies else Result.LOST, sent_at=NOW),
                A,
            )
        promised = {n for n in ssn.names if n != "a"} if ssn.count else set()
        if promised:
            assert record is not None and record.quorum > 0, (ssn, record)
            assert promised <= set(record.members), (ssn, record)
            assert record.quorum <= min(ssn.count, len(promised)), (ssn, record)


def test_a_failed_change_of_synchronous_standby_names_stays_covered_until_overwritten() -> None:
    # Review R8: ALTER SYSTEM wrote c into postgresql.auto.conf, the reload that applies it
    # failed. Any later SIGHUP (a reload of other settings) may apply it, so the record must
    # keep covering c until the file is rewritten, even once PostgreSQL runs what is wanted.
    cluster = sync_view("a", ME_PRIMARY, C, record=rec("a", "b", "c"))
    decision, memory = decide(obs(cluster, primary(B_ONLY, row("c"))), LEASED, A)
    change = SetSyncStandbyNames(standbys=C_ONLY)
    assert change in decision.actions
    failed = Outcome(action=change, result=Result.LOST, sent_at=NOW)
    memory = record_outcome(memory, failed, A)
    # c went away and b is back: what PostgreSQL runs (b) is wanted again.
    back = sync_view("a", ME_PRIMARY, B, record=rec("a", "b", "c"))
    settled = primary(B_ONLY, row("b", flush=2000, sync_state=StandbySyncState.SYNC), wal=1000)
    for _ in range(3):
        decision, memory = decide(obs(back, settled), memory, A)
        for action in decision.actions:
            if isinstance(action, SetSyncRecord):
                assert "c" in action.record.members  # never narrowed while c may apply
    assert SetSyncStandbyNames(standbys=B_ONLY) in decision.actions
    # Once the file holds what runs, the record narrows as usual.
    done = Outcome(action=SetSyncStandbyNames(standbys=B_ONLY), result=Result.OK, sent_at=NOW)
    memory = record_outcome(memory, done, A)
    steps = []
    for _ in range(2):
        decision, memory = decide(obs(back, settled), memory, A)
        steps += [a for a in decision.actions if isinstance(a, SetSyncRecord)]
    assert steps and steps[-1].record.members == ("b",)


def test_a_restarted_leader_covers_a_value_a_failed_change_left_in_the_files() -> None:
    # Review R8, the agent restarted after the failed reload: its memory is empty, but the
    # probe reads what postgresql.auto.conf holds (pg_file_settings). The record must cover
    # c from the first cycle, and PostgreSQL's file be rewritten before any narrowing.
    cluster = sync_view("a", ME_PRIMARY, B, C, record=rec("a", "b"))
    local = replace(
        primary(B_ONLY, row("b", flush=2000, sync_state=StandbySyncState.SYNC), row("c")),
        sync_standbys_pending=C_ONLY,
    )
    assert leader_step(cluster, local) == SetSyncRecord(
        record=replace(rec("a", "b", "c"), version=""), expected_version="9"
    )
    covered = sync_view("a", ME_PRIMARY, B, C, record=rec("a", "b", "c"))
    assert leader_step(covered, local) == SetSyncStandbyNames(standbys=B_ONLY)
    # Once the file holds what runs, nothing is pending and the record narrows as usual.
    memory, rewritten = LEASED, replace(local, sync_standbys_pending=None)
    steps = []
    for _ in range(2):
        decision, memory = decide(obs(covered, rewritten), memory, A)
        steps += [a for a in decision.actions if isinstance(a, SetSyncRecord)]
    assert steps and steps[-1].record.members == ("b",)


def test_a_key_naming_us_over_a_standby_that_no_race_of_ours_won_is_handed_back() -> None:
    """Chaos finding 26: the leader key names this member (a DCS restored from a backup, a
    second agent under its name) while it runs a standby, and it took no lease in this run:
    promoting would skip every check of the race (the synchronous set, the position, the lag
    limit). It hands the key back, in the set or not, synchronous or not (an agent restarted
    between its acquire and its promote then wins the race again); a lease taken in this
    run promotes as before."""
    for cluster in (
        sync_view("a", member("a"), B, record=rec("z", "b")),  # outside the set
        sync_view("a", member("a"), B, record=rec("z", "a")),  # named in it
        view("a", member("a"), B),  # asynchronous
    ):
        decision, _ = decide(obs(cluster, REPLICA), Memory(), A)
        assert decision.actions == (ReleaseLeader(),), cluster.sync
    outside = sync_view("a", member("a"), B, record=rec("z", "b"))
    decision, _ = decide(obs(outside, REPLICA), LEASED, A)
    assert kinds(decision) == [RenewLeader, Promote]
