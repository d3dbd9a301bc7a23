"""Day-2 steps every branch may add: rendering the DCS PostgreSQL settings (`with_reconfigure`)
and a member's turn in a rolling restart (`restart_step`).

Rolling restart (the DCS `restart` record, model.RestartSchedule), once it is due:
- replicas go one at a time, in name order: the one whose turn it is marks itself `done` and
  `current` and stops its PostgreSQL (fast) in one decision; the follower branch starts it
  again as a standby of the leader; once it streams it clears `current`, and only then does
  the next one go. Members without a DCS record are skipped; with `pending`, a member with
  nothing waiting for a restart only marks itself done;
- the leader goes last: by a hand-over (switchover) to a replica that streams from it caught
  up, which restarts it as a standby (it marks itself `current`, with its timeline, first,
  and clears it once it streams from the new leader, which then deletes the record; a leader
  that finds itself `current` again lost its hand-over and restarts in place, unless it runs
  on a later timeline than it marked: promoted again since, so restarted already), or in
  place (`in_place`, or when a hot-standby minimum goes down: agent/pgparams.py) by the long
  action `RestartPrimary` (agent/inplace.py: checkpoint, stop, start, the lease renewed meanwhile).
  The leader deletes the record when nobody is left.
"""

from __future__ import annotations

from dataclasses import replace

from agent.actions import (
    Action,
    Decision,
    HandOver,
    Reconfigure,
    RestartPrimary,
    SetRestartSchedule,
    StartPostgres,
    StopMode,
    StopPostgres,
    is_long,
)
from agent.decide.candidates import choose_handover
from agent.decide.state import Memory, Observation
from agent.model import LocalRequestKind, MemberName, RestartSchedule
from agent.pgparams import dynamic_for, hot_standby_decrease
from agent.settings import Settings


def with_reconfigure(
    obs: Observation, decision: Decision, memory: Memory, settings: Settings
) -> tuple[Decision, Memory]:
    """`decision` with a Reconfigure added when the DCS settings as this member renders them
    differ from what it last rendered (or a reload was asked for): before the first start or
    long action (so that a server starts with them), else last (never before the lease)."""
    view = obs.cluster
    if (
        view is None
        or obs.shutting_down
        or obs.pending is not None
        or memory.refused is not None
        or (not obs.local.data_dir_initialized and not any(is_long(a) for a in decision.actions))
    ):
        return decision, memory
    if LocalRequestKind.RELOAD in obs.local_requests:
        memory = replace(memory, pg_applied=None)
    wanted = dynamic_for(view, settings, obs.local)
    if wanted == memory.pg_applied:
        return decision, memory
    actions = list(decision.actions)
    at = next(
        (i for i, a in enumerate(actions) if is_long(a) or isinstance(a, StartPostgres)),
        len(actions),
    )
    actions.insert(at, Reconfigure(config=wanted))
    return replace(decision, actions=tuple(actions)), memory


Step = tuple[tuple[Action, ...], str, Memory]


