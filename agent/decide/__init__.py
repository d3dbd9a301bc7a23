"""The HA state machine: `decide(observation, memory, settings) -> (decision, memory')`.

Pure: values in, values out. No I/O, no clock, no logging (DESIGN.md section 1). Every
branch is a small `when_*` function returning a Decision; the branch order in `decide()` is
the priority order. `record_outcome()` folds what the executor reports back into Memory.

The package, by sub-domain (each module imports only those below it):
- `leader`, `member`: the branches, for the member holding the leader record and for the rest;
- `candidates`: who may lead next; `failsafe`: failsafe mode; `outcomes`: `record_outcome`;
- `sync`: synchronous replication, the `Claim` algebra;
- `state`: Observation, Memory, Outcome, the lease deadlines.

Safety (DESIGN.md section 3) is kept by three rules that the property tests check:
- `Promote` is only planned right after `AcquireLeader` in the same decision (the executor
  stops at a failed acquire), or while our lease is valid.
- A primary whose fencing deadline has passed, or that sees another member's leader record,
  or no leader record at all, is demoted at once (the fencer process does the same
  independently of this loop).
- A member that was a primary never streams from a new leader without pg_rewind first.
- Failsafe mode (DESIGN.md section 3, DCS unreachable): a primary that cannot reach the DCS
  extends its fencing deadline only by a round of POST /failsafe that every member named in
  the `failsafe` record (and every member it may have just added there) accepted; the deadline
  is then `send time + ttl - margin`. A member that accepted does not race for the lease for
  `ttl` after it accepted (its clock; `Memory.promised_until`, set by `answer_failsafe`),
  and while a `failsafe` record stands, a member it does not name never takes over: so until
  the later of the lease's and the failsafe deadline nobody else can promote.
- Synchronous replication (DESIGN.md invariant 3): while the DCS `sync` record claims a
  quorum, only its members (and its own leader) may promote, and a member only after it has
  seen `len(members) - quorum + 1` of them and found none further ahead (`sync_refusal`).
  The leader keeps the record a superset of who may hold the latest commit: a change of
  `synchronous_standby_names` that adds a standby is preceded by a record naming it, and a
  record that drops one follows the change in PostgreSQL and the remaining standbys'
  confirmation that they flushed WAL past the point where it took effect (`plan_sync`).
"""

from __future__ import annotations

from dataclasses import replace

from agent.actions import Clone, Decision, ReleaseLeader, StopMode, StopPostgres
from agent.decide.candidates import (
    PRIMARY_CONTROL_STATES,
    choose_candidate,
    choose_handover,
    cluster_timeline,
    is_healthy_replica,
    local_position,
    local_timeline,
    needs_rewind,
    pg_state_of,
    streams_caught_up,
    timeline_refusal,
    was_primary,
)
from agent.decide.failsafe import (
    answer_failsafe,
    failsafe_active,
    failsafe_hold,
    failsafe_refusal,
)
from agent.decide.leader import seed_config, when_leader, when_shutting_down
from agent.decide.member import (
    when_busy,
    when_dcs_unavailable,
    when_follower,
    when_leaderless,
    when_no_data,
)
from agent.decide.outcomes import record_outcome
from agent.decide.restarts import restart_step, with_reconfigure
from agent.decide.state import (
    RETRY_BACKOFF_S,
    SLOT_GRACE_S,
    Memory,
    Observation,
    Outcome,
    PeerStatus,
    Pending,
    Result,
    decided,
    fence,
    fence_deadline,
    lease_valid,
    promotion,
    promotion_vetoed,
    read_timeout_s,
)
from agent.decide.sync import (
    Claim,
    claim_of,
    combine,
    covers,
    desired_standbys,
    plan_sync,
    record_claim,
    sync_fallback,
    sync_refusal,
    sync_role_of,
)
from agent.model import LocalRequestKind
from agent.settings import Settings

__all__ = [
    "PRIMARY_CONTROL_STATES",
    "RETRY_BACKOFF_S",
    "SLOT_GRACE_S",
    "Claim",
    "Memory",
    "Observation",
    "Outcome",
    "PeerStatus",
    "Pending",
    "Result",
    "answer_failsafe",
    "choose_candidate",
    "choose_handover",
    "claim_of",
    "cluster_timeline",
    "combine",
    "covers",
    "decide",
    "desired_standbys",
    "failsafe_active",
    "failsafe_hold",
    "failsafe_refusal",
    "fence_deadline",
    "is_healthy_replica",
    "lease_valid",
    "local_position",
    "local_timeline",
    "needs_rewind",
    "pg_state_of",
    "plan_sync",
    "promotion",
    "promotion_vetoed",
    "read_timeout_s",
    "record_claim",
    "record_outcome",
    "restart_step",
    "seed_config",
    "streams_caught_up",
    "sync_fallback",
    "sync_refusal",
    "sync_role_of",
    "timeline_refusal",
    "was_primary",
]


