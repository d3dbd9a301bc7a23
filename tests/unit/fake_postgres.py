"""An in-memory PostgreSQL that keeps `agent.postgres.control.PostgresControl`.

One `FakeCluster` holds the instances of a test cluster; an instance is addressed by its
host (the member's `postgresql.connect_host`). Each instance has a data directory
(`DataDir`: system id, timeline, WAL end, timeline history, control-file state) and runs as a
primary, a standby, or not at all. Behaviour it keeps, as docs/facts.md ("PostgreSQL 15",
"pg_rewind, slots and failover-slot synchronization") describes PostgreSQL:
- a write on a primary advances its WAL; every running standby whose conninfo names a
  running upstream receives it (`FakeCluster.replicate`, run on every probe and stop), and
  follows a timeline switch of its upstream if its WAL is contained in the new history;
- a fast stop of a primary writes a shutdown checkpoint and ships it to its standbys first;
  an immediate stop, a SIGKILL or a crash leaves the control file "in production";
- promote starts a new timeline (unique in the cluster) at the current WAL end and records
  the switch in the history file (`last_timeline_switch`);
- a standby whose WAL is not contained in its upstream's history (diverged) does not stream:
  only `rewind` (or a fresh `clone`) brings it back;
- replication slots (PostgreSQL 17+ with failover slots on): logical permanent slots are
  created on the primary; a standby streaming straight from a primary holds a synchronized
  copy of each (the slot sync worker), unless a slot of the same name that was not
  synchronized is there (the worker refuses to overwrite it); pg_rewind empties the target's
  pg_replslot when it rewinds and leaves it when it finds no rewind required (a clean
  switchover); pg_basebackup copies none; a promoted standby keeps its synchronized
  copies (still marked synced, as PostgreSQL leaves them); dropping a standby's own copies
  drops nothing on a primary, a synchronized copy or a physical slot;
- a data directory last running as a standby and started as a primary is promoted;
- a server started `socket_only` (`tcp` False) can be neither cloned nor streamed from until
  `open_to_clients` restarts it listening on TCP;
- DCS parameters (`apply_dynamic`): a reload applies the others at once; `RESTART_PARAMETERS`
  (shared_buffers and the hot-standby minimums) only at the next start, and meanwhile the
  instance reports them pending restart; a standby whose hot-standby minimums are below its
  upstream's refuses to start ("insufficient parameter settings").

Copies into the data directory (`clone`, `rewind`) are not atomic: each first leaves a
`torn` data directory (a half-copied clone with no usable control file, or a half-rewound
mix of both systems under the old one) and the copy marker (`copying`, outside the data
directory: the agent's `copy_marker`), calls the `midway` hook (the crash-point harness kills
the agent there: tests/unit/fakes/crash.py), then completes and removes the marker. While the
marker is there the probe reports no data (`copy_incomplete`), as the agent's probe does; a
torn data directory that is started anyway starts (PostgreSQL may, from a half-rewound one)
and is recorded in `torn_starts`, which the crash-point sweep counts as a violation.

Fault injection (test controls): `fail(op, exc, times)` makes the next calls of an operation
raise; `gate(op)` makes an operation wait until the test opens the gate (a long action that
hangs, or a crash in the middle of one); `crash()` kills the postmaster; `hang()` makes it
stop answering (probes report it unresponsive, SQL times out) until `resume()` or a kill;
`linger()` leaves a postmaster that refuses connections until it is killed.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

from agent.model import (
    ControlData,
    LocalState,
    Lsn,
    Member,
    PgConfig,
    ReplicationRow,
    StandbySyncState,
    SyncStandbys,
    WalSenderState,
)
from agent.pgparams import HOT_STANDBY
from agent.postgres.bootstrap import SourceUnreachable
from agent.postgres.process import PostgresError, StandbyConfig, StopMode
from agent.slot_config import PermanentSlot, SlotState, SlotType

START_LSN = 0x1000000  # where a fresh cluster's WAL ends
WRITE_BYTES = 128  # the WAL one write adds
CHECKPOINT_BYTES = 104  # a checkpoint or end-of-recovery record
RESTART_PARAMETERS = frozenset({"shared_buffers", *HOT_STANDBY})
DEFAULT_HOT_STANDBY = 100  # what an instance runs each hot-standby minimum with by default


@dataclass(frozen=True, slots=True, kw_only=True)
class DataDir:
    system_id: str
    timeline: int
    lsn: Lsn  # the end of the WAL it holds
    history: tuple[tuple[int, Lsn], ...] = ()  # (the timeline that ended, where), oldest first
    was_primary: bool = True  # it last ran as a primary
    clean: bool = True  # shut down cleanly (or running)
    checkpoint_lsn: Lsn = START_LSN
    incomplete: bool = False  # the marker of a bootstrap that has not completed
    torn: bool = False  # a copy into it (clone, rewind) stopped midway: not usable

    def holds(self, timeline: int, lsn: Lsn) -> bool:
        """This WAL contains the position (timeline, lsn): no divergence from it."""
        if timeline == self.timeline:
            return lsn <= self.lsn
        return any(tli == timeline and lsn <= end for tli, end in self.history)

    def control(self) -> ControlData:
        if self.was_primary:
            state = "shut down" if self.clean else "in production"
        else:
            state = "shut down in recovery" if self.clean else "in archive recovery"
        return ControlData(
            system_id=self.system_id,
            cluster_state=state,
            timeline=self.timeline,
            checkpoint_lsn=self.checkpoint_lsn,
            min_recovery_end_lsn=None if self.was_primary else self.lsn,
        )


class FakeCluster:
    """The PostgreSQL instances of one test cluster."""

    def __init__(self) -> None:
        self.instances: dict[str, FakePostgres] = {}
        self._timelines = itertools.count(2)
        self._system_ids = itertools.count(7_300_000_000_000_000_001)
        self._pids = itertools.count(4000)

    def add(self, host: str) -> FakePostgres:
        pg = FakePostgres(self, host)
        self.instances[host] = pg
        return pg

    def next_timeline(self) -> int:
        return next(self._timelines)

    def next_system_id(self) -> str:
        return str(next(self._system_ids))

    def next_pid(self) -> int:
        return next(self._pids)

    def replicate(self) -> None:
        """Every running standby receives what its running upstream holds, if it can."""
        for _ in range(len(self.instances)):  # cascades settle within n rounds
            for pg in self.instances.values():
                pg.receive()

    def primaries(self) -> list[str]:
        return [h for h, pg in self.instances.items() if pg.is_primary]


class FakePostgres:
    """One instance; keeps the PostgresControl protocol."""

    def __init__(self, cluster: FakeCluster, host: str) -> None:
        self.cluster = cluster
        self.host = host
        self.data: DataDir | None = None
        self.running = False
        self.in_recovery = False
        self.conninfo: StandbyConfig | None = None  # primary_conninfo / slot, when a standby
        self.streaming = False
        self.receiving = True  # False: cut off from its upstream (the WAL receiver gets nothing)
        # True: its WAL receiver hangs in a connection that never answers (stick_receiver)
        # until restart_wal_receiver; a new receiver streams again if `receiving`.
        self.receiver_stuck = False
        self.stuck_path = False  # True: every new WAL receiver hangs the same way (the fault stays)
        self.receiver_restarts = 0
        self.hung = False
        self.lingering = False  # see linger()
        self.slots: set[str] = set()
        self.logical: set[str] = set()  # the logical ones among `slots`
        self.synced: set[str] = set()  # the logical ones the slot sync worker made
        self.sync = SyncStandbys(quorum=False, count=0, names=())
        self.synchronized_standby_slots: tuple[str, ...] = ()
        self.calls: list[str] = []
        # Each rewind's bound on retrying an unreachable source (None: its whole timeout).
        self.rewind_unreachable_s: list[float | None] = []
        self.stops: list[StopMode] = []
        self._pid: int | None = None
        self._exited = asyncio.Event()
        self._failures: dict[str, list[Exception]] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self.dynamic = PgConfig()  # the DCS parameters its configuration file holds
        self.running_params: dict[str, str] = {}  # what the server runs with
        self.tcp = False  # listens on TCP too (not only its Unix socket), while running
        self.copying = False  # the copy marker: a clone or rewind began and has not completed
        self.midway: Callable[[str], None] | None = None  # called halfway through a copy
        self.torn_starts: list[str] = []  # starts of a torn data directory (must stay empty)

    # ------------------------------------------------------------------ test controls

    def hot_standby(self) -> tuple[tuple[str, int], ...]:
        return tuple((n, int(self.running_params.get(n, DEFAULT_HOT_STANDBY))) for n in HOT_STANDBY)

    def pending_restart(self) -> tuple[str, ...]:
        wanted = dict(self.dynamic.parameters)
        return tuple(
            sorted(
                n
                for n in RESTART_PARAMETERS
                if wanted.get(n, self._default(n)) != self.running_params.get(n, self._default(n))
            )
        )

    @staticmethod
    def _default(name: str) -> str:
        return str(DEFAULT_HOT_STANDBY) if name in HOT_STANDBY else ""

    @property
    def is_primary(self) -> bool:
        return self.running and not self.in_recovery and not self.hung

    @property
    def lsn(self) -> Lsn:
        assert self.data is not None
        return self.data.lsn

    def fail(self, op: str, exc: Exception | None = None, *, times: int = 1) -> None:
        """The next `times` calls of `op` raise `exc` (a PostgresError by default)."""
        error = exc if exc is not None else PostgresError(f"{op}: injected failure")
        self._failures.setdefault(op, []).extend([error] * times)

    def gate(self, op: str) -> asyncio.Event:
        """`op` waits until the returned event is set (then the gate is gone)."""
        event = asyncio.Event()
        self._gates[op] = event
        return event

    def write(self, count: int = 1) -> Lsn:
        """`count` commits on a running primary; returns the new WAL end."""
        if not self.is_primary or self.data is None:
            raise PostgresError(f"{self.host}: not a writable primary")
        self.data = replace(self.data, lsn=self.data.lsn + WRITE_BYTES * count)
        self.cluster.replicate()
        return self.data.lsn

    def crash(self) -> None:
        """The postmaster dies (no shutdown checkpoint)."""
        if self.running and self.data is not None:
            self.data = replace(self.data, clean=False)
        self._gone()

    def hang(self) -> None:
        self.hung = True

    def linger(self) -> None:
        """The postmaster is on its way out but still there (a crash it has not finished, a
        standby whose startup process failed on a full disk): it refuses connections while
        postmaster.pid still says "ready", so `start` returns at once, as the real one (which
        only waits for that line when a postmaster exists) does. `crash()` ends it."""
        self.lingering = True
        self.running = False
        self.streaming = False

    def stick_receiver(self) -> None:
        """The WAL receiver hangs in its connection's start-up on a peer that acknowledges
        and never answers: nothing streams until `restart_wal_receiver` (PostgreSQL itself
        never gives up on it: chaos finding 17)."""
        self.receiver_stuck = True
        self.streaming = False

    def resume(self) -> None:
        self.hung = False

    def receive(self) -> None:
        """As a running standby: take what the upstream holds, if our WAL is in its history."""
        if not (self.running and self.in_recovery and not self.hung) or self.data is None:
            return
        up = self.cluster.instances.get(self.conninfo.primary_host) if self.conninfo else None
        self.streaming = False
        if not self.receiving or self.receiver_stuck:
            return
        if up is None or not up.serves_tcp() or up.data is None:
            return
        if up.data.system_id != self.data.system_id:
            return
        if not up.data.holds(self.data.timeline, self.data.lsn):
            return  # diverged: the WAL receiver gives up, pg_rewind is needed
        self.streaming = True
        self.data = replace(
            self.data, timeline=up.data.timeline, lsn=up.data.lsn, history=up.data.history
        )
        if not up.in_recovery:  # the slot sync worker syncs from a primary only
            for name in up.logical - self.slots:
                self.slots.add(name)
                self.logical.add(name)
                self.synced.add(name)

    # ------------------------------------------------------------------ internals

    async def _enter(self, op: str, *, sql: bool = False) -> None:
        self.calls.append(op)
        await asyncio.sleep(0)
        gate = self._gates.pop(op, None)
        if gate is not None:
            await gate.wait()
        failures = self._failures.get(op)
        if failures:
            raise failures.pop(0)
        if sql and not self.running:
            raise PostgresError(f"{op}: connection refused (not running)")
        if sql and self.hung:
            raise PostgresError(f"{op}: TimeoutError() (the server does not answer)")

    def _gone(self) -> None:
        self.receiver_stuck = False  # the next start has a new WAL receiver
        self.lingering = False
        self.running = False
        self.streaming = False
        self.hung = False
        self._pid = None
        self._exited.set()

    def _require_primary(self, op: str) -> DataDir:
        if not self.running or self.in_recovery or self.data is None:
            raise PostgresError(f"{op}: not a primary")
        return self.data

    # ------------------------------------------------------------------ PostgresControl

    def pid(self) -> int | None:
        return self._pid

    async def wait_for_exit(self) -> None:
        if self._pid is None:
            return
        await self._exited.wait()

    async def probe(self, *, timeout_s: float) -> LocalState:
        self.calls.append("probe")
        self.cluster.replicate()
        data = self.data
        if self.copying:
            return LocalState(
                data_dir_initialized=False,
                running=self.running and not self.hung,
                postmaster_pid=self._pid,
                copy_incomplete=True,
            )
        if not self.running or self.hung or data is None:
            return LocalState(
                data_dir_initialized=data is not None,
                running=False,
                postmaster_pid=self._pid,
                unresponsive=self.hung and self._pid is not None,
                control=data.control() if data is not None else None,
                bootstrap_incomplete=data is not None and data.incomplete,
            )
        if self.in_recovery:
            return LocalState(
                data_dir_initialized=True,
                running=True,
                postmaster_pid=self._pid,
                in_recovery=True,
                system_id=data.system_id,
                timeline=data.timeline,
                wal_lsn=data.lsn,
                receive_lsn=data.lsn if self.streaming else None,
                replay_lsn=data.lsn,
                streaming=self.streaming,
                upstream=self.conninfo.primary_host if self.streaming and self.conninfo else None,
                sync_standbys=self.sync,
                socket_only=not self.tcp,
                bootstrap_incomplete=data.incomplete,
                pending_restart=self.pending_restart(),
                hot_standby=self.hot_standby(),
                slots=self._slot_states(),
            )
        return LocalState(
            data_dir_initialized=True,
            running=True,
            postmaster_pid=self._pid,
            in_recovery=False,
            system_id=data.system_id,
            timeline=data.timeline,
            wal_lsn=data.lsn,
            replication=self._replication_rows(),
            sync_standbys=self.sync,
            socket_only=not self.tcp,
            bootstrap_incomplete=data.incomplete,
            pending_restart=self.pending_restart(),
            hot_standby=self.hot_standby(),
            slots=self._slot_states(),
        )

    def _slot_states(self) -> tuple[SlotState, ...]:
        return tuple(
            SlotState(
                name=name,
                type="logical" if name in self.logical else "physical",
                active=False,
                synced=name in self.synced,
            )
            for name in sorted(self.slots)
        )

    def _replication_rows(self) -> tuple[ReplicationRow, ...]:
        rows = []
        for name, pg in sorted(self.cluster.instances.items()):
            if pg.streaming and pg.conninfo is not None and pg.conninfo.primary_host == self.host:
                assert pg.data is not None
                named = name in self.sync.names or "*" in self.sync.names
                sync_state = (
                    (StandbySyncState.QUORUM if self.sync.quorum else StandbySyncState.SYNC)
                    if named
                    else StandbySyncState.ASYNC
                )
                lsn = pg.data.lsn
                rows.append(
                    ReplicationRow(
                        application_name=pg.conninfo.application_name,
                        state=WalSenderState.STREAMING,
                        sync_state=sync_state,
                        sent_lsn=lsn,
                        write_lsn=lsn,
                        flush_lsn=lsn,
                        replay_lsn=lsn,
                    )
                )
        return tuple(rows)

    async def close_probe(self) -> None:
        self.calls.append("close_probe")

    async def start(
        self, *, standby: StandbyConfig | None, timeout_s: float, socket_only: bool = False
    ) -> None:
        await self._enter("start")
        if self.running or self.lingering:
            return
        self.tcp = not socket_only
        if self.data is None:
            raise PostgresError(f"{self.host}: data directory is not initialized")
        if self.data.torn:
            self.torn_starts.append(f"{self.host}: started on a torn data directory")
        promote = standby is None and not self.data.was_primary
        params = dict(self.dynamic.parameters)
        up = self.cluster.instances.get(standby.primary_host) if standby is not None else None
        if up is not None and up.running:
            for name, minimum in up.hot_standby():
                if int(params.get(name, DEFAULT_HOT_STANDBY)) < minimum:
                    raise PostgresError(
                        f"{self.host}: hot standby is not possible because of insufficient "
                        f"parameter settings: {name} = {params.get(name)} is lower than on "
                        f"the primary ({minimum})"
                    )
        self.running_params = params
        self.conninfo = standby
        self.in_recovery = standby is not None or promote
        self.running = True
        self.data = replace(self.data, clean=True)  # crash recovery, if it was needed
        self._pid = self.cluster.next_pid()
        self._exited = asyncio.Event()
        self.cluster.replicate()
        if promote:
            await self.promote(timeout_s=timeout_s)

    async def stop(self, mode: StopMode, *, timeout_s: float) -> None:
        await self._enter("stop")
        self.stops.append(mode)
        if self._pid is None or self.data is None:
            return
        clean = mode in (StopMode.SMART, StopMode.FAST) and not self.hung
        if clean and not self.in_recovery:
            # The shutdown checkpoint, shipped to the standbys before the WAL senders exit.
            end = self.data.lsn
            self.data = replace(self.data, checkpoint_lsn=end, lsn=end + CHECKPOINT_BYTES)
            self.cluster.replicate()
        elif clean:
            self.data = replace(self.data, checkpoint_lsn=self.data.lsn)
        self.data = replace(self.data, clean=clean, was_primary=not self.in_recovery)
        self._gone()
        self.cluster.replicate()

    def serves_tcp(self) -> bool:
        """Reachable by a client over TCP (pg_basebackup, pg_rewind, a WAL receiver)."""
        return self.running and self.tcp and not self.hung

    async def open_to_clients(self, *, timeout_s: float) -> None:
        await self._enter("open_to_clients", sql=True)
        if self.data is not None:
            self.data = replace(self.data, incomplete=False)
        self.tcp = True  # the restart it takes is not modelled (nothing else changes)

    async def promote(self, *, timeout_s: float) -> None:
        await self._enter("promote", sql=True)
        if not self.in_recovery or self.data is None:
            return
        old, end = self.data.timeline, self.data.lsn
        self.data = replace(
            self.data,
            timeline=self.cluster.next_timeline(),
            lsn=end + CHECKPOINT_BYTES,
            history=(*self.data.history, (old, end)),
            was_primary=True,
        )
        self.in_recovery = False
        self.streaming = False
        self.conninfo = None
        self.cluster.replicate()

    async def follow(self, standby: StandbyConfig) -> None:
        await self._enter("follow", sql=True)
        if standby != self.conninfo:
            self.receiver_stuck = False  # a changed primary_conninfo restarts the receiver
        self.conninfo = standby
        self.cluster.replicate()

    async def restart_wal_receiver(self) -> int | None:
        await self._enter("restart_wal_receiver", sql=True)
        if not self.in_recovery or self.conninfo is None:
            return None
        self.receiver_restarts += 1
        self.receiver_stuck = self.stuck_path
        self.cluster.replicate()
        return 9999

    async def initdb(self) -> None:
        await self._enter("initdb")
        if self.copying:  # the remains of an interrupted copy are discarded first
            self.data, self.copying = None, False
        if self.data is not None:
            raise PostgresError(f"initdb: data directory of {self.host} is not empty")
        self.data = DataDir(
            system_id=self.cluster.next_system_id(), timeline=1, lsn=START_LSN, incomplete=True
        )

    async def create_roles(self) -> None:
        await self._enter("create_roles", sql=True)
        self._require_primary("create_roles")

    def clear_data_dir(self) -> None:
        self.calls.append("clear_data_dir")
        if self.running:
            raise PostgresError("clear_data_dir: the postmaster runs")
        self.data = None
        self.slots, self.logical, self.synced = set(), set(), set()

    async def clone(self, standby: StandbyConfig, *, timeout_s: float) -> None:
        await self._enter("clone")
        if self.data is not None and not self.copying:
            raise PostgresError(f"clone: data directory of {self.host} is not empty")
        self.copying, self.data = True, None
        source = self.cluster.instances.get(standby.primary_host)
        if source is None or not source.serves_tcp() or source.data is None:
            raise PostgresError(f"pg_basebackup: could not connect to {standby.primary_host}")
        self.data = replace(source.data, was_primary=False, torn=True)
        self._halfway("clone")
        self.data = replace(source.data, was_primary=False, clean=True)
        self.conninfo = standby
        self.copying = False

    async def rewind(
        self, standby: StandbyConfig, *, timeout_s: float, unreachable_s: float | None = None
    ) -> None:
        self.rewind_unreachable_s.append(unreachable_s)
        await self._enter("rewind")
        if self.running or self.data is None:
            raise PostgresError("rewind: the data directory must be stopped and initialized")
        source = self.cluster.instances.get(standby.primary_host)
        if source is None or not source.serves_tcp() or source.data is None:
            raise SourceUnreachable(f"rewind: source {standby.primary_host} unreachable")
        if source.data.system_id != self.data.system_id:
            raise PostgresError("pg_rewind: source and target clusters are from different systems")
        # A rewind of what an interrupted rewind left cannot repair it: the target's own WAL
        # after the fork, which says which blocks to fetch, may be gone; the result stays torn.
        torn = self.data.torn
        self.copying = True  # the agent's marker, before pg_rewind changes anything
        self.data = replace(self.data, torn=True)
        self._halfway("rewind")
        if not source.data.holds(self.data.timeline, self.data.lsn):
            # A rewind that changes the data directory empties pg_replslot; "no rewind
            # required" (a clean switchover) leaves everything, our own slots included.
            self.slots, self.logical, self.synced = set(), set(), set()
        self.data = replace(source.data, was_primary=False, clean=True, torn=torn)
        self.conninfo = standby
        self.copying = False

    def _halfway(self, op: str) -> None:
        if self.midway is not None:
            self.midway(op)  # may raise: the agent died there, the copy stays torn

    async def set_slots(
        self,
        *,
        ensure: Collection[str],
        drop: Collection[str],
        permanent: Collection[PermanentSlot] = (),
        synchronized: Collection[str] | None = None,
    ) -> None:
        await self._enter("set_slots", sql=True)
        self._require_primary("set_slots")
        self.slots = (self.slots | set(ensure) | {s.name for s in permanent}) - set(drop)
        self.logical |= {s.name for s in permanent if s.type == SlotType.LOGICAL}
        if synchronized is not None:
            self.synchronized_standby_slots = tuple(sorted(synchronized))

    async def drop_stale_logical_slots(self, names: Collection[str]) -> None:
        await self._enter("drop_stale_logical_slots", sql=True)
        if not self.in_recovery:
            return
        stale = (set(names) & self.logical) - self.synced
        self.slots -= stale
        self.logical -= stale

    async def set_sync_standbys(self, standbys: SyncStandbys, *, timeout_s: float) -> None:
        await self._enter("set_sync_standbys", sql=True)
        self._require_primary("set_sync_standbys")
        self.sync = standbys

    async def checkpoint(self, *, timeout_s: float) -> None:
        await self._enter("checkpoint", sql=True)

    async def apply_dynamic(self, dynamic: PgConfig) -> None:
        await self._enter("apply_dynamic")
        self.dynamic = dynamic
        if self.running:  # the reload: everything but what needs a restart
            for name, value in dynamic.parameters:
                if name not in RESTART_PARAMETERS:
                    self.running_params[name] = value

    async def checkpoint_lsn(self) -> Lsn | None:
        self.calls.append("checkpoint_lsn")
        return self.data.checkpoint_lsn if self.data is not None else None

    async def last_timeline_switch(self) -> tuple[int, Lsn] | None:
        try:
            await self._enter("last_timeline_switch", sql=True)
        except PostgresError:
            return None
        if self.data is None or not self.data.history:
            return None
        return self.data.history[-1]

    async def received_lsn(self, member: Member, *, timeout_s: float) -> Lsn | None:
        self.calls.append("received_lsn")
        await asyncio.sleep(0)
        self.cluster.replicate()
        other = self.cluster.instances.get(member.host)
        if other is None or not other.running or other.hung or not other.in_recovery:
            return None
        return other.data.lsn if other.data is not None else None

    async def close(self) -> None:
        self.calls.append("close")
