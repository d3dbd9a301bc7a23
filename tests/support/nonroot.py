"""A `LocalCluster` whose agents run as the `postgres` OS user with `postgresql.os_user` unset,
as in the container image: the agent, PostgreSQL, its tools and the fencer are all one
unprivileged user, nothing switches users.

The test process is root (the e2e suites run as root); each agent is started with the
`postgres` user's uid, gid and groups. The venv's interpreter lives under /root (mode 0700),
which that user cannot enter, so the agents run on Debian's /usr/bin/python3.11 with the
checkout and the venv's site-packages on PYTHONPATH (the same CPython minor version: the
compiled extension modules load). The fencer needs neither: it runs with
`-I -S` and puts the checkout on its own `sys.path` (agent/fence.py).

With `pg_tls` the members also run PostgreSQL with `postgresql.tls` (tests/support/tls.py: a
CA made here, one certificate for 127.0.0.1 checked with verify-full), as the secure
Kubernetes example does.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.localproc import LocalMember
from tests.support.cluster import E2E_TIMING, TlsCluster
from tests.support.pgversions import PgInstall
from tests.support.postgres import release_shared_memory

OS_USER = "postgres"
SYSTEM_PYTHON = "/usr/bin/python3.11"
REPO = str(Path(__file__).resolve().parents[2])


def nonroot_unavailable() -> str | None:
    """Why this machine cannot run the non-root cluster (a pytest skip reason), or None."""
    if os.geteuid() != 0:
        return "not root: the ordinary e2e suites already run the agent unprivileged"
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        return f"no {OS_USER!r} OS user"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is missing"
    return None


def agent_env(user: pwd.struct_passwd) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "LANG": "C.UTF-8",
        "PYTHONPATH": f"{REPO}:{sysconfig.get_path('purelib')}",
        "PYTHONDONTWRITEBYTECODE": "1",  # the checkout is root's
    }


@dataclass(slots=True, kw_only=True)
class NonRootCluster(TlsCluster):
    """Agents as `postgres`, configured without `postgresql.os_user`; TLS as `TlsCluster`
    (none unless asked for)."""

    api_tls: bool = False
    pg_tls: bool = False

    def config_for(self, member: LocalMember) -> dict[str, object]:
        config = TlsCluster.config_for(self, member)
        postgresql = config["postgresql"]
        assert isinstance(postgresql, dict)
        postgresql.pop("os_user", None)
        return config

    def start_member(self, index: int) -> None:
        member = self.members[index]
        self.prepare(member)
        user = pwd.getpwnam(OS_USER)
        with open(member.log_path, "ab") as log:
            member.process = subprocess.Popen(
                [SYSTEM_PYTHON, "-m", "agent", "run", "--config", str(member.config_path)],
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd="/",
                env=agent_env(user),
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=os.getgrouplist(user.pw_name, user.pw_gid),
            )


@contextmanager
def nonroot_cluster(
    size: int = 3, *, pg: PgInstall, pg_tls: bool = False
) -> Iterator[NonRootCluster]:
    """A running `NonRootCluster` (etcd, `size` agents, short e2e timings, PostgreSQL `pg`,
    TLS with `pg_tls`); stopped and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="pgwarden-nonroot-", dir="/tmp"))
    os.chmod(base, 0o755)
    running = NonRootCluster(
        base=base, size=size, timing=dict(E2E_TIMING), pg_tls=pg_tls, pg_bin=pg.bin_dir
    )
    try:
        running.start()
        yield running
    finally:
        running.stop()
        release_shared_memory(str(base))
        shutil.rmtree(base, ignore_errors=True)


def process_uid(pid: int) -> int | None:
    """The real uid of process `pid` (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def fencer_pids(data_dir: Path) -> list[int]:
    """The pids of fencers guarding `data_dir` (`agent.fencer ... --data-dir X` arguments)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "agent.fencer" in argv and str(data_dir) in argv:
            found.append(int(entry))
    return found
