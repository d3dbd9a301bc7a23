"""`record_outcome`: the only way the result of an executed action reaches Memory. Every
action type has its case (`assert_never`); an UNREACHABLE result counts as LOST except where
a case says otherwise.
"""

from __future__ import annotations

from dataclasses import replace
from typing import assert_never

from agent.actions import (
    AcquireLeader,
    AppendHistory,
    Bootstrap,
    ClaimInitialize,
    ClearInitialize,
    ClearSwitchover,
    Clone,
    ConfirmFailsafe,
    Demote,
    DropStaleSlots,
    EnsureSlots,
    Exit,
    Follow,
    HandOver,
    PrePromote,
    Promote,
    Reconfigure,
    ReleaseLeader,
    RenewLeader,
    RestartPrimary,
    RestartWalReceiver,
    Rewind,
    SetConfig,
    SetFailsafeRecord,
    SetInitialize,
    SetLeaderPosition,
    SetRestartSchedule,
    SetSyncRecord,
    SetSyncStandbyNames,
    StartPostgres,
    StopPostgres,
)
from agent.decide.state import Memory, Outcome, Result
from agent.settings import Settings


def record_outcome(memory: Memory, outcome: Outcome, settings: Settings) -> Memory:
    """Fold one executed action's result into Memory: the only way a result reaches it.
    UNREACHABLE counts as LOST except where a case below says otherwise."""
    action = outcome.action
    failed = replace(memory, failed_at=outcome.sent_at)
    match action:
        case AcquireLeader() | RenewLeader() | ReleaseLeader() | HandOver() | ConfirmFailsafe():
            return _record_leadership(memory, action, outcome)
        case Bootstrap() | Clone() | Rewind() | StartPostgres():
            return _record_instance(memory, action, outcome)
        case Demote() | StopPostgres():
            return replace(memory, following=None, slots=None, sync_effective=None)
        case RestartPrimary():
            # The server ran (or runs now) afresh: its slots and synchronous_standby_names
            # are read again; a failure (the lease did not hold) is retried like any other.
            restarted = replace(memory, slots=None, sync_effective=None)
            return restarted if outcome.ok else replace(restarted, failed_at=outcome.sent_at)
        case Promote():
            if outcome.ok:
                return replace(
                    memory, following=None, slots=None, sync_effective=None, pre_promoted=None
                )
            return replace(failed, pre_promoted=None)
        case PrePromote(reason=reason):
            if outcome.ok:
                return replace(memory, pre_promoted=reason, promote_vetoed_at=None)
            # Any failure (a non-zero exit, a timeout, a command that did not start) vetoes.
            return replace(memory, pre_promoted=None, promote_vetoed_at=outcome.sent_at)
        case Follow(leader=leader):
            return replace(memory, following=leader) if outcome.ok else failed
        case EnsureSlots(names=names, permanent=permanent, synchronized=synchronized):
            if not outcome.ok:
                return failed
            return replace(
                memory, slots=names, permanent_slots=permanent, synchronized_slots=synchronized
            )
        case SetSyncStandbyNames(standbys=standbys):
            if outcome.ok:
                return replace(memory, sync_unreloaded=None)
            # The ALTER SYSTEM may have happened without the reload: the file holds it.
            return replace(memory, sync_unreloaded=standbys, sync_effective=None)
        case SetSyncRecord() | SetConfig() | SetFailsafeRecord():
            return memory
        case ClaimInitialize() | ClearInitialize() | SetInitialize() | ClearSwitchover():
            return memory
        case AppendHistory() | Exit() | SetRestartSchedule():
            return memory
        case DropStaleSlots() | RestartWalReceiver():
            # Nothing to remember: the next probe shows whether the copies are gone (asked
            # again while they are there), or whether the new WAL receiver streams (the stall
            # wait started again when the restart was decided); a failure is only logged.
            return memory
        case SetLeaderPosition():
            return replace(memory, position_written_at=outcome.sent_at) if outcome.ok else memory
        case Reconfigure(config=config):
            return replace(memory, pg_applied=config) if outcome.ok else memory
        case _:
            assert_never(action)


def _record_leadership(
    memory: Memory,
    action: AcquireLeader | RenewLeader | ReleaseLeader | HandOver | ConfirmFailsafe,
    outcome: Outcome,
) -> Memory:
    match action:
        case RenewLeader() if outcome.result is Result.UNREACHABLE:
            # Not lost: the DCS may have applied it or not (or applied it, and the fencer did
            # not take the new deadline). The lease stands until the fencing deadline armed
            # before (the executor retries the renewal: at once, or at the loop's pace when
            # the fencer was the one that did not answer). The next read leaves the retry its
            # time (`read_timeout_s`).
            return replace(memory, renewal_unanswered=True)
        case AcquireLeader() if outcome.ok:
            # Leading again: a hand-over done before (a switchover, a rolling restart) is over;
            # left set, a later SIGTERM would release the lease naming nobody.
            return replace(
                memory, lease_sent_at=outcome.sent_at, handed_over=False, renewal_unanswered=False
            )
        case AcquireLeader() | RenewLeader():
            return replace(
                memory,
                lease_sent_at=outcome.sent_at if outcome.ok else None,
                renewal_unanswered=False,
            )
        case ReleaseLeader():
            return replace(
                memory,
                lease_sent_at=None,
                renewal_unanswered=False,
                pre_promoted=None,
                pg_down_since=None,
                pg_hung_since=None,
                commit_stalled_since=None,
                handover_wait_since=None,
                failsafe_peers=None,
                failsafe_sent_at=None,
                failsafe_absent_since=(),
            )
        case HandOver(shutting_down=shutting_down):
            if not outcome.ok:
                failed = memory.shutdown_handover_failed or shutting_down
                return replace(memory, failed_at=outcome.sent_at, shutdown_handover_failed=failed)
            return replace(
                memory,
                lease_sent_at=None,
                handed_over=True,
                slots=None,
                failsafe_peers=None,
                failsafe_sent_at=None,
                failsafe_absent_since=(),
            )
        case ConfirmFailsafe():
            if outcome.result is Result.UNREACHABLE:
                # Every member confirmed but the fencer could not be armed for it: without a
                # fencer no confirmation counts (nobody would stop us if we stalled).
                return replace(memory, failsafe_sent_at=None)
            # A round not every member accepted changes nothing.
            return replace(memory, failsafe_sent_at=outcome.sent_at) if outcome.ok else memory
        case _:
            assert_never(action)


def _record_instance(
    memory: Memory, action: Bootstrap | Clone | Rewind | StartPostgres, outcome: Outcome
) -> Memory:
    if not outcome.ok:
        if isinstance(action, Rewind) and outcome.result is Result.LOST:
            # Only a rewind that ran and failed counts against rewinding (then: re-clone).
            return replace(
                memory, rewind_failures=memory.rewind_failures + 1, failed_at=outcome.sent_at
            )
        return replace(memory, failed_at=outcome.sent_at)
    match action:
        case Bootstrap():
            return memory
        case Clone(source=source):
            return replace(
                memory, following=source, rewind_failures=0, failed_at=None, refused=None
            )
        case Rewind(source=source):
            return replace(memory, following=source, rewind_failures=0, failed_at=None)
        case StartPostgres(upstream=upstream):
            return replace(memory, following=upstream, failed_at=None)
        case _:
            assert_never(action)
