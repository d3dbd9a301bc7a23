"""Real PostgreSQL nodes for tests: settings on free ports in private directories, and cleanup.

Directories live under a fresh `/tmp/pgw-pg-*` base (mode 0755), not pytest's tmp_path: that
one is 0700 for root and the `postgres` OS user could not enter it. When the tests run as
root, PostgreSQL runs as `postgres`; as any other user, as that user.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import Credentials, PostgresSettings, Secret
from agent.postgres import clone, create_roles, ensure_slots, initdb
from agent.postgres.datadir import StandbyConfig
from agent.postgres.pidfile import running_postmaster_pid
from agent.postgres.process import Postmaster
from agent.postgres.replication import slot_name_for
from tests.support.pgversions import PgInstall
from tests.support.ports import free_ports

# Passwords with a space, a quote and a backslash: every layer of quoting is exercised.
SUPERUSER_PASSWORD = "su per'pa\\ss"
REPLICATION_PASSWORD = "re pl'pa\\ss"


def pg_os_user() -> str | None:
    """`postgres` when the tests run as root (PostgreSQL refuses root), else None (ourselves)."""
    return "postgres" if os.geteuid() == 0 else None


@dataclass(slots=True, kw_only=True)
class PgNode:
    """One member's settings, directories and postmaster handle."""

    name: str
    settings: PostgresSettings
    run_dir: str
    postmaster: Postmaster = field(init=False)

    def __post_init__(self) -> None:
        self.postmaster = Postmaster(self.settings, member_name=self.name, run_dir=self.run_dir)

    @property
    def port(self) -> int:
        return self.settings.port

    @property
    def slot(self) -> str:
        return slot_name_for(self.name)

    def standby_of(self, primary: PgNode) -> StandbyConfig:
        """Where this node streams from when `primary` leads, through its own slot."""
        return StandbyConfig(
            primary_host=primary.settings.connect_host,
            primary_port=primary.port,
            slot_name=self.slot,
            application_name=self.name,
        )


