"""What `decide()` can ask for, and its answer.

Actions are values. The executor (`executor.py`) runs a Decision's actions in order and stops at
the first one that fails or returns False (an acquire that lost the race must not be followed
by the promotion planned after it). Long actions (`is_long`) run as a tracked task while the
loop keeps renewing the lease; `decide()` sees them as `Observation.pending`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from agent.model import (
    DynamicConfig,
    FailsafeRecord,
    HistoryEntry,
    LeaderPosition,
    MemberName,
    PgConfig,
    RestartSchedule,
    SyncRecord,
    SyncStandbys,
)
from agent.slot_config import PermanentSlot


class StopMode(StrEnum):
    FAST = "fast"
    IMMEDIATE = "immediate"
    KILL = "kill"  # SIGKILL the postmaster and every child now: a server that does not answer


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimInitialize:
    """Create the `initialize` record (empty) if absent; False if another member has it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClearInitialize:
    """Withdraw a claim to bootstrap that never completed (the record's value is still "")."""

    version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SetInitialize:
    """Write the system identifier into our claimed `initialize` record."""

    system_id: str
    expected_version: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AcquireLeader:
    """Take the leader record (CAS); on success the fencer is armed from the send time."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewLeader:
    """Extend our lease; on success the fencer's deadline moves to send time + ttl - margin."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseLeader:
    """Delete the leader record if it is ours (PostgreSQL is stopped or a standby by then)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Bootstrap:
    """initdb, start as primary, create the replication role (long)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Clone:
    """pg_basebackup from `source` into an empty data directory, start as its standby (long)."""

    source: MemberName
    clear_first: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Rewind:
    """Stop if running, pg_rewind from `source`, start as its standby (long)."""

    source: MemberName


@dataclass(frozen=True, slots=True, kw_only=True)
class StartPostgres:
    """Start the local PostgreSQL: as a primary when `upstream` is None and `as_primary`,
    else as a standby of `upstream` (None: a standby with no upstream yet, read-only)."""

    upstream: MemberName | None
    as_primary: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class StopPostgres:
    """Stop PostgreSQL; `clear_data`: then empty the data directory (a bootstrap that did not
    complete, whose server never took a TCP client)."""

    mode: StopMode
    clear_data: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartPrimary:
    """Restart the leader's PostgreSQL in place (long: the lease is renewed meanwhile):
    CHECKPOINT while it still takes writes (so that the shutdown checkpoint is short), stop
    fast (bounded by shutdown_timeout_s), start as the primary (bounded by
    primary_start_timeout_s). The fencer stays armed throughout, and the start happens only
    while the lease is still ours (renewals may fail meanwhile): a primary that came up after
    its fencing deadline is stopped again at once."""


class PromoteReason(StrEnum):
    """Why a member is promoted (counted as a switchover or a failover; written into the
    DCS history)."""

    FAILOVER = "failover"
    SWITCHOVER = "switchover"  # also a failover to the candidate an operator named
    LEADER_IS_STANDBY = "leader is a standby"


@dataclass(frozen=True, slots=True, kw_only=True)
class Promote:
    """pg_promote(); only ever planned while holding the lease (after AcquireLeader)."""

    reason: PromoteReason


@dataclass(frozen=True, slots=True, kw_only=True)
class PrePromote:
    """Run the `pre_promote` callback while holding the lease, before promoting for `reason`
    (long: the lease is renewed meanwhile). Success lets the next decision plan `Promote`;
    a failure vetoes the promotion (agent/decide: the lease is released, no race for ttl)."""

    reason: PromoteReason


