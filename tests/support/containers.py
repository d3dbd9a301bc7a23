"""Clusters of real pgwarden containers under podman, for the container tier and its bench.

`PodmanCluster` runs `size` containers of the built image (`make image`) the way the
StatefulSet runs its pods, on the host network so that every packet stays on 127.0.0.1 (each
member with its own PostgreSQL and API port; a podman bridge network would put addresses in
the machine's own namespace):

- the pod's hardening: read-only root filesystem, every capability dropped,
  no-new-privileges, the image's non-root user (999:999);
- where the manifests use an emptyDir: at `/run/pgwarden` a host directory as the kubelet
  makes one with `fsGroup: 999` (root-owned, group 999, mode 2777: podman cannot give a
  tmpfs a group), a tmpfs at `/tmp`, a 256 MB `/dev/shm`;
- the persistent volume (a host directory per member, root-owned, group 999, mode 2770 like
  fsGroup makes it), the settings as the ConfigMap mounts them (`k8s/base/config/00-base.yaml`
  as shipped, plus the DCS file the caller gives) and the credentials as the Secret mounts
  them (files 0440, group 999), both read-only;
- the downward API's POD_NAME and POD_IP (127.0.0.1), and the per-member ports as
  PGWARDEN_* variables.

Containers are named `<prefix>-pg-N` with a prefix unique to the run, and every one this
object started is removed by `remove_all()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.support.ports import free_ports
from tests.support.workload import WriterLog

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("PGWARDEN_TEST_IMAGE", "pgwarden:0.1.0")
# docker/image.sh tags the build stage too: NAME-build-stage:TAG.
BUILD_STAGE_IMAGE = "{0}-build-stage:{2}".format(*IMAGE.rpartition(":"))
POSTGRES_UID = 999  # the image's postgres user (Dockerfile), runAsUser/fsGroup in the manifests
GRACE_S = 90  # terminationGracePeriodSeconds of the StatefulSet
PODMAN_TIMEOUT_S = 120.0


_VALUES = itertools.count(1_000_000, 1_000_000)


def fresh_values() -> int:
    """A start value for a writer that no earlier writer of this process used: the probe
    table's values are its primary key, and a writer whose inserts collide gets no write
    acknowledged at all."""
    return next(_VALUES)


def first_write_elsewhere(log: WriterLog, at: float, old: ContainerMember) -> float | None:
    """When an application writer first got a write acknowledged after `at` by a member other
    than `old` (the old primary may still acknowledge some just after `at`)."""
    elsewhere = [a.at for a in log.acks if a.at >= at and a.member != f"127.0.0.1:{old.pg_port}"]
    return min(elsewhere) if elsewhere else None


def podman(*args: str, timeout: float = PODMAN_TIMEOUT_S, check: bool = True) -> str:
    """Run `podman ARGS`; its stdout. Raises with podman's stderr when `check` and it fails."""
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} ...: {result.stderr.strip()[-2000:]}")
    return result.stdout


def podman_unusable_reason() -> str | None:
    """Why containers cannot run here (None when they can): podman missing, not working, or
    the image not built."""
    if shutil.which("podman") is None:
        return "podman is not installed (make test-containers installs it and builds the image)"
    if os.geteuid() != 0:
        return "the container tier runs podman as root (rootless podman is not set up here)"
    try:
        podman("info", "--format", "{{.Host.OCIRuntime.Name}}", timeout=30)
        present = subprocess.run(
            ["podman", "image", "exists", IMAGE], capture_output=True, timeout=30, check=False
        )
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"podman cannot run here: {exc}"
    if present.returncode != 0:
        return f"the image {IMAGE} is not built (make image, or make test-containers)"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerMember:
    index: int
    name: str  # the member's (pod's) name
    container: str
    pg_port: int
    api_port: int
    volume: Path  # the persistent volume, mounted at /var/lib/postgresql/data
    run_volume: Path  # the emptyDir mounted at /run/pgwarden

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


def make_pod_volumes(member: ContainerMember) -> None:
    """The member's persistent volume and its /run/pgwarden emptyDir, as the kubelet leaves
    them with `fsGroup: 999`: root-owned, group 999, setgid; the emptyDir world-writable."""
    for directory, mode in ((member.volume, 0o2770), (member.run_volume, 0o2777)):
        directory.mkdir(parents=True)
        os.chown(directory, 0, POSTGRES_UID)
        directory.chmod(mode)
        directory.parent.chmod(0o755)


