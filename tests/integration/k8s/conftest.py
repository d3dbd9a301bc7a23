"""Fixtures for the tests of the in-tree Kubernetes test API server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.k8s_apiserver import KubeApiServer
from tests.support.kube import api_client, kube_apiserver, kube_apiserver_process

__all__ = ["kube_apiserver", "kube_apiserver_process"]


@pytest.fixture
async def kube_client(kube_apiserver: KubeApiServer) -> AsyncIterator[Any]:
    """A kubernetes_asyncio ApiClient for the in-process server."""
    client = api_client(kube_apiserver.url)
    try:
        yield client
    finally:
        await client.close()
