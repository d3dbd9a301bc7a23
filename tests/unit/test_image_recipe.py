"""The image's recipe without building it: the pinned packages (docker/constraints.txt)
against pyproject.toml, and the version the image and the manifests carry.

The built image is checked in tests/containers (make test-containers).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in (REPO / "docker" / "constraints.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)", line)
        assert match, f"docker/constraints.txt: not a `name==version` pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in found, f"docker/constraints.txt: {name} pinned twice"
        found[name] = match.group(2)
    return found


def unmet(requirements: list[str], pinned: dict[str, str]) -> list[str]:
    """The requirements that `pinned` lacks or pins outside their range."""
    problems = []
    for text in requirements:
        requirement = Requirement(text)
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement.name}: not pinned")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}=={version}: outside {requirement.specifier}")
    return problems


def test_every_runtime_dependency_is_pinned_within_the_range_pyproject_asks_for() -> None:
    assert unmet(PYPROJECT["project"]["dependencies"], pins()) == []


def test_the_build_backend_the_isolated_build_installs_is_pinned_too() -> None:
    assert unmet(PYPROJECT["build-system"]["requires"], pins()) == []


def test_a_missing_or_out_of_range_pin_is_reported() -> None:
    # The check itself: what the two tests above would say of a bad constraints file.
    assert unmet(["aiohttp>=3.10,<4", "structlog>=24.1"], {"aiohttp": "4.0.1"}) == [
        "aiohttp==4.0.1: outside <4,>=3.10",
        "structlog: not pinned",
    ]


def test_pip_is_not_pinned_since_the_build_never_installs_it() -> None:
    # The build uses the pip Debian's python3-venv ships and removes it from the venv.
    assert "pip" not in pins()


def test_the_image_and_the_manifests_carry_the_project_version() -> None:
    version = PYPROJECT["project"]["version"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^ARG VERSION={re.escape(version)}$", dockerfile, re.M)
    statefulset = (REPO / "k8s" / "base" / "statefulset.yaml").read_text()
    assert re.findall(r"^\s+image: (\S+)$", statefulset, re.M) == [f"pgwarden:{version}"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(rf"^IMAGE \?= pgwarden:{re.escape(version)}$", makefile, re.M)