class PodmanCluster:
    """Containers of the real image with the pod's hardening (module docstring)."""

    def __init__(
        self,
        *,
        base: Path,
        dcs_yaml: str,
        size: int = 3,
        image: str = IMAGE,
        env: dict[str, str] | None = None,
        mounts: dict[Path, str] | None = None,
    ) -> None:
        """`dcs_yaml` is the ConfigMap's `10-dcs.yaml`; `env` and `mounts` (host path to
        container path, read-only) are added to every member's container."""
        self.base = base
        self.image = image
        self.env = dict(env or {})
        self.mounts = dict(mounts or {})
        self.prefix = f"pgw-test-{uuid.uuid4().hex[:8]}"
        self.superuser_password = secrets.token_hex(12)
        self.api_token = secrets.token_hex(12)
        ports = free_ports(2 * size)
        self.members = [
            ContainerMember(
                index=i,
                name=f"pg-{i}",
                container=f"{self.prefix}-pg-{i}",
                pg_port=ports[2 * i],
                api_port=ports[2 * i + 1],
                volume=base / f"pg-{i}" / "volume",
                run_volume=base / f"pg-{i}" / "run",
            )
            for i in range(size)
        ]
        self._write_config(dcs_yaml)

    # ------------------------------------------------------------------------ the pod's files

    def _write_config(self, dcs_yaml: str) -> None:
        conf = self.base / "conf.d"
        conf.mkdir(parents=True)
        shutil.copy(REPO / "k8s" / "base" / "config" / "00-base.yaml", conf / "00-base.yaml")
        (conf / "10-dcs.yaml").write_text(dcs_yaml)
        for path in (conf, *conf.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        secret_dir = self.base / "secrets"
        secret_dir.mkdir()
        for name, value in {
            "api-token": self.api_token,
            "superuser-password": self.superuser_password,
            "replication-password": secrets.token_hex(12),
        }.items():
            path = secret_dir / name
            path.write_text(value)
            os.chown(path, 0, POSTGRES_UID)
            path.chmod(0o440)  # the Secret's defaultMode, group = fsGroup
        secret_dir.chmod(0o755)
        for member in self.members:
            make_pod_volumes(member)
        self.base.chmod(0o755)

    def run_args(self, member: ContainerMember, *extra_env: str) -> list[str]:
        """The `podman run` arguments that start `member` like a pod of the StatefulSet."""
        env = {
            "POD_NAME": member.name,
            "POD_IP": "127.0.0.1",
            "PGWARDEN_POSTGRESQL__PORT": str(member.pg_port),
            "PGWARDEN_POSTGRESQL__LISTEN_HOST": "127.0.0.1",
            "PGWARDEN_API__PORT": str(member.api_port),
            "PGWARDEN_API__LISTEN_HOST": "127.0.0.1",
            "PGWARDEN_URL": member.api_url,
        }
        args = ["run", "--detach", "--name", member.container, "--network=host"]
        args += ["--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges"]
        args += [f"--user={POSTGRES_UID}:{POSTGRES_UID}", f"--stop-timeout={GRACE_S}"]
        # emptyDirs: /run/pgwarden is a host directory as the kubelet makes one with fsGroup
        # (root-owned, group 999, 2777; kept across container restarts, as an emptyDir lives
        # as long as its pod); /tmp a tmpfs; the memory-backed /dev/shm.
        args += ["-v", f"{member.run_volume}:/run/pgwarden"]
        args += ["--tmpfs", "/tmp:rw,size=256m,mode=1777", "--shm-size=256m"]
        args += ["-v", f"{member.volume}:/var/lib/postgresql/data"]
        args += ["-v", f"{self.base / 'conf.d'}:/etc/pgwarden/conf.d:ro"]
        args += ["-v", f"{self.base / 'secrets'}:/etc/pgwarden/secrets:ro"]
        for source, target in self.mounts.items():
            args += ["-v", f"{source}:{target}:ro"]
        for key, value in {**env, **self.env}.items():
            args += ["-e", f"{key}={value}"]
        for item in extra_env:
            args += ["-e", item]
        return [*args, self.image]

    # ------------------------------------------------------------------------ container control

    def run(self, index: int, *extra_env: str) -> None:
        podman(*self.run_args(self.members[index], *extra_env))

    def start_all(self) -> None:
        for index in range(len(self.members)):
            self.run(index)

    def start(self, index: int) -> None:
        """Start a stopped or killed container again (the same container, its volume kept,
        fresh tmpfs mounts: like the kubelet restarting a pod's container)."""
        name = self.members[index].container
        try:
            podman("start", name)
        except RuntimeError:
            # See `stop`: a container whose storage podman could not unmount is cleaned up
            # first, then started once more.
            podman("container", "cleanup", name, check=False)
            podman("start", name)

    def stop(self, index: int) -> float:
        """`podman stop`: SIGTERM to PID 1 (tini), SIGKILL after the grace period. Returns
        how long the container took to exit."""
        started = time.monotonic()
        name = self.members[index].container
        try:
            podman("stop", "--time", str(GRACE_S), name, timeout=GRACE_S + 30)
        except RuntimeError as exc:
            # podman 4.3 sometimes fails to unmount a container's /dev/shm after it exited
            # ("unmounting ... device or resource busy", seen on a loaded machine): the
            # container did stop, which is what is measured here.
            if "unmounting" not in str(exc) or self.state(index).get("Status") == "running":
                raise
        return time.monotonic() - started

    def revive(self) -> None:
        """Start every container that is not running (what a scenario that failed half-way
        may have left stopped or killed), as the kubelet would."""
        for member in self.members:
            if self.state(member.index).get("Status") != "running":
                self.start(member.index)

    def kill(self, index: int) -> None:
        """`podman kill`: SIGKILL to the whole container (agent, fencer, PostgreSQL)."""
        podman("kill", self.members[index].container)

    def inspect(self, index: int) -> dict[str, object]:
        data = json.loads(podman("inspect", self.members[index].container))
        assert isinstance(data, list) and isinstance(data[0], dict)
        return data[0]

    def state(self, index: int) -> dict[str, object]:
        state = self.inspect(index)["State"]
        assert isinstance(state, dict)
        return state

    def exec(self, index: int, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", "exec", self.members[index].container, *command],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def logs(self, index: int) -> str:
        result = subprocess.run(
            ["podman", "logs", self.members[index].container],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return result.stdout + result.stderr

    def log_events(self, index: int) -> list[dict[str, object]]:
        """The agent's JSON log events (one per line) in the container's output."""
        events = []
        for line in self.logs(index).splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events

    def remove_all(self) -> None:
        for member in self.members:
            subprocess.run(
                ["podman", "rm", "--force", "--time", "0", member.container],
                capture_output=True,
                timeout=PODMAN_TIMEOUT_S,
                check=False,
            )

    # ------------------------------------------------------------------------ the agents' API

    async def cluster_view(self, session: aiohttp.ClientSession) -> dict[str, object] | None:
        """/cluster from the first member that answers."""
        for member in self.members:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with session.get(
                    member.api_url + "/cluster", timeout=aiohttp.ClientTimeout(total=1.0)
                ) as resp:
                    if resp.status == 200:
                        body: dict[str, object] = await resp.json()
                        return body
        return None

    async def primary_index(self, session: aiohttp.ClientSession) -> int | None:
        """The member whose /primary says 200 (it holds the lease, PostgreSQL writable)."""
        for member in self.members:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(
                    member.api_url + "/primary", timeout=aiohttp.ClientTimeout(total=1.0)
                ) as resp:
                    if resp.status == 200:
                        return member.index
        return None

    async def converged(self, session: aiohttp.ClientSession) -> int | None:
        """The primary's index when one leader runs as primary, every other member streams on
        its timeline and the primary's own /primary agrees; else None."""
        view = await self.cluster_view(session)
        members = view.get("members") if view else None
        if not isinstance(members, list) or len(members) != len(self.members):
            return None
        leaders = [m for m in members if m.get("leader")]
        if len(leaders) != 1 or leaders[0].get("role") != "primary":
            return None
        timeline = leaders[0].get("timeline")
        if not all(
            m.get("state") == "streaming" and m.get("timeline") == timeline
            for m in members
            if not m.get("leader")
        ):
            return None
        return await self.primary_index(session)

    async def wait_converged(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                primary = await self.converged(session)
                if primary is not None:
                    return primary
                await asyncio.sleep(0.2)
        raise AssertionError(f"no converged cluster within {timeout} s:\n{self.diagnose()}")

    def diagnose(self) -> str:
        """The containers' states and the tail of their output, for a failing assertion."""
        lines = []
        for member in self.members:
            with contextlib.suppress(RuntimeError, AssertionError, ValueError):
                state = self.state(member.index)
                lines.append(f"{member.container}: {state.get('Status')} {state.get('ExitCode')}")
            lines += ["  " + line[:300] for line in self.logs(member.index).splitlines()[-8:]]
        return "\n".join(lines)