def _chown_to(path: str, os_user: str | None) -> None:
    if os_user is not None:
        entry = pwd.getpwnam(os_user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def make_nodes(
    base: str,
    names: list[str],
    *,
    install: PgInstall,
    passwords: bool = True,
    parameters: tuple[tuple[str, str], ...] = (),
) -> list[PgNode]:
    """Settings for `names` on distinct free ports, each in `<base>/<name>/` (owned by the
    PostgreSQL OS user, holding `data/` and the socket) with its run dir `<base>/<name>-run`,
    running the binaries of `install`, with `parameters` (postgresql.parameters: the agent's
    configuration file, not the data directory's). Without `passwords` the roles have none
    (loopback trust, as in a demo)."""
    os_user = pg_os_user()
    nodes = []
    for name, port in zip(names, free_ports(len(names)), strict=True):
        home = os.path.join(base, name)
        os.mkdir(home, 0o700)
        _chown_to(home, os_user)
        settings = PostgresSettings(
            bin_dir=install.bin_dir,
            data_dir=os.path.join(home, "data"),
            listen_host="127.0.0.1",
            port=port,
            connect_host="127.0.0.1",
            os_user=os_user,
            superuser=Credentials(
                username="postgres",
                password=Secret(SUPERUSER_PASSWORD) if passwords else None,
            ),
            replication=Credentials(
                username="replicator",
                password=Secret(REPLICATION_PASSWORD) if passwords else None,
            ),
            parameters=(("shared_buffers", "16MB"), ("max_connections", "20"), *parameters),
        )
        nodes.append(PgNode(name=name, settings=settings, run_dir=f"{home}-run"))
    return nodes


def kill_leftovers(nodes: list[PgNode]) -> None:
    """SIGKILL every postmaster (and its group) still serving one of `nodes`' data dirs."""
    for node in nodes:
        node.postmaster.kill()
        pid = running_postmaster_pid(node.settings.data_dir)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(
        running_postmaster_pid(node.settings.data_dir) is not None for node in nodes
    ):
        time.sleep(0.02)


def release_shared_memory(base: str) -> int:
    """Remove the System V segments that postmasters killed under `base` left behind, before
    `base` goes: a SIGKILLed postmaster leaves its segment (named in postmaster.pid), which only
    a postmaster started again on that data dir would remove. A suite run leaked ~90, and the
    kernel's limit (kernel.shmmni 4096) was once reached on a machine that ran the suite many
    times: PostgreSQL then cannot start. Only segments nothing is attached to are removed.
    Returns how many."""
    leaked: set[int] = set()
    for pattern in ("*/postmaster.pid", "*/*/postmaster.pid", "*/*/*/postmaster.pid"):
        for pidfile in Path(base).glob(pattern):
            with contextlib.suppress(OSError, ValueError, IndexError):
                leaked.add(int(pidfile.read_text().splitlines()[6].split()[1]))
    removed = 0
    deadline = time.monotonic() + 5.0  # a killed postmaster's children detach as they exit
    while leaked:
        attached = _attached_counts()
        for shmid in [s for s in leaked if attached.get(s, 0) == 0]:
            leaked.discard(shmid)
            if shmid in attached:
                command = ["ipcrm", "-m", str(shmid)]
                done = subprocess.run(command, check=False, capture_output=True)
                removed += done.returncode == 0
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return removed


def _attached_counts() -> dict[int, int]:
    """shmid -> processes attached, for every System V segment (Linux /proc)."""
    counts: dict[int, int] = {}
    with contextlib.suppress(OSError):
        header, *rows = Path("/proc/sysvipc/shm").read_text().splitlines()
        names = header.split()
        for row in rows:
            fields = dict(zip(names, row.split(), strict=False))
            counts[int(fields["shmid"])] = int(fields["nattch"])
    return counts


@contextlib.contextmanager
def pg_base_dir() -> Iterator[str]:
    """A private base directory the PostgreSQL OS user can traverse; removed afterwards."""
    base = tempfile.mkdtemp(prefix="pgw-pg-", dir="/tmp")
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        release_shared_memory(base)
        shutil.rmtree(base, ignore_errors=True)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float, interval_s: float = 0.01
) -> float:
    """Poll `check` until true; return the seconds it took. A check that raises counts as
    not yet (a server still starting refuses connections); after `timeout_s`, AssertionError
    naming the last exception, chained to it, so a timeout shows why the check kept failing."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    last: Exception | None = None
    while True:
        try:
            if await check():
                return loop.time() - start
            last = None  # the latest try answered false: an older exception is not the cause
        except Exception as exc:
            last = exc
        if loop.time() - start > timeout_s:
            why = "" if last is None else f"; the last try raised {last!r}"
            raise AssertionError(f"condition not met within {timeout_s} s{why}") from last
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def streaming_pair(
    *,
    install: PgInstall,
    table_sql: str,
    ttl_s: float | None = None,
    parameters: tuple[tuple[str, str], ...] = (),
) -> AsyncIterator[tuple[PgNode, PgNode]]:
    """A primary (with `table_sql` run on it) and a standby cloned from it and streaming,
    both run by `Postmaster` on `install` (with `ttl_s`, the agent's derived replication
    timeouts). Stops both and cleans up afterwards."""
    with pg_base_dir() as base:
        nodes = make_nodes(base, ["p", "s"], install=install, parameters=parameters)
        if ttl_s is not None:
            for node in nodes:
                node.postmaster = Postmaster(
                    node.settings, member_name=node.name, run_dir=node.run_dir, ttl_s=ttl_s
                )
        primary, standby = nodes
        try:
            await initdb(primary.settings, run_dir=primary.run_dir)
            await primary.postmaster.start(standby=None, timeout_s=PAIR_START_TIMEOUT_S)
            await create_roles(primary.postmaster, primary.settings)
            await ensure_slots(primary.postmaster, [standby.slot])
            await primary.postmaster.execute(table_sql, timeout_s=5.0)
            await clone(
                standby.settings, standby.standby_of(primary), run_dir=standby.run_dir, timeout_s=60
            )
            await standby.postmaster.start(
                standby=standby.standby_of(primary), timeout_s=PAIR_START_TIMEOUT_S
            )
            yield primary, standby
        finally:
            for node in nodes:
                await node.postmaster.close()
            kill_leftovers(nodes)


PAIR_START_TIMEOUT_S = 20.0
