"""What the agent publishes about itself each cycle (`AgentStatus`) and the local requests it
accepts."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from agent.archiving import ArchiverStats
from agent.model.basics import Lsn, MemberName, PgState, Role, SyncRole
from agent.model.local import ReplicationRow
from agent.model.records import ClusterView
from agent.slot_config import SlotState


class LocalRequestKind(StrEnum):
    """Operator requests that concern only this member (not written to the DCS)."""

    RESTART = "restart"
    REINITIALIZE = "reinitialize"
    RELOAD = "reload"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStatus:
    """What the agent publishes after every cycle. The API, metrics and pod labels read only this.

    `fence_remaining_s` is the time left before this member's fencing deadline (None when it is
    not primary). `lag_bytes` is the distance from the leader's published WAL position.
    """

    name: MemberName
    cluster: str
    role: Role
    state: PgState
    api_url: str
    timeline: int | None = None
    wal_lsn: Lsn | None = None
    replay_lsn: Lsn | None = None
    lag_bytes: int | None = None
    leader: MemberName | None = None
    lease_held: bool = False
    lease_age_s: float | None = None  # since the last successful renewal was sent
    fence_remaining_s: float | None = None
    dcs_ok: bool = False
    paused: bool = False
    pending: str | None = None  # the long action in flight, if any
    last_decision: str = ""
    last_reason: str = ""
    cycle: int = 0
    observed_at: float = 0.0  # monotonic
    cluster_view: ClusterView | None = None
    replication: tuple[ReplicationRow, ...] = ()
    sync_role: SyncRole = SyncRole.NONE
    sync_fallback: bool = False  # leader: synchronous mode asked, but commits are asynchronous
    failsafe_active: bool = False  # primary kept by its members' confirmation (DCS down)
    promotion_vetoed: bool = False  # pre_promote vetoed our promotion within the last ttl
    pending_restart: tuple[str, ...] = ()  # parameters whose new value waits for a restart
    upstream: MemberName | None = None  # a replica: whom it was last pointed at
    noloadbalance: bool = False  # tagged: /replica and a replica's /read-only answer 503
    archiver: ArchiverStats | None = None  # pg_stat_archiver; None: archiving off
    slots: tuple[SlotState, ...] = ()  # the local server's replication slots
