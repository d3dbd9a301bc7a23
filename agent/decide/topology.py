"""Who streams from whom, and who clones from whom (tags `replicatefrom`, `clonefrom`).

Pure functions of the cluster view, so that the member choosing its upstream and the leader
choosing which replication slots to keep come to the same answer from the same records.
"""

from __future__ import annotations

from agent.model import ClusterView, Member, MemberName, PgState, Role


def _streams(member: Member, leader: Member | None) -> bool:
    """A replica that receives WAL, on the leader's timeline when both are known."""
    if member.role is not Role.REPLICA or member.state is not PgState.STREAMING:
        return False
    if leader is None or leader.timeline is None or member.timeline is None:
        return True
    return member.timeline == leader.timeline


def upstream_for(name: str, replicatefrom: str | None, view: ClusterView) -> MemberName | None:
    """The member `name` should stream from: its `replicatefrom` member while that one's
    record shows a replica streaming on the leader's timeline that does not itself replicate
    from `name`; else the leader (None: there is no leader)."""
    if view.leader is None:
        return None
    leader = view.leader_member
    if replicatefrom is not None and replicatefrom not in (name, view.leader.name):
        target = view.member(replicatefrom)
        if target is not None and target.tags.replicatefrom != name and _streams(target, leader):
            return target.name
    return view.leader.name


def cascading(view: ClusterView) -> frozenset[MemberName]:
    """The members that stream from another member than the leader (`upstream_for`)."""
    if view.leader is None:
        return frozenset()
    return frozenset(
        m.name
        for m in view.members
        if m.name != view.leader.name
        and upstream_for(m.name, m.tags.replicatefrom, view) != view.leader.name
    )


def clone_source(view: ClusterView, me: str) -> MemberName | None:
    """Where a member without data takes its base backup: the first (by name) streaming
    replica tagged `clonefrom`, else the leader if it runs as the primary (None: wait)."""
    leader = view.leader_member
    tagged = sorted(
        m.name for m in view.members if m.name != me and m.tags.clonefrom and _streams(m, leader)
    )
    if tagged:
        return tagged[0]
    if leader is not None and leader.state == PgState.RUNNING and leader.role == Role.PRIMARY:
        return leader.name
    return None
