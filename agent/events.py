"""What happened to this member that an operator should see without reading logs: promoted
(by a failover or a switchover), demoted, fenced, handed over (on SIGTERM or for a
switchover), rewound, re-cloned, failsafe entered or left, a stuck WAL receiver restarted.
Pure values and the protocol the loop reports them through; agent/kube/events.py publishes
them as Kubernetes Events, and `NoEvents` drops them (no Kubernetes settings, or events
turned off).

`EventSink.record` never blocks and never raises: it is called from the HA loop and its
executor, which must not wait on an API server to report what they already did.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from agent.actions import (
    Action,
    Clone,
    Demote,
    HandOver,
    Promote,
    PromoteReason,
    RestartWalReceiver,
    Rewind,
)


class EventReason(StrEnum):
    """Why (the Event's `reason`), in the CamelCase Kubernetes uses."""

    FAILOVER = "Failover"  # promoted after the leader was lost
    SWITCHOVER = "Switchover"  # promoted as the candidate of a switchover
    PROMOTED = "Promoted"  # promoted for another reason (the leader is a standby cluster)
    DEMOTED = "Demoted"
    FENCED = "Fenced"
    HANDED_OVER = "HandedOver"  # the old primary's side of a switchover
    SHUTDOWN_HANDOVER = "ShutdownHandOver"  # the same, on SIGTERM (pod deletion, drain)
    REWIND = "Rewind"
    RECLONE = "Reclone"
    FAILSAFE_ENTERED = "FailsafeEntered"
    FAILSAFE_LEFT = "FailsafeLeft"
    WAL_RECEIVER_RESTARTED = "WalReceiverRestarted"  # not streaming for wal_receiver_stall_s


# What the agent did (the Event's `action`).
_ACTIONS: dict[EventReason, str] = {
    EventReason.FAILOVER: "Promote",
    EventReason.SWITCHOVER: "Promote",
    EventReason.PROMOTED: "Promote",
    EventReason.DEMOTED: "Demote",
    EventReason.FENCED: "Fence",
    EventReason.HANDED_OVER: "HandOver",
    EventReason.SHUTDOWN_HANDOVER: "HandOver",
    EventReason.REWIND: "Rewind",
    EventReason.RECLONE: "Reclone",
    EventReason.FAILSAFE_ENTERED: "KeepPrimary",
    EventReason.FAILSAFE_LEFT: "KeepPrimary",
    EventReason.WAL_RECEIVER_RESTARTED: "RestartWalReceiver",
}
_WARNINGS = frozenset(
    {
        EventReason.FENCED,
        EventReason.FAILSAFE_ENTERED,
        EventReason.FAILOVER,
        EventReason.WAL_RECEIVER_RESTARTED,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One happening on this member; `note` says it to a human (one line)."""

    reason: EventReason
    note: str

    @property
    def action(self) -> str:
        return _ACTIONS[self.reason]

    @property
    def warning(self) -> bool:
        """Warning (something went wrong, or may have) rather than Normal."""
        return self.reason in _WARNINGS


class EventSink(Protocol):
    def record(self, event: Event) -> None:
        """Report `event`; never blocks, never raises."""
        ...


class NoEvents:
    """Drops every event."""

    def record(self, event: Event) -> None:
        pass


_PROMOTIONS: dict[PromoteReason, EventReason] = {
    PromoteReason.FAILOVER: EventReason.FAILOVER,
    PromoteReason.SWITCHOVER: EventReason.SWITCHOVER,
    PromoteReason.LEADER_IS_STANDBY: EventReason.PROMOTED,
}


def event_for(action: Action) -> Event | None:
    """The event an action that completed makes, if it is one an operator should see."""
    match action:
        case Promote(reason=reason):
            return Event(reason=_PROMOTIONS[reason], note=f"promoted to primary ({reason.value})")
        case Demote(mode=mode, reason=reason):
            return Event(reason=EventReason.DEMOTED, note=f"demoted ({mode.value} stop): {reason}")
        case HandOver(candidate=candidate, shutting_down=True):
            note = f"shutting down: handed leadership over to {candidate}"
            return Event(reason=EventReason.SHUTDOWN_HANDOVER, note=note)
        case HandOver(candidate=candidate):
            return Event(reason=EventReason.HANDED_OVER, note=f"handed leadership to {candidate}")
        case Rewind(source=source):
            return Event(reason=EventReason.REWIND, note=f"rewound with pg_rewind from {source}")
        case Clone(source=source, clear_first=True):
            note = f"data directory replaced by a new copy from {source}"
            return Event(reason=EventReason.RECLONE, note=note)
        case RestartWalReceiver(upstream=upstream, stalled_s=stalled_s):
            note = (
                f"not streaming from {upstream} for {stalled_s:.0f} s while it runs: "
                "WAL receiver restarted"
            )
            return Event(reason=EventReason.WAL_RECEIVER_RESTARTED, note=note)
        case _:
            return None


def failsafe_event(was_active: bool, active: bool) -> Event | None:
    """The event of a change of the failsafe state of this primary, if it changed."""
    if active and not was_active:
        note = "DCS unreachable: kept primary because every member confirmed it"
        return Event(reason=EventReason.FAILSAFE_ENTERED, note=note)
    if was_active and not active:
        return Event(reason=EventReason.FAILSAFE_LEFT, note="failsafe mode left")
    return None
