"""The built image itself: what is in it, what is not, and what its build left behind.

Each test inspects the image that `make image` built (podman run --rm, podman save); none
starts a cluster.
"""

from __future__ import annotations

import json
import re
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.containers import BUILD_STAGE_IMAGE, IMAGE, REPO, podman

pytestmark = [pytest.mark.containers, pytest.mark.timeout(300)]

CONSTRAINTS = REPO / "docker" / "constraints.txt"
HOST_EXTRA_CAS = Path("/usr/local/share/ca-certificates")


def run_in_image(*command: str, entrypoint: str = "", user: str = "") -> str:
    args = ["run", "--rm", "--network=none", "--read-only"]
    if entrypoint:
        args += ["--entrypoint", entrypoint]
    if user:
        args += ["--user", user]
    return podman(*args, IMAGE, *command)


def pins() -> dict[str, str]:
    found = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            found[normalized(name)] = version
    return found


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_venv_holds_exactly_the_pinned_packages_and_neither_pip_nor_setuptools() -> None:
    script = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    installed = json.loads(run_in_image("-c", script, entrypoint="/opt/pgwarden/bin/python"))
    versions = {normalized(name): version for name, version in installed.items()}
    assert "pip" not in versions and "setuptools" not in versions, sorted(versions)
    assert versions.pop("pgwarden") == project()["version"]
    wanted = {name: v for name, v in pins().items() if name not in ("setuptools", "wheel")}
    assert versions == wanted


def project() -> dict[str, str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert isinstance(data, dict)
    return data


def test_the_image_carries_the_oci_labels() -> None:
    labels = json.loads(podman("image", "inspect", "--format", "{{json .Labels}}", IMAGE))
    prefix = "org.opencontainers.image."
    assert labels[prefix + "title"] == "pgwarden"
    assert labels[prefix + "version"] == project()["version"]
    assert labels[prefix + "licenses"] == project()["license"]
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", labels[prefix + "revision"])
    assert labels[prefix + "base.name"].endswith("debian:bookworm-slim")


def test_postgresql_s_jit_llvm_is_left_out_and_apt_still_sees_consistent_packages() -> None:
    script = (
        "set -e; ! ls /usr/lib/*/libLLVM-14.so* /usr/lib/postgresql/15/lib/llvmjit.so "
        "2>/dev/null; dpkg-query -W -f='${Status}\\n' libllvm14 postgresql-15; apt-get check -qq"
    )
    # As root: apt-get check takes dpkg's lock.
    out = run_in_image("-c", script, entrypoint="/bin/sh", user="0")
    assert out.split() == ["install", "ok", "installed"] * 2


def layer_members(image: str, directory: Path) -> Iterator[tuple[str, tarfile.TarFile]]:
    """(layer digest, open tar) of each layer of `image`, saved into `directory`."""
    target = directory / "oci"
    podman("save", "--format", "oci-dir", "-o", str(target), image, timeout=300)
    index = json.loads((target / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((target / "blobs" / "sha256" / manifest_digest).read_text())
    for layer in manifest["layers"]:
        digest = layer["digest"].split(":")[1]
        with tarfile.open(target / "blobs" / "sha256" / digest, "r:*") as tar:
            yield digest[:12], tar


def host_only_ca_lines() -> list[bytes]:
    """One base64 line from each CA this host trusts beyond Debian's bundle (what
    update-ca-certificates adds from /usr/local/share/ca-certificates): if any reached the
    build's pip through the secret, it must be in no layer."""
    lines = []
    for path in sorted(HOST_EXTRA_CAS.glob("*.crt")) if HOST_EXTRA_CAS.is_dir() else []:
        body = [line for line in path.read_bytes().splitlines() if not line.startswith(b"---")]
        if len(body) > 3:
            lines.append(body[2])
    return lines


@pytest.mark.parametrize("image", [IMAGE, BUILD_STAGE_IMAGE], ids=["runtime", "build-stage"])
def test_the_ca_trust_passed_to_the_build_is_in_no_layer(image: str, tmp_path: Path) -> None:
    """The build gets the host's CA bundle as a secret mounted at /run/secrets during the
    pip steps only (docker/image.sh, Dockerfile). No layer of the image, nor of the build
    stage whose venv it copies, holds a file there or any file with a host-only CA in it.
    (The build stage's pip layers do hold the empty directory /run/secrets, the mount
    point's parent that buildah creates; no file.)"""
    markers = host_only_ca_lines()
    scanned = 0
    for digest, tar in layer_members(image, tmp_path):
        for member in tar:
            name = member.name.removeprefix("./")
            assert not (name.startswith("run/secrets/") and not member.isdir()), (digest, name)
            if member.isfile() and markers:
                data = tar.extractfile(member)
                assert data is not None
                content = data.read()
                assert not any(marker in content for marker in markers), (digest, name)
            scanned += 1
    assert scanned > 100
