"""The settings types: frozen values that check their own rules.

Every class here refuses, when it is built, a value that breaks one of its rules: it raises
`InvalidSettings`, which names each field (relative to the class: `ttl_s`) and each rule.
`problems()` states the same rules without raising; the loader (agent.config) uses it to
report every problem of a configuration at once, prefixing each field with its section.
Rules that depend on how the input was written (a key given twice, a file that must be
readable, a setting that conflicts with another only when set explicitly) live in the loader.

The sections with types of their own live beside it: dcs_settings.py, postgres_settings.py,
api_settings.py, callback_settings.py and backup_settings.py; here are the timing, tags, HA
and log sections and `Settings`, which holds them all and checks the rules across sections.

This module does no I/O: the pure core (agent.decide) imports it, never the loader.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, TypeVar

from agent.api_settings import ApiSettings
from agent.backup_settings import (
    DEFAULT_REPLICA_METHODS,
    BootstrapSettings,
    PgBackRestSettings,
    ReplicaMethod,
    backup_problems,
)
from agent.callback_settings import CallbackSettings
from agent.dcs_settings import DcsSettings
from agent.model import SyncMode as SyncMode  # noqa: PLC0414 - re-exported: ha.synchronous_mode
from agent.postgres_settings import PostgresSettings
from agent.value_rules import (
    ConfigProblem,
    absolute,
    check,
    dns_label,
    non_empty,
    one_of,
)
from agent.value_rules import InvalidSettings as InvalidSettings  # noqa: PLC0414 - re-exported

_T = TypeVar("_T")


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


LOG_LEVELS: Final = tuple(level.value for level in LogLevel)
SYNC_MODES: Final = tuple(mode.value for mode in SyncMode)


def unchecked(cls: type[_T], /, **values: object) -> _T:
    """An instance of the settings class `cls` built *without* its rules, for the loader only:
    it goes on checking the rest of a configuration to report every problem at once, and
    hands out nothing unless `problems()` of every part came back empty."""
    instance = object.__new__(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in values:
            value = values[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise TypeError(f"{cls.__name__}: {f.name} is required")
        object.__setattr__(instance, f.name, value)
    return instance


# ------------------------------------------------------------------------- the types


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """HA timing, in seconds. Its rules include loop_wait_s + 2 * retry_timeout_s +
    fence_margin_s <= ttl_s: a renewal can fail once and be retried inside one ttl, with the
    margin left for fencing (docs/configuration.md explains each rule)."""

    ttl_s: float = 6.0
    loop_wait_s: float = 2.0
    retry_timeout_s: float = 1.5
    fence_margin_s: float = 1.0
    primary_start_timeout_s: float = 10.0
    switchover_timeout_s: float = 10.0
    peer_check_timeout_s: float = 0.5
    shutdown_timeout_s: float = 10.0
    # A leader's PostgreSQL whose process exists but answers no query for this long is hung,
    # not down: it is SIGKILLed (with every child) before anything else happens to it.
    postgres_unresponsive_s: float = 2.0
    clone_timeout_s: float = 600.0  # one pg_basebackup from the leader
    rewind_timeout_s: float = 300.0  # one pg_rewind of a former primary

    def __post_init__(self) -> None:
        check(self.problems())

    def fence_deadline(self, renew_sent_at: float) -> float:
        """The instant (monotonic) by which a primary must stop accepting writes, given the
        send time of its last successful renewal (DESIGN.md section 3, invariant 2)."""
        return renew_sent_at + self.ttl_s - self.fence_margin_s

    def problems(self) -> Iterator[ConfigProblem]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in values.items():
            if value <= 0:
                yield ConfigProblem(name, f"must be > 0, got {value:g}")
        if 0 < self.ttl_s < 4:
            yield ConfigProblem("ttl_s", f"must be >= 4, got {self.ttl_s:g}")
        if 0 < self.fence_margin_s < 0.5:
            yield ConfigProblem("fence_margin_s", f"must be >= 0.5, got {self.fence_margin_s:g}")
        if 0 < self.loop_wait_s <= self.peer_check_timeout_s:
            yield ConfigProblem(
                "peer_check_timeout_s",
                f"must be < timing.loop_wait_s ({self.peer_check_timeout_s:g} >= "
                f"{self.loop_wait_s:g})",
            )
        if min(values.values()) > 0:
            yield from self._lease_rules()

    def _lease_rules(self) -> Iterator[ConfigProblem]:
        t = self
        # Why: a hung server is only noticed by a probe that times out (within retry_timeout_s);
        # it must then be killed while the lease is surely still ours, before the fence deadline.
        hung_bound = t.postgres_unresponsive_s + t.retry_timeout_s
        if hung_bound > t.ttl_s - t.fence_margin_s:
            yield ConfigProblem(
                "postgres_unresponsive_s",
                "must leave time to notice and kill a hung server inside the lease: "
                "postgres_unresponsive_s + retry_timeout_s <= ttl_s - fence_margin_s "
                f"({hung_bound:g} > {t.ttl_s - t.fence_margin_s:g})",
            )
        # Why: a renewal sent at the start of a cycle may fail after retry_timeout_s; the next
        # one is sent at most loop_wait_s later and may itself take retry_timeout_s; the primary
        # must still have fence_margin_s left to stop writes before its lease expires.
        needed = t.loop_wait_s + 2 * t.retry_timeout_s + t.fence_margin_s
        if needed > t.ttl_s:
            yield ConfigProblem(
                "ttl_s",
                "must be >= loop_wait_s + 2 * retry_timeout_s + fence_margin_s = "
                f"{t.loop_wait_s:g} + 2 * {t.retry_timeout_s:g} + {t.fence_margin_s:g} = "
                f"{needed:g}, got {t.ttl_s:g}",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Tags:
    nofailover: bool = False
    failover_priority: int = 1
    nosync: bool = False
    sync_priority: int = 1
    # Topology (agent/decide/topology.py): stream from this member while it streams itself;
    # the preferred source of a first clone; no read traffic (/replica, /read-only 503).
    replicatefrom: str | None = None
    clonefrom: bool = False
    noloadbalance: bool = False
    nostream: bool = False  # refused: WAL from the archive only needs archiving (not yet)

    def __post_init__(self) -> None:
        check(self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        for name in ("failover_priority", "sync_priority"):
            value = getattr(self, name)
            if value < 0:
                yield ConfigProblem(name, f"must be >= 0, got {value}")
        if self.replicatefrom is not None:
            yield from non_empty("replicatefrom", self.replicatefrom)
            yield from dns_label("replicatefrom", self.replicatefrom)
        if self.nostream:
            yield ConfigProblem(
                "nostream",
                "is not supported yet: a member that takes WAL from the archive only needs WAL "
                "archiving and restore_command, which pgwarden does not manage; remove it",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class HaSettings:
    """HA behaviour. The `synchronous_*`, `maximum_lag_on_syncnode_bytes` and `failsafe_mode`
    values only seed the DCS `config` record when this member bootstraps the cluster; after
    that the record (PATCH /config) is what every member follows."""

    maximum_lag_on_failover_bytes: int = 1024 * 1024
    synchronous_mode: SyncMode = SyncMode.OFF
    synchronous_node_count: int = 1
    synchronous_mode_strict: bool = False
    maximum_lag_on_syncnode_bytes: int = -1  # -1: no limit
    # The leader's own: a synchronous standby whose flush_lag exceeds this is swapped out while
    # another streaming candidate's does not (agent/decide/sync.py); -1: never.
    maximum_flush_lag_on_syncnode_s: float = 1.0
    failsafe_mode: bool = False
    # A replica that has not streamed from its running upstream, nor moved its WAL position,
    # for this long signals its WAL receiver to start again (agent/decide/receiver.py); 0: off.
    wal_receiver_stall_s: float = 30.0

    def __post_init__(self) -> None:
        check(self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        yield from one_of("synchronous_mode", self.synchronous_mode, SyncMode)
        if self.wal_receiver_stall_s != 0 and not self.wal_receiver_stall_s >= 1:
            yield ConfigProblem(
                "wal_receiver_stall_s",
                f"must be 0 (off) or >= 1, got {self.wal_receiver_stall_s}",
            )
        if self.synchronous_node_count < 1:
            yield ConfigProblem(
                "synchronous_node_count", f"must be >= 1, got {self.synchronous_node_count}"
            )
        if self.maximum_lag_on_syncnode_bytes < -1:
            yield ConfigProblem(
                "maximum_lag_on_syncnode_bytes",
                f"must be -1 (no limit) or >= 0, got {self.maximum_lag_on_syncnode_bytes}",
            )
        if (
            self.maximum_flush_lag_on_syncnode_s != -1
            and not self.maximum_flush_lag_on_syncnode_s > 0
        ):
            yield ConfigProblem(
                "maximum_flush_lag_on_syncnode_s",
                f"must be -1 (off) or > 0, got {self.maximum_flush_lag_on_syncnode_s}",
            )
        if self.maximum_lag_on_failover_bytes < 0:
            yield ConfigProblem(
                "maximum_lag_on_failover_bytes",
                f"must be >= 0, got {self.maximum_lag_on_failover_bytes}",
            )


class FencerMode(StrEnum):
    SPAWN = "spawn"  # the agent starts its fencer (agent/fence.py) and restarts it if it dies
    EXTERNAL = "external"  # a fencer of its own container in the pod; never started by us


@dataclass(frozen=True, slots=True, kw_only=True)
class FencerSettings:
    """Where the fencer comes from and where it listens (docs/ha.md, Self-fencing)."""

    mode: FencerMode = FencerMode.SPAWN
    socket: str | None = None  # None: <run_dir>/fencer.sock

    def __post_init__(self) -> None:
        check(self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        yield from one_of("mode", self.mode, FencerMode)
        if self.socket is not None:
            yield from non_empty("socket", self.socket)
            yield from absolute("socket", self.socket)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.AUTO

    def __post_init__(self) -> None:
        check(self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        yield from one_of("level", self.level, LogLevel)
        yield from one_of("format", self.format, LogFormat)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    name: str
    cluster: str
    namespace: str = "pgwarden"
    run_dir: str  # the fencer's socket and the agent's runtime files
    dcs: DcsSettings
    postgresql: PostgresSettings
    api: ApiSettings = field(default_factory=ApiSettings)
    timing: Timing = field(default_factory=Timing)
    tags: Tags = field(default_factory=Tags)
    ha: HaSettings = field(default_factory=HaSettings)
    log: LogSettings = field(default_factory=LogSettings)
    fencer: FencerSettings = field(default_factory=FencerSettings)
    callbacks: CallbackSettings = field(default_factory=CallbackSettings)
    pgbackrest: PgBackRestSettings | None = None
    create_replica_methods: tuple[ReplicaMethod, ...] = DEFAULT_REPLICA_METHODS
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)

    def __post_init__(self) -> None:
        check(self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        """The rules across sections and of the top-level fields (each section checks its own)."""
        for name in ("name", "cluster", "namespace"):
            value = getattr(self, name)
            yield from non_empty(name, value)
            yield from dns_label(name, value)
        # A member's name is its application_name in primary_conninfo and
        # synchronous_standby_names: ASCII and shorter than NAMEDATALEN (64 bytes).
        name = self.name
        if name and not (name.isascii() and name.isprintable() and len(name) < 64):
            yield ConfigProblem(
                "name", "must be a valid PostgreSQL application_name (ASCII, < 64 bytes)"
            )
        yield from absolute("run_dir", self.run_dir)
        if self.tags.replicatefrom is not None and self.tags.replicatefrom == name:
            yield ConfigProblem("tags.replicatefrom", "must name another member, not this one")
        yield from backup_problems(
            self.pgbackrest, self.create_replica_methods, self.bootstrap, cluster=self.cluster
        )
        api, pg = self.api, self.postgresql
        if api.port == pg.port and api.listen_host == pg.listen_host:
            yield ConfigProblem(
                "api.port", f"must differ from postgresql.port ({api.port}) on the same host"
            )