def decide(obs: Observation, memory: Memory, settings: Settings) -> tuple[Decision, Memory]:
    """One HA decision. See the module docstring for the safety rules; the DCS PostgreSQL
    settings are rendered alongside whatever the branch decided (`with_reconfigure`)."""
    decision, memory = _branch(obs, memory, settings)
    return with_reconfigure(obs, decision, memory, settings)


def _branch(obs: Observation, memory: Memory, settings: Settings) -> tuple[Decision, Memory]:
    """The branches, in their priority order."""
    view = obs.cluster
    idle = obs.local.postmaster_idle and not obs.local.running
    if idle != (memory.postmaster_idle_since is not None):
        memory = replace(memory, postmaster_idle_since=obs.now if idle else None)
    if view is not None:
        leader = view.leader_member
        if leader is not None and leader.name != settings.name:
            memory = replace(memory, last_leader=leader.name, last_leader_wal_lsn=leader.wal_lsn)
        if view.leader is not None:
            memory = replace(memory, leaderless_since=None)
        if memory.unled_claim is not None and (view.leader is not None or view.initialize != ""):
            memory = replace(memory, unled_claim=None)
    follower = view is not None and view.leader is not None and view.leader.name != settings.name
    if memory.receiver_stall is not None and (obs.pending is not None or not follower):
        # The stall watchdog counts only consecutive cycles of when_follower (receiver.py).
        memory = replace(memory, receiver_stall=None)
    if obs.shutting_down:
        return when_shutting_down(obs, memory, settings)
    if obs.pending is not None:
        return when_busy(obs, memory, settings)
    if view is None:
        return when_dcs_unavailable(obs, memory, settings)
    if memory.refused is not None:
        return _refusing(obs, memory, settings, memory.refused)
    if not obs.local.data_dir_initialized:
        if obs.local.copy_incomplete and obs.local.postmaster_pid is not None:
            # Whatever started it (an operator, a former agent), it runs on a data directory
            # whose copy or rewind did not complete: it must not serve anything.
            return decided(
                memory,
                "PostgreSQL runs on a data directory whose copy did not complete: stopping it",
                StopPostgres(mode=StopMode.IMMEDIATE),
            )
        return when_no_data(obs, memory, settings)
    local = obs.local
    system_id = local.system_id or (local.control.system_id if local.control else None)
    unfinished = local.bootstrap_incomplete or (local.running and local.socket_only)
    # A recorded cluster is discarded only when this server is known to be another system:
    # a probe whose SQL failed (no system id, and no pg_control read while it runs) says
    # nothing, and clearing our recorded bootstrap then left the cluster with no data and us
    # as its leader, waiting to clone from ourselves (a fresh-clone CI run, and a soak).
    other_system = system_id is not None and view.initialize != system_id
    if unfinished and (not view.initialize or other_system):
        # A bootstrap that did not complete (its agent, or its whole pod, stopped during
        # post_bootstrap; or its server could not be opened): it never listened on TCP, so
        # no client wrote to it, and the cluster is not recorded as this system. Discarded
        # like a failed post_bootstrap; the claim is then withdrawn and the cluster made
        # again (or this member clones the one another member made meanwhile).
        return decided(
            memory,
            "a bootstrap that did not complete: discarding its data directory",
            StopPostgres(mode=StopMode.IMMEDIATE, clear_data=True),
        )
    if view.initialize and system_id and view.initialize != system_id:
        refused = (
            f"data directory holds system {system_id}, the cluster is {view.initialize}: "
            "refusing to join (reinitialize this member to clone it)"
        )
        return _refusing(obs, replace(memory, refused=refused), settings, refused)
    if view.leader is not None and view.leader.name == settings.name:
        return when_leader(obs, memory, settings)
    if view.leader is not None:
        return when_follower(obs, memory, settings)
    return when_leaderless(obs, memory, settings)


def _refusing(
    obs: Observation, memory: Memory, settings: Settings, reason: str
) -> tuple[Decision, Memory]:
    """Refusing to join: a primary stops at once; a leader lets the lease go (on etcd our
    member record's keepalives would keep the leader key alive for good otherwise). Until
    a reinitialize request, which the refusal names as the way out, clones the leader (a
    request made after the first refusal was ignored while the agent ran)."""
    if obs.local.is_primary:
        return decided(memory, reason, fence(reason))
    view = obs.cluster
    i_lead = view is not None and view.leader is not None and view.leader.name == settings.name
    reinitialize = LocalRequestKind.REINITIALIZE in obs.local_requests
    if reinitialize and view is not None and view.leader is not None and not i_lead:
        return decided(
            memory, "reinitialize requested", Clone(source=view.leader.name, clear_first=True)
        )
    return decided(memory, reason, *((ReleaseLeader(),) if i_lead else ()))
