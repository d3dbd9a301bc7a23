"""k8s/examples/fencer-sidecar: the fencer in a container of its own, outside the CPU limit of
the container that runs PostgreSQL and the agent (issue 16). The manifests render and
validate, and agree with the agent and the fencer they deploy: the same socket, data
directory and grace; one process namespace; the same user, no capability.

Skipped when kubectl (which renders the kustomizations) is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from agent.config import Settings
from agent.fencer import parse_args
from agent.settings import FencerMode
from tests.support import manifests as m

pytestmark = pytest.mark.skipif(m.kubectl() is None, reason="kubectl is not installed")

NAME = "fencer-sidecar"


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return m.render(NAME)


@pytest.fixture
def settings(objects: list[dict[str, Any]], tmp_path: Path) -> Settings:
    return m.pod_settings(objects, tmp_path)


def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = m.find(objects, "StatefulSet")["spec"]["template"]["spec"]
    return spec


def fencer(objects: list[dict[str, Any]]) -> dict[str, Any]:
    sidecars: list[dict[str, Any]] = [
        c for c in pod(objects).get("initContainers", []) if c["name"] == "fencer"
    ]
    assert len(sidecars) == 1
    return sidecars[0]


def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["mountPath"]: v for v in container.get("volumeMounts", [])}


@pytest.mark.parametrize("version", ["1.32", kubernetes_validate.latest_version()])
def test_the_example_validates_against_the_kubernetes_schemas(
    objects: list[dict[str, Any]], version: str
) -> None:
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_fencer_is_a_native_sidecar_in_the_pods_one_process_namespace(
    objects: list[dict[str, Any]],
) -> None:
    spec = pod(objects)
    assert spec["shareProcessNamespace"] is True  # it signals the other container's postmaster
    sidecar = fencer(objects)
    assert sidecar["restartPolicy"] == "Always"  # running before the agent, stopped after it
    assert [c["name"] for c in spec["containers"]] == ["postgres"]
    assert sidecar["image"] == spec["containers"][0]["image"]


def test_the_fencer_listens_where_the_agent_calls_and_guards_the_agents_data_directory(
    objects: list[dict[str, Any]], settings: Settings
) -> None:
    assert settings.fencer.mode is FencerMode.EXTERNAL
    sidecar = fencer(objects)
    word, *options = sidecar["args"]
    assert word == "fencer"  # docker/entrypoint.sh execs the fencer for it
    socket_path, data_dir, agent_pid, grace = parse_args(options)
    assert agent_pid is None  # --external
    assert socket_path == settings.fencer.socket
    assert data_dir == settings.postgresql.data_dir
    assert grace == settings.timing.fence_margin_s / 2  # as the agent passes to one it starts
    # The socket's directory: one emptyDir, mounted in both containers.
    volumes = {v["name"]: v for v in pod(objects)["volumes"]}
    socket_dir = str(Path(socket_path).parent)
    agent_mount = mounts(m.container(objects))[socket_dir]
    assert mounts(sidecar)[socket_dir]["name"] == agent_mount["name"]
    assert "emptyDir" in volumes[agent_mount["name"]]
    # The data volume, read-only: the fencer reads postmaster.pid and standby.signal.
    data_mount = str(Path(data_dir).parent)
    assert mounts(sidecar)[data_mount] == {
        "name": mounts(m.container(objects))[data_mount]["name"],
        "mountPath": data_mount,
        "readOnly": True,
    }
    entrypoint = (m.REPO / "docker" / "entrypoint.sh").read_text()
    assert 'exec "$python" -I -m agent.fencer "$@"' in entrypoint


def test_the_fencer_runs_as_postgresql_s_user_without_any_capability(
    objects: list[dict[str, Any]],
) -> None:
    """Signalling a process of its own uid needs no privilege; CAP_KILL is not granted."""
    sidecar = fencer(objects)
    security = sidecar["securityContext"]
    assert "runAsUser" not in security  # the pod's: the user PostgreSQL runs as
    assert pod(objects)["securityContext"]["runAsUser"] == 999
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True


def test_the_fencer_has_a_cpu_limit_of_its_own_beside_the_databases(
    objects: list[dict[str, Any]],
) -> None:
    assert fencer(objects)["resources"]["limits"]["cpu"]
    assert fencer(objects)["resources"]["requests"]["cpu"]
    assert m.container(objects)["resources"]["limits"]["cpu"]
