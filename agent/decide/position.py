"""The leader's last WAL position, kept in the DCS `position` record (model.LeaderPosition).

Why: `maximum_lag_on_failover_bytes` is judged against how far the leader was. A member
learns that from the leader's member record every cycle (`Memory.last_leader_wal_lsn`), but
that record goes with the leader's lease, and Memory goes with the agent: a member whose
agent restarted after the leader died knew no limit, and a far-behind replica (one still
replaying an archive after a restore, a cascading one behind a lagging upstream) could win
the race and lose every write it had not received. The `position` record is bound to no
lease (agent/dcs/base.py, point 9), so candidates judge their lag against the larger of what
they remember and what it says (`last_known_position`), as Patroni does with `/optime/leader`.

Write rate (the DCS is shared, and idle requests count): the leader writes only when its
position changed: at once when the record is absent, unreadable, another leader's or of
another timeline, or claims more WAL than the leader has (a stale record that high would
keep every candidate out of the race); otherwise at most every `POSITION_EVERY_CYCLES`
loop_wait_s, or every loop_wait_s while the position moves by maximum_lag_on_failover_bytes
or more between writes. An idle leader writes nothing; the record wakes nobody (point 8).
"""

from __future__ import annotations

from agent.actions import SetLeaderPosition
from agent.decide.state import Memory
from agent.model import ClusterView, LeaderPosition, LocalState, Lsn, MemberName
from agent.settings import Settings

# A position that moved less than maximum_lag_on_failover_bytes is written at most this many
# loop_wait_s after the last write.
POSITION_EVERY_CYCLES = 5


def plan_position(
    view: ClusterView, local: LocalState, memory: Memory, now: float, settings: Settings
) -> SetLeaderPosition | None:
    """The leader's write of its position this cycle, if one is due (module docstring)."""
    if not local.is_primary or local.wal_lsn is None:
        return None
    mine = LeaderPosition(
        leader=MemberName(settings.name), timeline=local.timeline, wal_lsn=local.wal_lsn
    )
    write = SetLeaderPosition(position=mine, expected_version=view.position_version or None)
    written = view.position
    if (
        written is None
        or written.leader != mine.leader
        or written.timeline != mine.timeline
        or written.wal_lsn > mine.wal_lsn
    ):
        return write
    moved = mine.wal_lsn - written.wal_lsn
    if moved == 0:
        return None
    last = memory.position_written_at
    since = now - last if last is not None else float("inf")
    wait_s = settings.timing.loop_wait_s
    if since >= POSITION_EVERY_CYCLES * wait_s:
        return write
    if moved >= settings.ha.maximum_lag_on_failover_bytes and since >= wait_s:
        return write
    return None


def recorded_position(view: ClusterView) -> Lsn | None:
    """The `position` record's WAL position, unless the DCS history shows that a newer
    timeline began since it was written (a failover: the old leader's last WAL is not the
    cluster's any more; the new leader rewrites the record at its first cycle)."""
    position = view.position
    if position is None:
        return None
    # Any timeline the history says ended (candidates.cluster_timeline, not imported: it
    # imports this module).
    ended = max((entry.timeline for entry in view.history), default=None)
    if ended is not None and position.timeline is not None and position.timeline <= ended:
        return None
    return position.wal_lsn


def last_known_position(view: ClusterView, memory: Memory) -> Lsn | None:
    """How far the leader was, as far as this member can know: the larger of the leader's
    member record as last seen (Memory), the hand-over position of a switchover request,
    and the DCS `position` record."""
    handover = view.switchover.handover_lsn if view.switchover is not None else None
    known = (memory.last_leader_wal_lsn, handover, recorded_position(view))
    return max((p for p in known if p is not None), default=None)
