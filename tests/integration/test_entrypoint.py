"""docker/entrypoint.sh, run as is (the container's start-up without a container).

A fake `pgwarden` on PATH records its argv, environment and pid, so the tests see what the
entrypoint prepared, what it passed and that it `exec`ed (same pid, SIGTERM reaches the
agent). The entrypoint refuses root, so when the tests run as root it runs as the `postgres`
OS user with its own temp dir; its helper needs a Python with PyYAML that user can execute.
Run as root, the tests also build the pod's volume mounts as the kubelet leaves them with
`fsGroup` (root-owned, group = the fsGroup, setgid, an emptyDir world-writable).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import manifests

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
WAIT_S = 10.0

FAKE_PGWARDEN = r"""#!/bin/sh
# Records what the entrypoint handed over, then waits for SIGTERM if asked to.
out="$FAKE_OUT"
record='import json, os, sys
seen = {"argv": sys.argv[1:], "pid": int(os.environ["FAKE_PID"]), "env": dict(os.environ)}
with open(os.environ["FAKE_OUT"] + ".json", "w") as fh:
    json.dump(seen, fh)'
FAKE_PID=$$ "$FAKE_PYTHON" -c "$record" "$@"
if [ -n "${FAKE_WAIT:-}" ]; then
  trap 'echo TERM > "$out.term"; exit 0' TERM
  touch "$out.ready"
  while :; do sleep 0.05; done
fi
exit "${FAKE_EXIT:-0}"
"""

BASE_CONFIG = """\
cluster: demo
run_dir: {root}/run
postgresql:
  data_dir: {root}/volume/pgdata
  listen_host: "*"
  socket_dir: {root}/run
  superuser:
    password_file: /etc/pgwarden/secrets/superuser-password
api:
  listen_host: 0.0.0.0
  port: 8123
  token_file: /etc/pgwarden/secrets/api-token
"""

DCS_CONFIG = """\
dcs:
  kind: kubernetes
  kubernetes:
    lock: endpoints