@dataclass(frozen=True, slots=True, kw_only=True)
class Follow:
    """Point a running standby at `leader` (ALTER SYSTEM + reload, no restart)."""

    leader: MemberName


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartWalReceiver:
    """A standby that has not streamed from `upstream` for `stalled_s` while `upstream`
    runs: stop its WAL receiver (SIGTERM), so that the startup process starts a new one on a
    new replication connection. Nothing else of the server changes."""

    upstream: MemberName
    stalled_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Demote:
    """Stop a primary that must not write any more; it rejoins as a replica later."""

    mode: StopMode
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EnsureSlots:
    """On the primary: a physical slot exists for each of `names`; the slots of `drop`
    (members gone longer than the grace period) are dropped when no walsender uses them."""

    names: tuple[MemberName, ...]
    drop: tuple[MemberName, ...] = ()
    # The permanent slots of the config record, created if missing (never dropped here).
    permanent: tuple[PermanentSlot, ...] = ()
    # synchronized_standby_slots (17+, failover slots): the slots of these members; None
    # leaves the setting alone (before 17 it does not exist).
    synchronized: tuple[MemberName, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DropStaleSlots:
    """On a standby that streams while a leader runs: drop our own copies of these permanent
    logical slots (not synchronized from the primary, unused; agent/slot_config.py
    `stale_copies`). The statement itself drops nothing on a primary or a slot in use."""

    names: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class HandOver:
    """Switchover from this leader to `candidate`, which streams from it and is caught up:
    write the switchover request if there is none (so only the candidate races), checkpoint,
    stop fast, wait until the candidate has received all WAL, write that position into the
    request (`handover_lsn`: the hand-over is complete), release the lease (long).

    On failure the request is deleted; PostgreSQL is started again as the primary (the lease
    was held throughout), unless `shutting_down`: then it stays stopped and the next decision
    releases the lease without naming anyone."""

    candidate: MemberName
    shutting_down: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ClearSwitchover:
    version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendHistory:
    entry: HistoryEntry
    expected_version: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SetConfig:
    """Write the DCS `config` record (CAS on `expected_version`; None: only if absent)."""

    config: DynamicConfig
    expected_version: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SetSyncRecord:
    """Write the DCS `sync` record (CAS on `expected_version`; None: only if absent)."""

    record: SyncRecord
    expected_version: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SetLeaderPosition:
    """Write the DCS `position` record (CAS on `expected_version`; None: only if absent):
    the leader's WAL position, read by candidates whose memory of it is gone."""

    position: LeaderPosition
    expected_version: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SetSyncStandbyNames:
    """On the primary: ALTER SYSTEM SET synchronous_standby_names to `standbys` (rendered by
    postgres/replication.py), and reload."""

    standbys: SyncStandbys


@dataclass(frozen=True, slots=True, kw_only=True)
class SetFailsafeRecord:
    """Write the DCS `failsafe` record (CAS on `expected_version`; None: only if absent);
    `record=None` deletes it."""

    record: FailsafeRecord | None
    expected_version: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfirmFailsafe:
    """Primary, DCS unreachable, failsafe mode: POST /failsafe to every member of `members`
    (name, api_url) at once. Never fails the decision: the executor records when the round
    was sent if every member accepted (it extends the fencing deadline), else nothing."""

    members: tuple[tuple[MemberName, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconfigure:
    """Render PostgreSQL's configuration files with the DCS `postgresql` section `config`
    (as agent/pgparams.py `dynamic_for` holds it back) and make a running server re-read
    them (SIGHUP); a stopped one reads them at its next start."""

    config: PgConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class SetRestartSchedule:
    """Write the DCS `restart` record (CAS on `expected_version`); `schedule=None` deletes it."""

    schedule: RestartSchedule | None
    expected_version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Exit:
    """Shutdown is complete: leave the loop."""


Action = (
    ClaimInitialize
    | ClearInitialize
    | SetInitialize
    | AcquireLeader
    | RenewLeader
    | ReleaseLeader
    | Bootstrap
    | Clone
    | Rewind
    | StartPostgres
    | StopPostgres
    | RestartPrimary
    | Promote
    | PrePromote
    | Follow
    | RestartWalReceiver
    | Demote
    | EnsureSlots
    | DropStaleSlots
    | HandOver
    | ClearSwitchover
    | AppendHistory
    | SetConfig
    | SetSyncRecord
    | SetLeaderPosition
    | SetSyncStandbyNames
    | SetFailsafeRecord
    | ConfirmFailsafe
    | Reconfigure
    | SetRestartSchedule
    | Exit
)

LONG_ACTIONS = (Bootstrap, Clone, Rewind, HandOver, PrePromote, RestartPrimary)


def is_long(action: Action) -> bool:
    return isinstance(action, LONG_ACTIONS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    actions: tuple[Action, ...]
    reason: str

    @property
    def summary(self) -> str:
        return ",".join(type(a).__name__ for a in self.actions) or "none"
