"""Kubernetes Events against the test API server: the agent's Events are accepted by the
server's Event validation and land on the pod; a flapping member posts only what its token
bucket allows, with the occurrences counted in `series`; an API server that refuses is
retried, and what waited is posted once it answers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from agent.events import Event, EventReason
from agent.kube.events import KubeEvents
from tests.k8s_apiserver import Fault, FaultMode, KubeApiServer
from tests.k8s_apiserver.selectors import parse_field_selector, parse_label_selector
from tests.support.kube import agent_client

pytestmark = pytest.mark.integration


def recorder(server: KubeApiServer, **kwargs: Any) -> KubeEvents:
    async def build() -> Any:
        return agent_client(server.url)

    return KubeEvents(
        client_factory=build, namespace="default", pod_name="pg-0", instance="pg-0",
        timeout_s=2.0, **kwargs,
    )  # fmt: skip


def events(server: KubeApiServer) -> list[dict[str, Any]]:
    res = server.store_resource("events", "events.k8s.io")
    everything = parse_label_selector(""), parse_field_selector("", "Event")
    return list(server.store.list_objects(res, "default", *everything))


async def until(check: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.02)


async def test_events_land_on_the_pod_and_a_flapping_member_is_held_to_its_bucket(
    kube_apiserver: KubeApiServer,
) -> None:
    sink = recorder(kube_apiserver, burst=3, refill_s=3600.0)
    task = asyncio.create_task(sink.run())
    try:
        sink.record(Event(reason=EventReason.FAILOVER, note="promoted to primary (failover)"))
        await until(lambda: len(events(kube_apiserver)) == 1)
        (first,) = events(kube_apiserver)
        assert (first["reason"], first["type"], first["action"]) == (
            "Failover",
            "Warning",
            "Promote",
        )
        assert first["regarding"]["name"] == "pg-0"
        assert first["reportingController"] == "pgwarden.io/agent"
        # 200 flaps: two more Events leave at once (the bucket), the rest wait, coalesced.
        for i in range(100):
            sink.record(Event(reason=EventReason.DEMOTED, note=f"demoted {i}"))
            sink.record(Event(reason=EventReason.FAILOVER, note=f"promoted {i}"))
            await asyncio.sleep(0)
        await asyncio.sleep(0.5)
        posted = events(kube_apiserver)
        assert len(posted) == 3
        assert {e["reason"] for e in posted} == {"Failover", "Demoted"}
        await sink.flush(0.5)  # no token left: nothing more goes out, nothing raises
        assert len(events(kube_apiserver)) == 3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_refused_event_waits_and_is_posted_with_its_count_when_the_server_answers(
    kube_apiserver: KubeApiServer,
) -> None:
    sink = recorder(kube_apiserver, burst=10, refill_s=0.1)
    kube_apiserver.faults.set(
        Fault(mode=FaultMode.ERROR, status=503, path_prefix="/apis/events.k8s.io/")
    )
    task = asyncio.create_task(sink.run())
    try:
        for _ in range(3):
            sink.record(Event(reason=EventReason.FENCED, note="fenced"))
        await asyncio.sleep(1.5)
        assert events(kube_apiserver) == []
        kube_apiserver.faults.clear()
        await until(lambda: len(events(kube_apiserver)) == 1, timeout_s=10)
        (posted,) = events(kube_apiserver)
        assert posted["reason"] == "Fenced" and posted["series"]["count"] == 3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
