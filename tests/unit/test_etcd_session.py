"""The etcd client's HTTP client at idle (issue 15): it keeps no periodic timer of its own,
over plain HTTP or TLS. aiohttp's clean-up of closed TLS transports (needed before Python
3.12.8) woke the event loop every 2 s for the session's life; agent/http/client.py has no such
timer (idle connections are pruned when the next request is made)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from agent.dcs.etcd_client import EtcdClient


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_the_http_client_schedules_no_timer(
    monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    loop = asyncio.get_running_loop()
    timers: list[str] = []
    call_at = loop.call_at

    def recording_call_at(when: float, callback: Callable[..., Any], *args: Any) -> Any:
        timers.append(getattr(callback, "__name__", repr(callback)))
        return call_at(when, callback, *args)

    monkeypatch.setattr(loop, "call_at", recording_call_at)
    transport = EtcdClient([f"{scheme}://127.0.0.1:2379"], timeout_s=1.0)
    try:
        transport._ensure_session()
        await asyncio.sleep(0)
        assert timers == []
    finally:
        await transport.close()
