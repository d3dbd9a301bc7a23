"""The backup settings (issue 17): pgBackRest, the order of the replica creation methods, and
how a new cluster is bootstrapped (initdb, or a restore from the repository).

Pure: no I/O (the loader checks that the pgBackRest program exists). agent/postgres/pgbackrest.py
renders pgBackRest's configuration file and runs it.
"""

from __future__ import annotations

import os.path
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from agent.value_rules import ConfigProblem, InvalidSettings

_STANZA: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ReplicaMethod(StrEnum):
    """How a member without data makes itself a replica."""

    PGBACKREST = "pgbackrest"  # restore the latest backup --type=standby, then the archive
    BASEBACKUP = "basebackup"  # pg_basebackup from the leader


class BootstrapMethod(StrEnum):
    """How the first member of a new cluster makes its data directory."""

    INITDB = "initdb"
    PGBACKREST = "pgbackrest"  # restore from the repository (to a target), then promote


class ArchiveMode(StrEnum):
    """PostgreSQL's `archive_mode` on every member (docs/backup.md says why `on`)."""

    ON = "on"  # the primary archives; a standby archives nothing until it is promoted
    ALWAYS = "always"  # every standby archives what it receives too (pgBackRest dedupes)


REPO_TYPES: Final = ("posix", "s3", "gcs", "azure", "cifs", "sftp")

_OPTION_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
# Options the agent writes itself: from the member's own settings, or its own files.
_OWNED_OPTIONS: Final = frozenset(
    {"stanza", "config", "config-path", "config-include-path", "repo1-path", "repo1-type",
     "lock-path", "log-path"}
)  # fmt: skip
_PG_OPTION = re.compile(r"^pg[0-9]+-")
_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")


def _check(problems: Iterator[ConfigProblem]) -> None:
    found = list(problems)
    if found:
        raise InvalidSettings(found)


