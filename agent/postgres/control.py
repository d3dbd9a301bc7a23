"""The seam between the executor and PostgreSQL: what the HA loop may ask of its instance.

`PostgresControl` is every operation the executor (agent/executor.py) and the hand-over
(agent/handover.py) need; `LocalPostgres` implements it with the real postmaster
(process.py), the prober (probe.py) and the tools (bootstrap.py). The unit tests implement it
in memory (tests/unit/fake_postgres.py), with primary/replica/timeline behaviour.

Errors in the contract: every operation raises `PostgresError` when PostgreSQL or a tool
fails (an `OSError` from the file system may also escape where files are written), and
`rewind` raises its subclass `SourceUnreachable` when the source could not be reached for the
whole time budget (the data directory is intact: retry later). `probe`, `received_lsn` and
`last_timeline_switch` report what they could not read as a state or None instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Protocol

import asyncpg

from agent.backup_settings import BootstrapMethod
from agent.model import LocalState, Lsn, Member, PgConfig, SyncStandbys
from agent.postgres import bootstrap, datadir, pgbackrest, restore, slots, walreceiver
from agent.postgres.probe import Prober, read_controldata
from agent.postgres.process import PostgresError, Postmaster, StandbyConfig, StopMode
from agent.postgres.replication import quote_literal, render_synchronous_standby_names
from agent.postgres.tls import client_ssl_context
from agent.settings import Settings
from agent.slot_config import PermanentSlot

# How long one attempt to read a remote member's received position may take (seconds).
RECEIVED_ATTEMPT_S = 1.0


class PostgresControl(Protocol):
    """The local PostgreSQL instance as the executor drives it. One task owns it."""

    def pid(self) -> int | None:
        """The live postmaster's pid, else None."""

    async def wait_for_exit(self) -> None:
        """Return when the postmaster is gone (at once if none runs); no timeout of its own."""

    async def probe(self, *, timeout_s: float) -> LocalState:
        """One snapshot of the instance; never raises (a broken server is a state)."""

    async def close_probe(self) -> None:
        """Drop the probe's connection (before a smart stop or a SIGKILL of a hung server)."""

    async def start(
        self, *, standby: StandbyConfig | None, timeout_s: float, socket_only: bool = False
    ) -> None:
        """Start as a primary (`standby=None`) or as a standby of `standby`; return once it
        accepts connections. A running postmaster keeps its role. `socket_only`: listening
        on the Unix socket only, no TCP client can connect (a cluster being bootstrapped)."""

    async def open_to_clients(self, *, timeout_s: float) -> None:
        """The new cluster is complete (its incomplete-bootstrap marker goes first; with
        pgBackRest, an incomplete bootstrap's stanza is created before that); a running server
        that listens on its Unix socket only is restarted to listen as configured. Called
        only once the DCS records this cluster's system id."""

    async def stop(self, mode: StopMode, *, timeout_s: float) -> None:
        """Stop and wait until the postmaster is gone; escalates to SIGKILL (process.py)."""

    async def promote(self, *, timeout_s: float) -> None:
        """Promote a running standby; return once it accepts writes."""

    async def follow(self, standby: StandbyConfig) -> None:
        """Point a running standby at another upstream without a restart."""

    async def restart_wal_receiver(self) -> int | None:
        """On a running standby: stop its WAL receiver (the startup process starts a new one
        on a new connection); the pid signalled, or None when there was none."""

    async def initdb(self) -> None:
        """Create a new cluster in the (empty) data directory: initdb, or (bootstrap.method
        pgbackrest) a restore from the repository, recovered and promoted: running then,
        on its Unix socket only (`start`'s `socket_only`). The data directory is marked as
        an incomplete bootstrap until `open_to_clients` (LocalState.bootstrap_incomplete)."""

    async def create_roles(self) -> None:
        """On a freshly initialized primary: the replication role and the passwords."""

    def clear_data_dir(self) -> None:
        """Remove the data directory's contents (the postmaster must be stopped)."""

    async def clone(self, standby: StandbyConfig, *, timeout_s: float) -> None:
        """Make this a standby of `standby`'s upstream by `create_replica_methods` in order
        (pgBackRest restore, pg_basebackup from the upstream)."""

    async def rewind(
        self, standby: StandbyConfig, *, timeout_s: float, unreachable_s: float | None = None
    ) -> None:
        """pg_rewind the stopped data directory onto `standby`'s upstream (SourceUnreachable
        when it could not be reached: retried for at most `unreachable_s`, default
        `timeout_s`), and configure this as its standby."""

    async def set_slots(
        self,
        *,
        ensure: Collection[str],
        drop: Collection[str],
        permanent: Collection[PermanentSlot] = (),
        synchronized: Collection[str] | None = None,
    ) -> None:
        """On the primary: create the missing physical slots among `ensure`, then drop the
        slots of `drop` that exist and are not in use (a slot in use is left for later);
        create the missing `permanent` slots; set synchronized_standby_slots to the slots
        `synchronized` (None: leave it alone)."""

    async def drop_stale_logical_slots(self, names: Collection[str]) -> None:
        """On a standby: drop the logical slots among `names` that are its own, not in use and
        not synchronized from the primary (a former primary's copies)."""

    async def set_sync_standbys(self, standbys: SyncStandbys, *, timeout_s: float) -> None:
        """Make `synchronous_standby_names` ask for `standbys` (ALTER SYSTEM + reload)."""

    async def checkpoint(self, *, timeout_s: float) -> None:
        """CHECKPOINT on the running server."""

    async def apply_dynamic(self, dynamic: PgConfig) -> None:
        """Render the configuration files with the DCS settings `dynamic` from now on; a
        running server re-reads them at once (SIGHUP)."""

    async def checkpoint_lsn(self) -> Lsn | None:
        """The last checkpoint's LSN in the control file (after a stop: the shutdown
        checkpoint); None when it cannot be read."""

    async def last_timeline_switch(self) -> tuple[int, Lsn] | None:
        """On a primary: (the timeline that ended, where it ended), from the history file."""

    async def received_lsn(self, member: Member, *, timeout_s: float) -> Lsn | None:
        """How far `member`'s PostgreSQL received or replayed WAL; None when it cannot be
        read within `timeout_s` (unreachable, refused, not in recovery any more)."""

    async def close(self) -> None:
        """Drop every connection; the postmaster keeps running."""