def restart_step(obs: Observation, memory: Memory, settings: Settings) -> Step | None:
    """This member's step in a due rolling restart (module docstring), its reason and the
    Memory after it, or None."""
    view, local, me = obs.cluster, obs.local, MemberName(settings.name)
    if view is None or view.restart is None or view.leader is None:
        return None
    schedule = view.restart
    i_lead = view.leader.name == me
    delete = SetRestartSchedule(schedule=None, expected_version=schedule.version)
    if not schedule.members:
        if not i_lead:
            return None
        return (delete,), "rolling restart record is empty or unreadable: deleted", memory
    if obs.wall_now < schedule.scheduled_at:
        return None
    present = {m.name for m in view.members}
    if schedule.current is not None:
        if schedule.current == me and not i_lead and local.is_replica and local.streaming:
            cleared = replace(schedule, current=None)
            write = SetRestartSchedule(schedule=cleared, expected_version=schedule.version)
            return (write,), "rolling restart: streaming again after the restart", memory
        if i_lead and schedule.current == me:
            if _promoted_since(schedule, local.timeline):
                # The hand-over happened (we ran as the new leader's standby: restarted), but
                # that leader went before we streamed from it and cleared `current`, and we
                # won the race again: nothing left to restart.
                why = "rolling restart: restarted by the hand-over, leading again; done"
                return (delete,), why, memory
            # Our hand-over did not happen (it ran, or would have, as a long action): we
            # still lead, so restart in place instead.
            stop = RestartPrimary()
            return (delete, stop), "rolling restart: the hand-over failed; in place", memory
        if i_lead and schedule.current not in present:
            cleared = replace(schedule, current=None)
            write = SetRestartSchedule(schedule=cleared, expected_version=schedule.version)
            why = f"rolling restart: {schedule.current} is gone; going on without it"
            return (write,), why, memory
        return None
    todo = sorted(n for n in schedule.members if n not in schedule.done and n in present)
    replicas = [n for n in todo if n != view.leader.name]
    if replicas:
        if replicas[0] != me or i_lead:
            return None
        done = replace(schedule, done=(*schedule.done, me))
        if (schedule.pending and not local.pending_restart) or not local.running:
            write = SetRestartSchedule(schedule=done, expected_version=schedule.version)
            return (write,), "rolling restart: nothing to restart here", memory
        write = SetRestartSchedule(
            schedule=replace(done, current=me), expected_version=schedule.version
        )
        return (write, StopPostgres(mode=StopMode.FAST)), "rolling restart: restarting", memory
    if not i_lead:
        return None
    return _leader_turn(obs, memory, settings, listed=me in todo)


def _leader_turn(obs: Observation, memory: Memory, settings: Settings, *, listed: bool) -> Step:
    """The leader's turn, last: a hand-over to a replica that streams from it caught up
    (waiting for one at most switchover_timeout_s), else a restart in place."""
    view, local, now = obs.cluster, obs.local, obs.now
    assert view is not None and view.restart is not None
    delete = SetRestartSchedule(schedule=None, expected_version=view.restart.version)
    done = replace(memory, handover_wait_since=None)
    if not listed or not local.is_primary:
        return (delete,), "rolling restart: every member had its turn", done
    if view.restart.pending and not local.pending_restart:
        return (delete,), "rolling restart: nothing to restart on the leader", done
    stop = RestartPrimary()
    if view.restart.in_place:
        return (delete, stop), "rolling restart: restarting the leader in place", done
    if hot_standby_decrease(local, dynamic_for(view, settings, local)):
        why = "rolling restart: restarting the leader in place (a hot-standby setting goes down)"
        return (delete, stop), why, done
    candidate, ready = choose_handover(view, local, settings)
    if candidate is not None and ready:
        # Kept, marking us: once we stream from the new leader we clear `current` and it
        # deletes the record; if we still lead afterwards, the hand-over failed.
        me = MemberName(settings.name)
        mark = replace(
            view.restart,
            done=(*view.restart.done, me),
            current=me,
            current_timeline=local.timeline,
        )
        write = SetRestartSchedule(schedule=mark, expected_version=view.restart.version)
        return (
            (write, HandOver(candidate=candidate.name)),
            f"rolling restart: handing over to {candidate.name}",
            done,
        )
    since = memory.handover_wait_since if memory.handover_wait_since is not None else now
    if candidate is None or now - since >= settings.timing.switchover_timeout_s:
        why = "rolling restart: no replica streams from us caught up; restarting in place"
        return (delete, stop), why, done
    why = f"rolling restart: waiting for {candidate.name} to stream from us caught up"
    return (), why, replace(memory, handover_wait_since=since)


def _promoted_since(schedule: RestartSchedule, timeline: int | None) -> bool:
    """We run on a later timeline than when we marked ourselves `current` to hand over: we
    were promoted since, so our PostgreSQL was restarted (a primary becomes a standby only
    through a stop)."""
    marked = schedule.current_timeline
    return marked is not None and timeline is not None and timeline > marked