"""


def _runs_as_postgres() -> bool:
    return os.geteuid() == 0


def _python_for(user: str | None) -> str | None:
    """A Python with PyYAML that `user` (None: this user) can run, or None."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        if not os.path.exists(candidate):
            continue
        try:
            result = subprocess.run(
                [candidate, "-c", "import yaml"],
                user=user,
                capture_output=True,
                timeout=WAIT_S,
                check=False,
                cwd="/",
            )
        except PermissionError:  # e.g. a venv under /root, for the postgres user
            continue
        if result.returncode == 0:
            return candidate
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Sandbox:
    """A temp dir owned by the user the entrypoint runs as, with a fake pgwarden on PATH."""

    root: Path
    conf_dir: Path
    output: Path
    record: Path
    bin_dir: Path
    user: str | None
    python: str

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin_dir}:/usr/bin:/bin",
            "HOME": str(self.root),
            "PGW_CONFIG_SOURCE": str(self.conf_dir),
            "PGW_CONFIG_OUTPUT": str(self.output),
            "PGW_PYTHON": self.python,
            "FAKE_OUT": str(self.record),
            "FAKE_PYTHON": self.python,
            "POD_NAME": "demo-1",
            "POD_IP": "10.0.0.7",
            "POD_NAMESPACE": "db",
        }
        env.update(extra)
        return env

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        # As in the pod: runAsUser, runAsGroup, and the fsGroup as the one supplementary group
        # (not root's groups, which Popen would otherwise keep).
        gid = None if self.user is None else pwd.getpwnam(self.user).pw_gid
        return subprocess.Popen(
            [str(ENTRYPOINT), *args],
            env=self.env(**env),
            user=self.user,
            group=gid,
            extra_groups=None if gid is None else [gid],
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def run(self, *args: str, **env: str) -> tuple[int, str, int]:
        """(exit code, stderr, the entrypoint's pid)."""
        proc = self.start(*args, **env)
        try:
            _, err = proc.communicate(timeout=WAIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return proc.returncode, err.decode(), proc.pid

    def recorded(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(Path(f"{self.record}.json").read_text())
        return data

    def chown(self, path: Path) -> None:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    user = "postgres" if _runs_as_postgres() else None
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.skip("running as root and there is no postgres OS user")
    python = _python_for(user)
    if python is None:
        pytest.skip(f"no Python with PyYAML that {user or 'this user'} can run")
    root = Path(tempfile.mkdtemp(prefix="pgwarden-entrypoint-"))
    try:
        box = Sandbox(
            root=root,
            conf_dir=root / "conf.d",
            output=root / "run" / "pgwarden.yaml",
            record=root / "record",
            bin_dir=root / "bin",
            user=user,
            python=python,
        )
        for directory in (root, box.conf_dir, box.bin_dir, root / "volume"):
            directory.mkdir(exist_ok=True)
            box.chown(directory)
        (box.conf_dir / "00-base.yaml").write_text(BASE_CONFIG.format(root=root))
        (box.conf_dir / "10-dcs.yaml").write_text(DCS_CONFIG)
        fake = box.bin_dir / "pgwarden"
        fake.write_text(FAKE_PGWARDEN)
        fake.chmod(0o755)
        yield box
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


EMPTYDIR_FSGROUP_MODE = 0o2777  # the kubelet's emptyDir (0777) after the fsGroup change
VOLUME_FSGROUP_MODE = 0o2775  # a fresh volume's root (0755) after the fsGroup change


def _kubelet_mount(sandbox: Sandbox, path: Path, mode: int) -> Path:
    """`path` as the kubelet leaves a volume's mount point with securityContext.fsGroup:
    owned by root, group = the fsGroup (the entrypoint user's group, 999 in the image)."""
    if sandbox.user is None:
        pytest.skip("needs root to make a root-owned mount point")
    fs_group = pwd.getpwnam(sandbox.user).pw_gid
    path.mkdir(parents=True)
    for parent in path.relative_to(sandbox.root).parents:
        (sandbox.root / parent).chmod(0o755)  # traversable, as on the image's root filesystem
    os.chown(path, 0, fs_group)
    path.chmod(mode)
    return path


def _inside(sandbox: Sandbox, absolute: str) -> Path:
    """A path of the pod's filesystem, inside the sandbox."""
    return sandbox.root / Path(absolute).relative_to("/")


def _write_settings(sandbox: Sandbox, socket_dir: Path) -> None:
    document = yaml.safe_load(BASE_CONFIG.format(root=sandbox.root))
    document["postgresql"]["socket_dir"] = str(socket_dir)
    (sandbox.conf_dir / "00-base.yaml").write_text(yaml.safe_dump(document))


def test_entrypoint_prepares_the_volume_renders_the_settings_and_execs_the_agent(
    sandbox: Sandbox,
) -> None:
    code, err, pid = sandbox.run("--check-config")
    assert code == 0, err
    seen = sandbox.recorded()
    assert seen["argv"] == ["run", "--config", str(sandbox.output), "--check-config"]
    assert seen["pid"] == pid, "the agent must replace the entrypoint's shell (exec)"
    data_dir = sandbox.root / "volume" / "pgdata"
    assert data_dir.is_dir()
    assert _mode(data_dir) == 0o700
    assert _mode(sandbox.root / "run") == 0o700
    assert _mode(sandbox.output) == 0o600
    rendered = yaml.safe_load(sandbox.output.read_text())
    assert rendered["name"] == "demo-1"
    assert rendered["postgresql"]["connect_host"] == "10.0.0.7"
    assert rendered["api"]["connect_url"] == "http://10.0.0.7:8123"
    # Both files merged: the DCS section from 10-dcs.yaml, the rest from 00-base.yaml.
    assert rendered["dcs"]["kubernetes"]["lock"] == "endpoints"
    assert rendered["cluster"] == "demo"
    # The downward-API variables reach the agent (it reads POD_NAMESPACE itself).
    assert seen["env"]["POD_NAMESPACE"] == "db"
    assert not any(k.startswith("PGWARDEN_") for k in seen["env"]), "no stray settings"


def test_entrypoint_resets_a_data_directory_opened_up_by_fsgroup_to_0700(
    sandbox: Sandbox,
) -> None:
    data_dir = sandbox.root / "volume" / "pgdata"
    data_dir.mkdir()
    sandbox.chown(data_dir)
    data_dir.chmod(0o2770)  # what a recursive fsGroup change leaves behind
    (data_dir / "PG_VERSION").write_text("15\n")
    code, err, _ = sandbox.run()
    assert code == 0, err
    assert _mode(data_dir) == 0o700
    assert (data_dir / "PG_VERSION").read_text() == "15\n", "existing data is left alone"


def test_entrypoint_keeps_explicit_settings_and_takes_the_api_port_from_the_environment(
    sandbox: Sandbox,
) -> None:
    (sandbox.conf_dir / "20-local.yaml").write_text("name: fixed\npostgresql:\n  port: 5433\n")
    code, err, _ = sandbox.run(POD_IP="fd00::7", PGWARDEN_API__PORT="9000")
    assert code == 0, err
    rendered = yaml.safe_load(sandbox.output.read_text())
    assert rendered["name"] == "fixed"
    assert rendered["postgresql"]["port"] == 5433
    assert rendered["postgresql"]["connect_host"] == "fd00::7"
    assert rendered["api"]["connect_url"] == "http://[fd00::7]:9000"
    assert sandbox.recorded()["env"]["PGWARDEN_API__PORT"] == "9000"


def test_sigterm_to_the_container_process_reaches_the_agent(sandbox: Sandbox) -> None:
    proc = sandbox.start(FAKE_WAIT="1")
    try:
        ready = Path(f"{sandbox.record}.ready")
        deadline = time.monotonic() + WAIT_S
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), proc.stderr.read().decode() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_S) == 0
        assert Path(f"{sandbox.record}.term").read_text().strip() == "TERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_entrypoint_passes_ctl_commands_through_without_preparing_anything(
    sandbox: Sandbox,
) -> None:
    code, err, _ = sandbox.run("ctl", "list")
    assert code == 0, err
    assert sandbox.recorded()["argv"] == ["ctl", "list"]
    assert not sandbox.output.exists()
    assert not (sandbox.root / "volume" / "pgdata").exists()