class LocalPostgres:
    """`PostgresControl` over the real postmaster, prober and tools."""

    def __init__(self, settings: Settings, *, postmaster: Postmaster, prober: Prober) -> None:
        self._settings = settings
        self._pg = settings.postgresql
        self.postmaster = postmaster
        self.prober = prober

    def pid(self) -> int | None:
        return self.postmaster.pid()

    async def wait_for_exit(self) -> None:
        await self.postmaster.wait_for_exit()

    async def probe(self, *, timeout_s: float) -> LocalState:
        pid = self.postmaster.pid()
        return await self.prober.probe(
            running=pid is not None, postmaster_pid=pid, timeout_s=timeout_s
        )

    async def close_probe(self) -> None:
        await self.prober.close()

    async def start(
        self, *, standby: StandbyConfig | None, timeout_s: float, socket_only: bool = False
    ) -> None:
        await self.postmaster.start(standby=standby, timeout_s=timeout_s, socket_only=socket_only)

    async def open_to_clients(self, *, timeout_s: float) -> None:
        if self._settings.pgbackrest is not None and datadir.bootstrap_incomplete(self._pg):
            # The stanza is created for a bootstrap the DCS recorded, never before: a
            # bootstrap discarded after its stanza-create (its probe timed out under load,
            # its claim was lost) left the repository holding a system the cluster is not,
            # and every later bootstrap's stanza-create refused it, for good (a fresh-clone
            # CI run). Idempotent: an opening retried after a failure creates it again.
            await pgbackrest.stanza_create(self._settings)
        # Complete before it is opened: an agent stopped in between leaves a socket-only
        # server (discarded as incomplete: nobody wrote to it), never an open one that is.
        datadir.unmark_bootstrap(self._pg)
        await self.postmaster.open_to_clients(timeout_s=timeout_s)

    async def stop(self, mode: StopMode, *, timeout_s: float) -> None:
        await self.postmaster.stop(mode, timeout_s=timeout_s)

    async def promote(self, *, timeout_s: float) -> None:
        await self.postmaster.promote(timeout_s=timeout_s)

    async def follow(self, standby: StandbyConfig) -> None:
        await self.postmaster.follow(standby)

    async def restart_wal_receiver(self) -> int | None:
        return await walreceiver.restart_wal_receiver(
            self.postmaster, timeout_s=self._settings.timing.retry_timeout_s
        )

    async def initdb(self) -> None:
        if self._settings.bootstrap.method is BootstrapMethod.PGBACKREST:
            await restore.restore_bootstrap(self._settings, self.postmaster)
            return
        await bootstrap.initdb(self._pg, run_dir=self._settings.run_dir)
        datadir.mark_bootstrap(self._pg)

    async def create_roles(self) -> None:
        await bootstrap.create_roles(self.postmaster, self._pg)

    def clear_data_dir(self) -> None:
        bootstrap.clear_data_dir(self._pg)

    async def clone(self, standby: StandbyConfig, *, timeout_s: float) -> None:
        await restore.clone_by_methods(self._settings, standby, timeout_s=timeout_s)

    async def rewind(
        self, standby: StandbyConfig, *, timeout_s: float, unreachable_s: float | None = None
    ) -> None:
        await bootstrap.rewind(
            self._pg,
            standby,
            run_dir=self._settings.run_dir,
            timeout_s=timeout_s,
            unreachable_s=unreachable_s,
        )

    async def set_slots(
        self,
        *,
        ensure: Collection[str],
        drop: Collection[str],
        permanent: Collection[PermanentSlot] = (),
        synchronized: Collection[str] | None = None,
    ) -> None:
        await bootstrap.ensure_slots(self.postmaster, ensure)
        await bootstrap.drop_slots(self.postmaster, drop)
        await slots.ensure_permanent_slots(self.postmaster, self._settings.postgresql, permanent)
        if synchronized is not None:
            await slots.set_synchronized_standby_slots(self.postmaster, synchronized)

    async def drop_stale_logical_slots(self, names: Collection[str]) -> None:
        await slots.drop_stale_logical_slots(self.postmaster, names)

    async def set_sync_standbys(self, standbys: SyncStandbys, *, timeout_s: float) -> None:
        value = render_synchronous_standby_names(standbys)
        await self.postmaster.execute(
            f"ALTER SYSTEM SET synchronous_standby_names = {quote_literal(value)}",
            timeout_s=timeout_s,
        )
        await self.postmaster.execute("SELECT pg_reload_conf()", timeout_s=timeout_s)

    async def checkpoint(self, *, timeout_s: float) -> None:
        await self.postmaster.execute("CHECKPOINT", timeout_s=timeout_s)

    async def apply_dynamic(self, dynamic: PgConfig) -> None:
        await self.postmaster.apply_dynamic(dynamic)

    async def checkpoint_lsn(self) -> Lsn | None:
        control = await read_controldata(self._pg)
        return control.checkpoint_lsn if control is not None else None

    async def last_timeline_switch(self) -> tuple[int, Lsn] | None:
        try:
            return await bootstrap.last_timeline_switch(self.postmaster)
        except (PostgresError, OSError, TimeoutError):
            return None

    async def received_lsn(self, member: Member, *, timeout_s: float) -> Lsn | None:
        superuser = self._pg.superuser
        password = superuser.password.reveal() if superuser.password else None
        try:
            async with asyncio.timeout(timeout_s):
                conn = await asyncpg.connect(
                    host=member.host,
                    port=member.port,
                    user=superuser.username,
                    password=password,
                    database="postgres",
                    ssl=client_ssl_context(self._pg),
                )
                try:
                    received = await conn.fetchval(
                        "SELECT greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())"
                    )
                finally:
                    await conn.close()
        except (OSError, TimeoutError, asyncpg.PostgresError):
            return None
        return int(received) if received is not None else None

    async def close(self) -> None:
        await self.prober.close()
        await self.postmaster.close()
