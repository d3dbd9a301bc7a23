"""Helpers for tests of the Kubernetes manifests (k8s/) and the container start-up (docker/).

- `render(name)`: `kubectl kustomize` of k8s/base or an example, as a list of objects.
- `find(objects, kind, name)`: one object of a rendered list.
- `prepare_module()`: docker/prepare.py imported as a module (it is a script, not a package).
- `pod_settings(objects, directory, env)`: the agent's Settings exactly as a pod of that
  kustomization would load them: the ConfigMap's files rendered by docker/prepare.py with the
  downward-API variables in `env`, secret files faked under `directory`.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from agent.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
KUSTOMIZATIONS: dict[str, Path] = {
    "base": K8S / "base",
    "kubernetes-dcs": K8S / "examples" / "kubernetes-dcs",
    "kubernetes-dcs-endpoints": K8S / "examples" / "kubernetes-dcs-endpoints",
    "migrate-to-lease": K8S / "examples" / "migrate-to-lease",
    "etcd-dcs": K8S / "examples" / "etcd-dcs",
    "secure": K8S / "examples" / "secure",
    "fencer-sidecar": K8S / "examples" / "fencer-sidecar",
}
RENDER_TIMEOUT_S = 60.0
AGENT_CONFIGMAP = "pgwarden-agent"
CONFIG_VOLUME = "config"
SECRETS_VOLUME = "secrets"
POD_ENV = {"POD_NAME": "pgwarden-1", "POD_IP": "10.244.1.7", "POD_NAMESPACE": "pgwarden"}


def kubectl() -> str | None:
    """The kubectl binary, or None."""
    return shutil.which("kubectl")


def render(name: str) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` renders for KUSTOMIZATIONS[name]."""
    binary = kubectl()
    if binary is None:
        raise RuntimeError("kubectl is not installed")
    result = subprocess.run(
        [binary, "kustomize", str(KUSTOMIZATIONS[name])],
        capture_output=True,
        timeout=RENDER_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {name} failed: {result.stderr.decode()[-2000:]}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of `kind` (and `name`, matched as a prefix for generated names with a
    hash suffix when `name` ends with '-')."""
    hits = [
        o
        for o in objects
        if o.get("kind") == kind
        and (
            name is None
            or o["metadata"]["name"] == name
            or (name.endswith("-") and o["metadata"]["name"].startswith(name))
        )
    ]
    if len(hits) != 1:
        raise LookupError(f"expected one {kind} {name or ''}, found {len(hits)}")
    return hits[0]


def prepare_module() -> ModuleType:
    """docker/prepare.py as a module."""
    path = REPO / "docker" / "prepare.py"
    spec = importlib.util.spec_from_file_location("pgwarden_docker_prepare", path)
    if spec is None or spec.loader is None:
        raise ImportError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The StatefulSet's (only) container."""
    containers = find(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container: the agent supervises PostgreSQL as its child"
    result: dict[str, Any] = containers[0]
    return result


def mount_path(objects: list[dict[str, Any]], volume: str) -> str:
    """Where the container mounts `volume`."""
    for mount in container(objects).get("volumeMounts", []):
        if mount["name"] == volume:
            return str(mount["mountPath"])
    raise LookupError(f"volume {volume} is not mounted")


def write_configmap(objects: list[dict[str, Any]], directory: Path) -> Path:
    """Write the agent ConfigMap's files into `directory` (as the kubelet mounts them)."""
    configmap = find(objects, "ConfigMap", AGENT_CONFIGMAP + "-")
    directory.mkdir(parents=True, exist_ok=True)
    for key, text in configmap.get("data", {}).items():
        (directory / key).write_text(text)
    return directory


def _fake_secret_files(node: Any, secrets_dir: str, fake_dir: Path) -> Any:
    """A copy of `node` with every `*_file` path under `secrets_dir` moved to a fake file."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if (
                isinstance(key, str)
                and key.endswith("_file")
                and isinstance(value, str)
                and value.startswith(secrets_dir.rstrip("/") + "/")
            ):
                fake = fake_dir / Path(value).name
                fake.write_text(f"fake-{fake.name}\n")
                out[key] = str(fake)
            else:
                out[key] = _fake_secret_files(value, secrets_dir, fake_dir)
        return out
    return node


def rendered_document(
    objects: list[dict[str, Any]], directory: Path, env: Mapping[str, str]
) -> dict[str, Any]:
    """The settings document docker/prepare.py renders in a pod of these objects."""
    source = write_configmap(objects, directory / "conf.d")
    document: dict[str, Any] = prepare_module().render_sources(source, env)
    return document


def pod_settings(
    objects: list[dict[str, Any]], directory: Path, env: Mapping[str, str] = POD_ENV
) -> Settings:
    """Settings as `pgwarden run` loads them in a pod of these objects (secrets faked)."""
    document = rendered_document(objects, directory, env)
    fake_dir = directory / "secrets"
    fake_dir.mkdir(parents=True, exist_ok=True)
    document = _fake_secret_files(document, mount_path(objects, SECRETS_VOLUME), fake_dir)
    path = directory / "pgwarden.yaml"
    path.write_text(json.dumps(document))  # JSON is YAML
    return load_settings(str(path), env)
