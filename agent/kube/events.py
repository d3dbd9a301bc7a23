"""Kubernetes Events (events.k8s.io/v1) on this member's pod for what happened to it
(agent/events.py): `kubectl get events` and `kubectl describe pod` show promotions,
demotions, fencing, hand-overs, rewinds, re-clones and failsafe.

A flapping member must not flood the API server. `EventThrottle` (pure, times passed in)
coalesces occurrences of one reason that wait to be sent into one Event carrying
`series.count` and the latest note, and lets Events out through a token bucket (`burst`
at once, then one per `refill_s`); at most `max_pending` reasons wait, beyond that new ones
are dropped and counted. So a member costs the API server at most `burst` Events at once
and one per `refill_s` after that, however often it flaps.

Only `create` is used (a coalesced Event is a new object with its series), so the Role
grants events `create` and nothing else. `record()` never blocks (the HA loop calls it);
`KubeEvents.run()` sends, each request bounded by `timeout_s`; a failed send (the API server
down or throttling) is retried with backoff, up to 30 s apart (a 429: not before its
Retry-After), and dropped (logged) only
once it has waited 10 minutes. `flush()` sends what is left within a
bound when the agent stops, so that the hand-over on SIGTERM is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from agent.events import Event, EventReason
from agent.kube.client import ClientFactory, KubeRequests, retry_wait_s

REPORTING_CONTROLLER = "pgwarden.io/agent"
_RETRY_FIRST_S = 1.0
_RETRY_MAX_S = 30.0
_MAX_AGE_S = 600.0  # an Event that could not be sent for this long is dropped


@dataclass(slots=True, kw_only=True)
class Pending:
    """Occurrences of one reason waiting to be sent: the latest event, how many, since when
    (wall-clock seconds; informational, as Kubernetes shows them)."""

    event: Event
    count: int
    first_wall: float
    last_wall: float
    queued_at: float = 0.0  # monotonic, when the first of them was recorded


class EventThrottle:
    """Coalescing and the token bucket (see the module docstring). Times are monotonic
    seconds passed in by the caller."""

    def __init__(self, *, burst: int, refill_s: float, max_pending: int, now: float) -> None:
        if burst < 1 or refill_s <= 0 or max_pending < 1:
            raise ValueError("burst and max_pending must be >= 1, refill_s > 0")
        self._burst = burst
        self._refill_s = refill_s
        self._max_pending = max_pending
        self._tokens = float(burst)
        self._at = now
        self._pending: dict[EventReason, Pending] = {}
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, event: Event, *, now: float, wall: float) -> None:
        waiting = self._pending.get(event.reason)
        if waiting is not None:
            waiting.event, waiting.count, waiting.last_wall = event, waiting.count + 1, wall
        elif len(self._pending) >= self._max_pending:
            self.dropped += 1
        else:
            self._pending[event.reason] = Pending(
                event=event, count=1, first_wall=wall, last_wall=wall, queued_at=now
            )

    def take(self, now: float) -> Pending | None:
        """The oldest waiting reason if a token is free (spending it), else None."""
        self._refill(now)
        if not self._pending or self._tokens < 1:
            return None
        self._tokens -= 1
        reason = next(iter(self._pending))
        return self._pending.pop(reason)

    def put_back(self, pending: Pending) -> None:
        """A send failed: wait again (merged with what came meanwhile)."""
        waiting = self._pending.pop(pending.event.reason, None)
        if waiting is not None:
            pending.event, pending.last_wall = waiting.event, waiting.last_wall
            pending.count += waiting.count
        self._pending[pending.event.reason] = pending

    def wait_s(self, now: float) -> float | None:
        """How long until `take` can return something; None when nothing waits."""
        if not self._pending:
            return None
        self._refill(now)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) * self._refill_s

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._at)
        self._tokens = min(float(self._burst), self._tokens + elapsed / self._refill_s)
        self._at = now


def micro_time(epoch: float) -> str:
    """A Kubernetes MicroTime (RFC 3339, UTC, microseconds)."""
    whole = math.floor(epoch)
    micros = min(999_999, round((epoch - whole) * 1e6))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micros:06d}Z"


def event_body(
    pending: Pending, *, namespace: str, pod: str, instance: str, now_wall: float
) -> dict[str, Any]:
    """The events.k8s.io/v1 Event for `pending` on the pod `pod` (its name is unique per
    pod and time, as client-go's)."""
    event = pending.event
    body: dict[str, Any] = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": f"{pod}.{int(now_wall * 1e9):x}", "namespace": namespace},
        "eventTime": micro_time(pending.first_wall),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": instance[:128],
        "action": event.action,
        "reason": event.reason.value,
        "regarding": {"apiVersion": "v1", "kind": "Pod", "name": pod, "namespace": namespace},
        "note": event.note[:1024],
        "type": "Warning" if event.warning else "Normal",
    }
    if pending.count > 1:
        body["series"] = {"count": pending.count, "lastObservedTime": micro_time(pending.last_wall)}
    return body