def test_entrypoint_exits_2_naming_the_problem_and_never_starts_the_agent(
    sandbox: Sandbox,
) -> None:
    (sandbox.conf_dir / "10-dcs.yaml").write_text("dcs: [not, a, mapping\n")
    code, err, _ = sandbox.run()
    assert code == 2
    assert "10-dcs.yaml: not valid YAML at line" in err
    assert not Path(f"{sandbox.record}.json").exists()
    assert not sandbox.output.exists()


def test_entrypoint_refuses_a_data_directory_owned_by_another_user(sandbox: Sandbox) -> None:
    if sandbox.user is None:
        pytest.skip("needs root to make a directory owned by another user")
    data_dir = sandbox.root / "volume" / "pgdata"
    data_dir.mkdir(mode=0o755)  # owned by root
    code, err, _ = sandbox.run()
    assert code == 2
    assert "owned by uid 0" in err
    assert not Path(f"{sandbox.record}.json").exists()


def test_the_shipped_settings_start_on_the_fsgroup_mounts_of_the_shipped_statefulset(
    sandbox: Sandbox,
) -> None:
    # k8s/base as the pod sees it: its ConfigMap's settings, the entrypoint's default output,
    # and the StatefulSet's emptyDir and volume mounted where it says, moved into the sandbox.
    if manifests.kubectl() is None:
        pytest.skip("kubectl (kustomize) is not installed")
    objects = manifests.render("base")
    document = manifests.rendered_document(objects, sandbox.root / "configmap", {})
    run_mount = _kubelet_mount(
        sandbox, _inside(sandbox, manifests.mount_path(objects, "run")), EMPTYDIR_FSGROUP_MODE
    )
    _kubelet_mount(
        sandbox, _inside(sandbox, manifests.mount_path(objects, "pgdata")), VOLUME_FSGROUP_MODE
    )
    postgresql = document["postgresql"]
    document["run_dir"] = str(_inside(sandbox, document["run_dir"]))
    postgresql["data_dir"] = str(_inside(sandbox, postgresql["data_dir"]))
    postgresql["socket_dir"] = str(_inside(sandbox, postgresql["socket_dir"]))
    for stale in sandbox.conf_dir.iterdir():
        stale.unlink()
    (sandbox.conf_dir / "00-base.yaml").write_text(yaml.safe_dump(document))
    default_output = re.search(r"PGW_CONFIG_OUTPUT:-([^}]+)\}", ENTRYPOINT.read_text())
    assert default_output is not None
    output = _inside(sandbox, default_output.group(1))

    code, err, _ = sandbox.run(PGW_CONFIG_OUTPUT=str(output))

    assert code == 0, err
    uid = pwd.getpwnam(str(sandbox.user)).pw_uid
    socket_dir = Path(postgresql["socket_dir"])
    assert socket_dir.parent == run_mount, "the sockets go to a subdirectory of the emptyDir"
    assert socket_dir.stat().st_uid == uid
    assert _mode(socket_dir) == 0o700
    assert output.parent.stat().st_uid == uid
    assert _mode(output.parent) == 0o700
    assert _mode(output) == 0o600
    assert sandbox.recorded()["argv"] == ["run", "--config", str(output)]
    assert _mode(run_mount) == EMPTYDIR_FSGROUP_MODE, "the mount point itself is left alone"


