"""Kubernetes Events against a throttling test API server (issue 15): an Event refused with a
429 and a Retry-After is sent again only once that Retry-After is over, not on the Events'
own backoff (1 s first), and a member flapping meanwhile and after still costs the server no
more than its token bucket: the occurrences wait coalesced, counted in `series`."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from agent.events import Event, EventReason
from agent.kube.events import KubeEvents
from tests.integration.k8s.test_kube_events import events, recorder, until
from tests.k8s_apiserver import Fault, FaultMode, KubeApiServer

pytestmark = pytest.mark.integration

RETRY_AFTER_S = 2  # longer than the Events' first backoff (1 s)


def posts(server: KubeApiServer) -> list[tuple[float, int]]:
    """(time, status) of each Event create the server got."""
    return [
        (r.ts, r.code)
        for r in server.audit.records
        if r.method == "POST" and r.path.startswith("/apis/events.k8s.io/")
    ]


async def flap(sink: KubeEvents, times: int) -> None:
    for i in range(times):
        sink.record(Event(reason=EventReason.DEMOTED, note=f"demoted {i}"))
        sink.record(Event(reason=EventReason.FAILOVER, note=f"promoted {i}"))
        await asyncio.sleep(0)


async def test_an_event_refused_with_a_retry_after_waits_it_out_and_a_flapping_member_cannot_flood(
    kube_apiserver: KubeApiServer,
) -> None:
    server = kube_apiserver
    sink = recorder(server, burst=3, refill_s=3600.0)
    server.faults.set(
        Fault(
            mode=FaultMode.ERROR,
            status=429,
            retry_after_s=RETRY_AFTER_S,
            count=1,
            path_prefix="/apis/events.k8s.io/",
        )
    )
    task = asyncio.create_task(sink.run())
    try:
        sink.record(Event(reason=EventReason.FAILOVER, note="promoted to primary (failover)"))
        await until(lambda: len(posts(server)) == 1)
        await flap(sink, 100)  # while the refused Event waits
        await until(lambda: len(events(server)) == 2, timeout_s=RETRY_AFTER_S * 1.3 + 3)
        (refused_at, refused), (again_at, answered), *_ = posts(server)
        assert (refused, answered) == (429, 201)
        assert again_at - refused_at >= RETRY_AFTER_S - 0.05, (
            f"sent again {again_at - refused_at:.2f} s after a 429 with Retry-After {RETRY_AFTER_S}"
        )
        counts = {e["reason"]: e.get("series", {}).get("count", 1) for e in events(server)}
        assert counts == {"Failover": 101, "Demoted": 100}
        await flap(sink, 100)  # after: the bucket (3, the refused send included) is spent
        await asyncio.sleep(0.5)
        await sink.flush(0.5)
        assert len(posts(server)) == 3, f"{len(posts(server))} Event creates for a bucket of 3"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
