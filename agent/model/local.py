"""What the probe reads from the local PostgreSQL: one immutable `LocalState` per probe."""

from __future__ import annotations

from dataclasses import dataclass

from agent.archiving import ArchiverStats
from agent.model.basics import Lsn, StandbySyncState, WalSenderState
from agent.slot_config import SlotState


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicationRow:
    """One row of pg_stat_replication on a primary."""

    application_name: str
    state: WalSenderState
    sync_state: StandbySyncState
    sent_lsn: Lsn | None
    write_lsn: Lsn | None
    flush_lsn: Lsn | None
    replay_lsn: Lsn | None
    # pg_stat_replication.flush_lag in seconds (None: not measured, or caught up and idle).
    flush_lag_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncStandbys:
    """What `synchronous_standby_names` asks of commits: `count` confirmations from `names`
    (the `count` first-listed connected ones with `quorum=False`, any `count` with True).
    `count == 0` (no names) is asynchronous replication."""

    quorum: bool
    count: int
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlData:
    """The parts of pg_controldata the agent needs while PostgreSQL is stopped."""

    system_id: str
    cluster_state: str  # "in production", "shut down", "shut down in recovery", ...
    timeline: int
    checkpoint_lsn: Lsn
    min_recovery_end_lsn: Lsn | None
    # The timeline of min_recovery_end_lsn: a standby that replayed into a newer timeline
    # before it stopped (and made no restartpoint there yet) is on that timeline.
    min_recovery_end_timeline: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalState:
    """One probe of the local PostgreSQL. `running=False` leaves the SQL fields None.

    `wal_lsn` is the member's WAL position for comparing candidates: on a primary the
    current write LSN; on a replica the larger of received and replayed, and, while it is not
    streaming and still replaying what it holds, the end of the valid WAL in its pg_wal (a
    restarted standby must not look further behind than it is: agent/postgres/probe.py).
    """

    data_dir_initialized: bool
    running: bool
    postmaster_pid: int | None = None
    # A postmaster process exists but did not answer the probe's query in time (stopped,
    # stuck in I/O): hung, not down. A server that answers with an error (starting up,
    # shutting down) is not unresponsive.
    unresponsive: bool = False
    # A postmaster process exists, refuses connections, and runs no startup process: neither
    # starting nor recovering. For seconds, normal (its crash cycle, a shutdown); PostgreSQL
    # 18 stays so for good after its startup process PANICked in crash recovery (a standby
    # whose disk was full: chaos random mix, issue 16).
    postmaster_idle: bool = False
    # A primary that answers queries but could not commit the probe's heartbeat transaction
    # in time (storage under pg_wal hung or failing): it cannot acknowledge writes.
    commit_stalled: bool = False
    in_recovery: bool | None = None
    system_id: str | None = None
    timeline: int | None = None
    wal_lsn: Lsn | None = None
    receive_lsn: Lsn | None = None
    replay_lsn: Lsn | None = None
    streaming: bool = False
    upstream: str | None = None  # application-level name of who we stream from, if known
    replication: tuple[ReplicationRow, ...] = ()
    control: ControlData | None = None
    # Read while the server does not answer: the data directory holds `backup_label`, a base
    # backup (pg_basebackup, a restore) whose recovery has not started yet. Its pg_control
    # still says "in production" (its source's state) until the startup process, after it
    # synced the whole directory, reads the label: it never ran as a primary here.
    backup_label: bool = False
    # current_setting('synchronous_standby_names') as parsed by the probe; None when not read.
    # A value the agent cannot read is reported as FIRST 1 ("*") (any standby: the worst case).
    sync_standbys: SyncStandbys | None = None
    # The value the configuration files hold for it (pg_file_settings: what the next reload
    # applies), when it differs from the running one; None when equal, unset or not read.
    # A change whose reload failed left it there (agent/decide/sync.py `_unreloaded`).
    sync_standbys_pending: SyncStandbys | None = None
    # listen_addresses is empty: the server takes no TCP client (a bootstrap runs, or one
    # that did not complete: agent/decide/__init__.py).
    socket_only: bool = False
    # The data directory holds the marker of a bootstrap that has not completed (running or
    # not: a pod that died during post_bootstrap).
    bootstrap_incomplete: bool = False
    # A copy into the data directory did not complete (pg_basebackup, a restore, pg_rewind
    # killed or failed midway: agent/postgres/datadir.py `copy_marker`). The probe then
    # reports no data (data_dir_initialized False, no control data): what is there must never
    # be started, promoted or compared; a postmaster found running on it is stopped.
    copy_incomplete: bool = False
    # pg_settings: the parameters whose new value waits for a restart, and what the server
    # runs with for the settings a hot standby needs at least as high as its primary.
    pending_restart: tuple[str, ...] = ()
    hot_standby: tuple[tuple[str, int], ...] = ()
    # pg_stat_archiver (agent/archiving.py); None while archive_mode is off or unread.
    archiver: ArchiverStats | None = None
    # The major version of the local PostgreSQL binaries (`postgres --version`); None until
    # known. A member never clones, rewinds or streams from a leader of another major.
    pg_major: int | None = None
    slots: tuple[SlotState, ...] = ()  # pg_replication_slots

    @property
    def is_primary(self) -> bool:
        return self.running and self.in_recovery is False

    @property
    def is_replica(self) -> bool:
        return self.running and self.in_recovery is True