def test_entrypoint_refuses_sockets_in_a_world_writable_mount_point_it_does_not_own(
    sandbox: Sandbox,
) -> None:
    # Another user could replace PostgreSQL's socket there with an impostor the agent would
    # probe and trust: the directory must be the agent's own.
    mount = _kubelet_mount(sandbox, sandbox.root / "mnt" / "run", EMPTYDIR_FSGROUP_MODE)
    _write_settings(sandbox, socket_dir=mount)
    code, err, _ = sandbox.run()
    assert code == 2
    assert f"socket directory {mount}: owned by uid 0" in err
    assert "name a subdirectory of it instead" in err
    assert not Path(f"{sandbox.record}.json").exists()
    assert not sandbox.output.exists()


def test_entrypoint_refuses_to_write_the_settings_into_a_mount_point_it_does_not_own(
    sandbox: Sandbox,
) -> None:
    # Whoever could replace the rendered file would choose the agent's commands.
    mount = _kubelet_mount(sandbox, sandbox.root / "mnt" / "run", EMPTYDIR_FSGROUP_MODE)
    _write_settings(sandbox, socket_dir=mount / "private")
    output = mount / "pgwarden.yaml"
    code, err, _ = sandbox.run(PGW_CONFIG_OUTPUT=str(output))
    assert code == 2
    assert f"directory of the rendered settings {mount}: owned by uid 0" in err
    assert not output.exists()
    assert not Path(f"{sandbox.record}.json").exists()


def test_entrypoint_refuses_a_symlinked_socket_directory_in_a_world_writable_mount(
    sandbox: Sandbox,
) -> None:
    # The link's owner (anyone, in that directory) could later point it elsewhere.
    mount = _kubelet_mount(sandbox, sandbox.root / "mnt" / "run", EMPTYDIR_FSGROUP_MODE)
    target = sandbox.root / "elsewhere"
    target.mkdir(mode=0o700)
    sandbox.chown(target)
    (mount / "private").symlink_to(target)
    _write_settings(sandbox, socket_dir=mount / "private")
    code, err, _ = sandbox.run()
    assert code == 2
    assert "a symbolic link in a directory other users may write to" in err
    assert not Path(f"{sandbox.record}.json").exists()


def test_entrypoint_refuses_to_run_as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    result = subprocess.run(
        [str(ENTRYPOINT)],
        env={"PATH": "/usr/bin:/bin", "PGW_PGWARDEN": "/bin/false"},
        capture_output=True,
        timeout=WAIT_S,
        check=False,
    )
    assert result.returncode == 2
    assert b"refusing to run as root" in result.stderr