def option_rule(name: str) -> str | None:
    """None when `name` may be given in `pgbackrest.options`, else the rule it breaks."""
    if not _OPTION_NAME.fullmatch(name):
        return f"{name[:80]!r} is not a pgBackRest option name (lower case, digits, dashes)"
    if name in _OWNED_OPTIONS or _PG_OPTION.match(name):
        return f"{name!r} is set by pgwarden (from this member's settings)"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class PgBackRestSettings:
    """A pgBackRest repository (repo1) and this cluster's stanza in it."""

    repo_path: str
    repo_type: str = "posix"
    stanza: str | None = None  # None: the cluster's name
    command: str = "/usr/bin/pgbackrest"
    options: tuple[tuple[str, str], ...] = ()  # more [global] options, name -> value
    archive_mode: ArchiveMode = ArchiveMode.ON
    backup_timeout_s: float = 3600.0
    restore_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        _check(self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        if not os.path.isabs(self.repo_path):
            yield ConfigProblem("repo_path", "must be an absolute path")
        if self.repo_type not in REPO_TYPES:
            yield ConfigProblem("repo_type", "must be one of " + ", ".join(REPO_TYPES))
        if self.stanza is not None and not _STANZA.fullmatch(self.stanza):
            yield ConfigProblem("stanza", "must be 1-64 characters of A-Z a-z 0-9 _ . -")
        if not os.path.isabs(self.command):
            yield ConfigProblem("command", "must be an absolute path")
        for name, value in self.options:
            rule = option_rule(name)
            if rule is not None:
                yield ConfigProblem("options", rule)
            elif "\n" in value or "\r" in value:
                yield ConfigProblem("options", f"{name!r}: a value must be a single line")
        if self.archive_mode not in tuple(ArchiveMode):
            yield ConfigProblem("archive_mode", "must be on or always")
        for name in ("backup_timeout_s", "restore_timeout_s"):
            if getattr(self, name) <= 0:
                yield ConfigProblem(name, "must be > 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class BootstrapSettings:
    """How a new cluster starts: initdb, or a restore from the pgBackRest repository to
    `recovery_target_time`, `recovery_target_lsn` (at most one), else the archive's end."""

    method: BootstrapMethod = BootstrapMethod.INITDB
    # The stanza restored from (the source cluster's); the new cluster archives into its own.
    stanza: str | None = None
    recovery_target_time: str | None = None
    recovery_target_lsn: str | None = None

    def __post_init__(self) -> None:
        _check(self.problems())

    def problems(self) -> Iterator[ConfigProblem]:
        if self.method not in tuple(BootstrapMethod):
            yield ConfigProblem("method", "must be initdb or pgbackrest")
        time, lsn = self.recovery_target_time, self.recovery_target_lsn
        if time is not None and lsn is not None:
            yield ConfigProblem("recovery_target_lsn", "set a target time or an LSN, not both")
        if (time is not None or lsn is not None) and self.method != BootstrapMethod.PGBACKREST:
            yield ConfigProblem("method", "a recovery target needs method: pgbackrest")
        if self.stanza is not None and self.method != BootstrapMethod.PGBACKREST:
            yield ConfigProblem("stanza", "only with method: pgbackrest")
        if self.stanza is not None and not _STANZA.fullmatch(self.stanza):
            yield ConfigProblem("stanza", "must be 1-64 characters of A-Z a-z 0-9 _ . -")
        if time is not None and (not time.strip() or "\n" in time or "'" in time):
            yield ConfigProblem(
                "recovery_target_time", "must be a timestamp (2026-12-04 22:00:00+00)"
            )
        if lsn is not None and not _LSN.fullmatch(lsn):
            yield ConfigProblem("recovery_target_lsn", "must be an LSN such as 0/3000060")

    @property
    def target(self) -> tuple[str, str] | None:
        """pgBackRest's restore (--type, --target), or None: to the end of the archive."""
        if self.recovery_target_time is not None:
            return ("time", self.recovery_target_time)
        if self.recovery_target_lsn is not None:
            return ("lsn", self.recovery_target_lsn)
        return None


DEFAULT_REPLICA_METHODS: Final = (ReplicaMethod.BASEBACKUP,)


def backup_problems(
    pgbackrest: PgBackRestSettings | None,
    methods: tuple[ReplicaMethod, ...],
    bootstrap: BootstrapSettings,
    *,
    cluster: str,
) -> Iterator[ConfigProblem]:
    """The rules across the three: a method that restores needs a repository; a bootstrap
    from a backup names the source's stanza, which is not the cluster's own."""
    if not methods:
        yield ConfigProblem("create_replica_methods", "must name at least one method")
    if len(set(methods)) != len(methods):
        yield ConfigProblem("create_replica_methods", "must not name a method twice")
    if pgbackrest is None and ReplicaMethod.PGBACKREST in methods:
        yield ConfigProblem("create_replica_methods", "pgbackrest needs the pgbackrest section")
    if pgbackrest is None and bootstrap.method == BootstrapMethod.PGBACKREST:
        yield ConfigProblem("bootstrap.method", "pgbackrest needs the pgbackrest section")
    if pgbackrest is None or bootstrap.method != BootstrapMethod.PGBACKREST:
        return
    own = pgbackrest.stanza or cluster
    if bootstrap.stanza is None:
        yield ConfigProblem(
            "bootstrap.stanza",
            "required with method: pgbackrest: the stanza of the cluster to restore from",
        )
    elif bootstrap.stanza == own:
        # A source cluster still running would archive into the same stanza as the restored
        # one (same system identifier): history files of both branches in one archive, and
        # a replica restored from it may follow the other cluster's timeline (review R5).
        yield ConfigProblem(
            "bootstrap.stanza",
            f"must differ from this cluster's own stanza {own!r} (pgbackrest.stanza, by default "
            "the cluster name): the restored cluster archives into a stanza of its own, never "
            "into the one it restores from",
        )
