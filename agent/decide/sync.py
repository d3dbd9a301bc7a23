"""Synchronous replication (DESIGN.md invariant 3): the `Claim` algebra ("every acknowledged
commit is held by at least `count` of `members`"), who may take over under the DCS `sync`
record (`sync_refusal`), the standbys a leader wants (`desired_standbys`) and its one step
per cycle towards them that keeps the record a superset of the truth (`plan_sync`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent.actions import (
    Action,
    SetSyncRecord,
    SetSyncStandbyNames,
)
from agent.decide.state import Memory, PeerStatus
from agent.model import (
    ClusterView,
    LocalState,
    MemberName,
    Role,
    SyncMode,
    SyncRecord,
    SyncRole,
    SyncStandbys,
    WalSenderState,
)
from agent.settings import Settings

_NO_STANDBYS = SyncStandbys(quorum=False, count=0, names=())


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """ "Every acknowledged commit is held by at least `count` of `members`" (count 0: nothing
    is promised)."""

    members: frozenset[str]
    count: int


_NOTHING = Claim(members=frozenset(), count=0)


def claim_of(standbys: SyncStandbys, *, exclude: str = "") -> Claim:
    """What PostgreSQL running with `standbys` promises about each commit. FIRST k of a longer
    list still puts each commit on k of the listed names; our own name never confirms."""
    names = frozenset(n for n in standbys.names if n != exclude)
    count = min(standbys.count, len(names))
    return Claim(members=names, count=count) if count > 0 else _NOTHING


def record_claim(record: SyncRecord | None) -> Claim:
    if record is None or record.quorum <= 0:
        return _NOTHING
    return Claim(members=frozenset(record.members), count=record.quorum)


def covers(record: Claim, truth: Claim) -> bool:
    """A record promising `record` is never wrong while `truth` holds (truth's members are all
    named, and the record counts on no more of them than truth guarantees)."""
    if truth.count == 0:
        return True
    return record.count > 0 and truth.members <= record.members and record.count <= truth.count


def combine(*claims: Claim) -> Claim:
    """The strongest claim implied by each of `claims` (the weakest one over their union)."""
    real = [c for c in claims if c.count > 0]
    if not real:
        return _NOTHING
    return Claim(
        members=frozenset().union(*(c.members for c in real)),
        count=min(c.count for c in real),
    )


def sync_refusal(
    view: ClusterView, name: str, peers: tuple[PeerStatus, ...] | None, *, check_quorum: bool
) -> str | None:
    """Why `name` may not take over under the DCS `sync` record, or None if it may.

    No record, or one promising nothing (asynchronous): anyone may. Else only the record's
    leader or one of its members; with `check_quorum`, a member must also see (in `peers`,
    the fresh answers to the pre-race check) at least `len(members) - quorum + 1` members of
    the set, itself included: any `quorum` of them hold every commit, so that many include
    one that does (R + W > N); the caller then requires it to be the most advanced of them.
    """
    record = view.sync
    if record is None or record.quorum <= 0:
        return None
    is_leader = name == record.leader and name not in record.members
    if name not in record.members and not is_leader:
        return f"not in the synchronous set {list(record.members)}"
    # The record's own leader had every commit of its term, but a later leader may have
    # committed on the set before writing its own record: it too must see enough of the set.
    needed = len(record.members) - record.quorum + 1
    if not check_quorum or (needed <= 1 and not is_leader):
        return None
    seen = set() if is_leader else {name}
    for peer in peers or ():
        if peer.reachable and peer.name in record.members and peer.role == Role.REPLICA:
            seen.add(peer.name)
    if len(seen) < needed:
        return (
            f"sees {len(seen)} of the synchronous set {list(record.members)}, "
            f"needs {needed} to be sure of the latest commit"
        )
    return None


def sync_candidate_ok(view: ClusterView, name: str) -> bool:
    """In synchronous mode a switchover goes only to a member of the recorded set."""
    return sync_refusal(view, name, None, check_quorum=False) is None


def desired_standbys(view: ClusterView, local: LocalState, settings: Settings) -> SyncStandbys:
    """synchronous_standby_names for the config record's mode, from the standbys streaming from
    us now (pg_stat_replication), not tagged nosync or nofailover (a synchronous standby must
    be able to take over), sync_priority > 0, ordered by sync_priority (higher first), then
    name. One further behind than maximum_lag_on_syncnode_bytes, or whose flush_lag exceeds
    the leader's maximum_flush_lag_on_syncnode_s (it streams but flushes slowly: each commit
    waits that long), is left out while enough others remain. With none: strict mode keeps
    commits waiting on the last set, otherwise replication becomes asynchronous."""
    config = view.config
    if config.synchronous_mode == SyncMode.OFF:
        return _NO_STANDBYS
    streaming = {
        r.application_name: r for r in local.replication if r.state is WalSenderState.STREAMING
    }
    candidates = []
    for m in view.members:
        row = streaming.get(m.name)
        if m.name == settings.name or row is None or m.role != Role.REPLICA:
            continue
        if m.tags.nosync or m.tags.nofailover or m.tags.sync_priority <= 0:
            continue
        lag = (local.wal_lsn or 0) - (row.flush_lsn or 0)
        slow = settings.ha.maximum_flush_lag_on_syncnode_s
        lagging = 0 <= config.maximum_lag_on_syncnode_bytes < lag or (
            slow > 0 and row.flush_lag_s is not None and row.flush_lag_s > slow
        )
        candidates.append((lagging, -m.tags.sync_priority, m.name))
    candidates.sort()
    k = config.synchronous_node_count
    fresh = [c for c in candidates if not c[0]]
    chosen = fresh if len(fresh) >= min(k, len(candidates)) else candidates
    names = tuple(c[2] for c in chosen)
    quorum = config.synchronous_mode == SyncMode.QUORUM
    if not quorum:
        names = names[:k]
    if names:
        return SyncStandbys(quorum=quorum, count=min(k, len(names)), names=names)
    if not config.synchronous_mode_strict:
        return _NO_STANDBYS
    # Strict: never fall back to asynchronous commits. Keep what PostgreSQL waits for now,
    # else the last recorded set, else any standby.
    current = local.sync_standbys
    if current is not None and claim_of(current, exclude=settings.name).count > 0:
        kept = tuple(n for n in current.names if n != settings.name)
        return SyncStandbys(quorum=current.quorum, count=min(current.count, len(kept)), names=kept)
    record = view.sync
    if record is not None and record.quorum > 0:
        kept = tuple(n for n in record.members if n != settings.name)
        if kept:
            return SyncStandbys(quorum=quorum, count=min(k, len(kept)), names=kept)
    return SyncStandbys(quorum=False, count=1, names=("*",))


def _same(a: SyncStandbys, b: SyncStandbys) -> bool:
    if a.count <= 0 or not a.names:
        return b.count <= 0 or not b.names
    return a == b


def plan_sync(
    view: ClusterView, local: LocalState, memory: Memory, settings: Settings
) -> tuple[Action | None, Memory]:
    """The leader's next step towards the desired synchronous set, one step per cycle.

    Order (the record stays a superset of who may hold the latest commit):
    1. PostgreSQL differs from the desired set: first make the record cover both what
       PostgreSQL promises now and what it will promise (SetSyncRecord), then change
       PostgreSQL (SetSyncStandbyNames).
    2. PostgreSQL runs with the desired set: note our WAL position (every commit acknowledged
       under an earlier setting lies below it).
    3. Once `count` of the desired standbys report sync/quorum in pg_stat_replication and have
       flushed past that position, narrow the record to exactly the desired set.
    """
    current = local.sync_standbys
    if current is None or not local.is_primary:
        return None, memory
    me = MemberName(settings.name)
    record = view.sync
    desired = desired_standbys(view, local, settings)
    want, now, recorded = claim_of(desired), claim_of(current, exclude=me), record_claim(record)
    unreloaded, memory = _unreloaded(current, desired, memory, local)
    now = combine(now, *(claim_of(u, exclude=me) for u in unreloaded))
    if not _same(current, desired) or unreloaded:
        memory = replace(memory, sync_effective=None)
        need = combine(now, want)
        if not covers(recorded, need) or (record is not None and record.leader != me):
            target = combine(recorded, need)
            return _sync_record(me, target, record), memory
        return SetSyncStandbyNames(standbys=desired), memory
    if memory.sync_effective is None or memory.sync_effective[0] != desired:
        return None, replace(memory, sync_effective=(desired, local.wal_lsn or 0))
    names = tuple(MemberName(n) for n in desired.names) if want.count else ()
    exact = SyncRecord(leader=me, members=names, quorum=want.count)
    if record is None and want.count == 0:
        return None, memory  # never synchronous under this leader: nothing to record
    if record is not None and (record.leader, record.members, record.quorum) == (
        exact.leader,
        exact.members,
        exact.quorum,
    ):
        return None, memory
    since = memory.sync_effective[1]
    confirmed = sum(
        1
        for r in local.replication
        if r.application_name in want.members
        and r.sync_state.confirms_commits
        and (r.flush_lsn or 0) >= since
    )
    if confirmed >= want.count:
        target = Claim(members=frozenset(exact.members), count=want.count)
        return _sync_record(me, target, record, order=exact.members), memory
    if not covers(recorded, want):
        return _sync_record(me, combine(recorded, want), record), memory
    return None, memory


def _unreloaded(
    current: SyncStandbys, desired: SyncStandbys, memory: Memory, local: LocalState
) -> tuple[tuple[SyncStandbys, ...], Memory]:
    """Values a failed change left in postgresql.auto.conf that any SIGHUP may apply and that
    differ from the desired one: the record covers them as if they ran, and the desired value
    is set again (overwriting the file) before any narrowing. Two sources: the change this
    agent saw fail (`memory.sync_unreloaded`, forgotten once it runs: the file then holds what
    runs, whatever the failed change did), and what the probe read in the files
    (`local.sync_standbys_pending`), which an agent restarted after the failure sees at once."""
    unreloaded = memory.sync_unreloaded
    if unreloaded is not None and _same(current, unreloaded):
        unreloaded, memory = None, replace(memory, sync_unreloaded=None)
    found = (unreloaded, local.sync_standbys_pending)
    pending = tuple(
        u for u in found if u is not None and not _same(u, desired) and not _same(u, current)
    )
    return pending, memory


def _sync_record(
    me: MemberName,
    claim: Claim,
    record: SyncRecord | None,
    order: tuple[MemberName, ...] | None = None,
) -> SetSyncRecord:
    members = order if order is not None else tuple(sorted(claim.members))
    return SetSyncRecord(
        record=SyncRecord(
            leader=me,
            members=tuple(MemberName(m) for m in members) if claim.count else (),
            quorum=claim.count,
        ),
        expected_version=(record.version or None) if record is not None else None,
    )


def sync_role_of(name: str, view: ClusterView, local: LocalState) -> SyncRole:
    """This member's synchronous role: a running replica that the leader's PostgreSQL reports
    as sync or quorum (published in the leader's member record) and that is in the `sync`
    record of that leader's term; else ASYNC for a replica, NONE otherwise."""
    if not local.is_replica:
        return SyncRole.NONE
    leader = view.leader_member
    record = view.sync
    if (
        leader is not None
        and name in leader.sync_standbys
        and record is not None
        and record.quorum > 0
        and record.leader == leader.name
        and name in record.members
    ):
        if view.config.synchronous_mode == SyncMode.QUORUM:
            return SyncRole.QUORUM
        return SyncRole.SYNC
    return SyncRole.ASYNC


def sync_fallback(view: ClusterView, local: LocalState, settings: Settings) -> bool:
    """Leader: synchronous mode is asked for but commits wait for no standby."""
    if view.config.synchronous_mode == SyncMode.OFF or not local.is_primary:
        return False
    current = local.sync_standbys
    return current is not None and claim_of(current, exclude=settings.name).count == 0
