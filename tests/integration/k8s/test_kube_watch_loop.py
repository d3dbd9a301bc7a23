"""`KubeApi.watch`'s read loop over the agent's own client (agent/kube/client.py on
agent/http/client.py), against a raw HTTP server on loopback: no task per event line (review
hreview3 finding 5), a dead stream found by the client's read timeout, Retry-After of a
refused watch; and `_StreamEnds`: streams kept through a throttling end spread out once
patience is over, not in one burst (finding 6)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from agent.dcs.kubernetes import api as api_module
from agent.dcs.kubernetes.api import KubeApi, Throttled, _StreamEnds
from agent.kube.client import KubeClient
from tests.support.raw_http import RawServer, raw_server

EVENTS = 200


def event_line(number: int) -> bytes:
    obj = {"metadata": {"name": f"pg-{number}", "resourceVersion": str(number)}}
    return json.dumps({"type": "MODIFIED", "object": obj}).encode() + b"\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def kube_api(server: RawServer) -> KubeApi:
    async def build() -> Any:
        return KubeClient(host=server.url, token=None, ssl_context=None)

    return KubeApi(build, timeout_s=2.0)


async def streams_events_then_stays_open(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
) -> None:
    await server.read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for number in range(EVENTS):
        writer.write(chunk(event_line(number)))
        await writer.drain()
        await asyncio.sleep(0)
    await asyncio.sleep(30)


async def test_the_watch_read_loop_makes_no_task_per_event() -> None:
    loop = asyncio.get_running_loop()
    made: list[object] = []
    default_factory = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        made.append(coro)
        if default_factory is not None:
            return default_factory(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    async with raw_server(streams_events_then_stays_open) as server:
        api = kube_api(server)
        events = api.watch("/api/v1/namespaces/default/pods", {}, timeout_s=60, quiet_s=30)
        seen = [await anext(events)]
        loop.set_task_factory(counting)
        try:
            seen += [await anext(events) for _ in range(EVENTS - 1)]
        finally:
            loop.set_task_factory(default_factory)
            await events.aclose()
            await api.close()
    assert [obj["metadata"]["name"] for _, obj in seen] == [f"pg-{n}" for n in range(EVENTS)]
    assert made == []


async def test_a_silent_stream_is_dead_after_the_read_timeout_not_kept_by_the_checks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop's own checks (quiet_s, patience) time out reads too: a timeout of the client's
    read (the stream silent past timeoutSeconds and a grace) must still end the watch."""
    monkeypatch.setattr(api_module, "_WATCH_READ_GRACE_S", 0.5)

    async def one_event_then_silence(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(chunk(event_line(1)))
        await writer.drain()
        await asyncio.sleep(30)

    async with raw_server(one_event_then_silence) as server:
        api = kube_api(server)
        events = api.watch("/api/v1/pods", {}, timeout_s=0, quiet_s=0.1, patient=lambda: True)
        await anext(events)
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await anext(events)
        # Well before the test's own 5 s bound (loose for a loaded machine).
        assert asyncio.get_running_loop().time() - started < 4
        await events.aclose()
        await api.close()


async def test_a_refused_watch_carries_its_retry_after() -> None:
    async def refuses(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
    ) -> None:
        await server.read_request(reader)
        body = b'{"kind":"Status","code":429}'
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()

    async with raw_server(refuses) as server:
        api = kube_api(server)
        with pytest.raises(Throttled) as refused:
            await anext(api.watch("/api/v1/pods", {}, timeout_s=10))
        await api.close()
    assert refused.value.retry_after_s == 3.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_streams_kept_through_a_throttling_end_spread_out_after_it() -> None:
    clock = Clock()
    throttled = [True]
    streams = [
        _StreamEnds(quiet_s=2.0, end_s=None, patient=lambda: throttled[0], clock=clock)
        for _ in range(40)
    ]
    clock.now += 10  # silent past quiet_s, but the server throttles: every check is put off
    assert not any(ends.now() for ends in streams)
    throttled[0] = False
    clock.now += 1.0  # the put-off checks are due again, patience is over
    assert not any(ends.now() for ends in streams)  # not all at once ...
    waits = sorted(ends.check_in_s() or 0.0 for ends in streams)
    assert waits[0] >= 0.0 and waits[-1] <= api_module._PATIENCE_END_SPREAD_S
    assert waits[-1] - waits[0] > api_module._PATIENCE_END_SPREAD_S / 2  # ... but spread
    clock.now += api_module._PATIENCE_END_SPREAD_S
    assert all(ends.now() for ends in streams)


def test_a_stream_never_kept_ends_when_due_without_a_spread() -> None:
    clock = Clock()
    ends = _StreamEnds(quiet_s=2.0, end_s=None, patient=lambda: False, clock=clock)
    assert ends.check_in_s() == 2.0
    clock.now += 2.0
    assert ends.now()
