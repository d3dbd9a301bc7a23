"""Building a DCS backend does no I/O: no connection, no file read, no background task.

The agent builds its backend before anything can report an error properly (and `--check-config`
builds one without a server); I/O belongs to the first call, inside that call's deadline. Each
backend here is pointed at an endpoint nothing listens on and at client files that do not
exist: construction must succeed and leave no task and no client behind, and the first call
must then fail with `DcsUnavailable`, which shows that the same I/O done at construction
would have failed it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.config import LockKind
from agent.dcs.base import DcsUnavailable
from agent.dcs.etcd import EtcdDcs
from agent.dcs.kubernetes import KubernetesDcs
from tests.support.kube import agent_client
from tests.support.ports import free_port


class CountingFactory:
    """The Kubernetes client factory, counting calls when they are made (an un-awaited call
    counts too), building a client for `url`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.calls = 0

    def __call__(self) -> Awaitable[Any]:
        self.calls += 1
        return self._build()

    async def _build(self) -> Any:
        return agent_client(self.url)


async def settled_tasks() -> set[asyncio.Task[Any]]:
    """The loop's tasks once anything scheduled before had its turns to run. Compared with
    `asyncio.all_tasks()` right after construction (no await between), it shows any task the
    constructor created, even one that would finish at once."""
    for _ in range(3):
        await asyncio.sleep(0)
    return asyncio.all_tasks()


@pytest.mark.parametrize("lock", list(LockKind))
async def test_building_the_kubernetes_backend_does_no_io_until_the_first_call(
    lock: LockKind,
) -> None:
    factory = CountingFactory(f"http://127.0.0.1:{free_port()}")
    before = await settled_tasks()
    dcs = KubernetesDcs(
        client_factory=factory,
        namespace="ns",
        cluster="pg",
        member_name="a",
        ttl_s=10.0,
        timeout_s=0.3,
        lock=lock,
        pod_ip="10.0.0.7",
        pg_port=5433,
        clock=FakeClock(),
    )
    try:
        assert asyncio.all_tasks() == before, "construction started a task"
        assert factory.calls == 0, "construction built the API client"
        with pytest.raises(DcsUnavailable):
            await dcs.get_cluster()
        assert factory.calls == 1  # the I/O the constructor must not do starts here
    finally:
        await dcs.close()


async def test_building_the_etcd_backend_does_no_io_until_the_first_call(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    before = await settled_tasks()
    dcs = EtcdDcs(
        endpoints=[f"https://127.0.0.1:{free_port()}"],
        namespace="/service",
        cluster="pg",
        member_name="a",
        ttl_s=10.0,
        timeout_s=0.3,
        ca_file=str(missing / "ca.crt"),
        cert_file=str(missing / "client.crt"),
        key_file=str(missing / "client.key"),
        username="u",
        password="p",
        clock=FakeClock(),
    )
    try:
        assert asyncio.all_tasks() == before, "construction started a task"
        with pytest.raises(DcsUnavailable):
            await dcs.get_cluster()
    finally:
        await dcs.close()
