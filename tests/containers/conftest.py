"""The container tier: the real image (`make image`) under podman, with the pod's hardening.

Not part of `make test` (the image build alone takes minutes): `make test-containers` builds
the image and runs this directory, and `.ci/run` calls it after `make test`. Every test here
is skipped, with the reason, where podman is missing, cannot run containers, or the image is
not built.
"""

from __future__ import annotations

import pytest

from tests.support.containers import podman_unusable_reason
from tests.support.etcd import etcd1_cluster

__all__ = ["etcd1_cluster"]

UNUSABLE = podman_unusable_reason()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if UNUSABLE is not None and "tests/containers/" in item.nodeid:
            item.add_marker(pytest.mark.skip(reason=UNUSABLE))