class KubeEvents:
    """The EventSink for one pod. Build it in app.py; run `run()` as a named task."""

    def __init__(
        self,
        *,
        client_factory: ClientFactory,
        namespace: str,
        pod_name: str,
        instance: str,
        timeout_s: float,
        burst: int = 10,
        refill_s: float = 30.0,
        max_pending: int = 20,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._requests = KubeRequests(client_factory, timeout_s=timeout_s)
        self._namespace = namespace
        self._pod = pod_name
        self._instance = instance
        self._monotonic = monotonic
        self._wall = wall
        self._throttle = EventThrottle(
            burst=burst, refill_s=refill_s, max_pending=max_pending, now=monotonic()
        )
        self._wake = asyncio.Event()
        self._log = structlog.get_logger("pgwarden.kube").bind(pod=pod_name)
        self._retry_s = _RETRY_FIRST_S
        self.sent = 0

    def record(self, event: Event) -> None:
        self._throttle.add(event, now=self._monotonic(), wall=self._wall())
        self._wake.set()

    async def run(self) -> None:
        """Forever: send what the throttle lets out."""
        try:
            while True:
                wait = self._throttle.wait_s(self._monotonic())
                self._wake.clear()
                if wait is None or wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._wake.wait()
                    continue
                await self._send_due()
        finally:
            await self.close()

    async def flush(self, limit_s: float) -> None:
        """Send what may be sent now, within `limit_s` (the agent is stopping)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):
                while self._throttle.wait_s(self._monotonic()) == 0:
                    await self._send_due()

    async def _send_due(self) -> None:
        pending = self._throttle.take(self._monotonic())
        if pending is None:
            return
        try:
            await self._create(pending)
        except Exception as exc:  # logged and retried with backoff; never fatal
            kept = self._monotonic() - pending.queued_at < _MAX_AGE_S
            if kept:
                self._throttle.put_back(pending)
            wait_s = retry_wait_s(exc, self._retry_s)  # a 429: after its Retry-After
            self._log.warning(
                "kube_event_failed",
                reason=pending.event.reason.value,
                retry_s=wait_s if kept else None,
                error=repr(exc),
            )
            await asyncio.sleep(wait_s)
            self._retry_s = min(2 * self._retry_s, _RETRY_MAX_S)
            return
        self.sent += 1
        self._retry_s = _RETRY_FIRST_S

    async def _create(self, pending: Pending) -> None:
        body = event_body(
            pending,
            namespace=self._namespace,
            pod=self._pod,
            instance=self._instance,
            now_wall=self._wall(),
        )
        await self._requests.request(
            "POST",
            f"/apis/events.k8s.io/v1/namespaces/{self._namespace}/events",
            body=body,
            ok=(200, 201),
        )

    async def close(self) -> None:
        await self._requests.close()
