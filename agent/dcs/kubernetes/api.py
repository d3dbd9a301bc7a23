"""The one transport of the Kubernetes backend: JSON requests and watch streams over a
client (agent/kube/client.py, or in tests a kubernetes_asyncio `ApiClient`: the same
`call_api` shape) built lazily by the injected factory (constructing this does
no I/O). Every request carries the request timeout; statuses a caller may handle (2xx, 404,
409, 410, 422) come back as a `Response`, the rest raise `DcsUnavailable` (`DcsAuthError` for
401/403, `Throttled` for 429). A 429 starts a pause of what can wait (throttle.py); a request
that cannot wait is sent again after its Retry-After while that fits in the request timeout.
`bounded()` turns any failure inside a deadline into `DcsUnavailable`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from agent.dcs.base import DcsAuthError, DcsError, DcsThrottled, DcsUnavailable
from agent.dcs.kubernetes.objects import KubeObject
from agent.dcs.kubernetes.throttle import ThrottleState
from agent.http.client import HttpError

ClientFactory = Callable[[], Awaitable[Any]]

_CLOSE_TIMEOUT_S = 2.0
_WATCH_READ_GRACE_S = 10.0  # a stream silent for timeoutSeconds + this is dead
_PATIENT_CHECK_S = 1.0  # a stream kept open while patient() is judged again this often
# A stream kept open through a throttling ends at a random point of this many seconds once
# patience is over, not at once: every stream of every member kept so would otherwise be
# re-opened in one burst, just as the fleet comes back (review hreview3, finding 6).
_PATIENCE_END_SPREAD_S = 5.0
_THROTTLED_ATTEMPTS = 3  # sends of one request the server throttles (429 + Retry-After)
_SEND_ROOM_S = 0.05  # a renewal sent again inside its call leaves its answer this long


class Throttled(DcsThrottled):
    """The server answered 429 Too Many Requests (after the retries its Retry-After allowed):
    unavailable for the HA loop, but the server is alive. `retry_after_s`: the server's
    Retry-After with jitter (throttle.py), if it gave one."""


class Expired(Exception):
    """A watch asked for a resourceVersion the server no longer has (410 Gone)."""


class Response:
    """Status and decoded JSON body of one API answer."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body

    @property
    def obj(self) -> KubeObject:
        return self.body if isinstance(self.body, dict) else {}


def message(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("message") or body.get("reason") or "")[:200]
    return ""


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """The Retry-After of a 429, in seconds (None: absent or not a number of seconds)."""
    text = (headers or {}).get("Retry-After", "")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 else None


def expect(response: Response, *statuses: int) -> None:
    """Raise DcsUnavailable unless the answer has one of `statuses`."""
    if response.status not in statuses:
        raise DcsUnavailable(
            f"kubernetes: unexpected HTTP {response.status}: {message(response.body)}"
        )


@contextlib.asynccontextmanager
async def bounded(what: str, limit_s: float) -> AsyncIterator[None]:
    """One operation bounded by `limit_s`; every failure becomes DcsUnavailable."""
    try:
        async with asyncio.timeout(limit_s):
            yield
    except DcsUnavailable:
        raise
    except TimeoutError:
        raise DcsUnavailable(f"kubernetes: {what}: no answer within {limit_s:g} s") from None
    except (DcsError, OSError, HttpError, ValueError) as exc:
        raise DcsUnavailable(f"kubernetes: {what}: {exc!r}") from exc


class _StreamEnds:
    """When a watch stream is ended on our side (`KubeApi.watch`): silent for `quiet_s`, or
    open for `end_s`, each judged when due on the event loop's clock and put off for
    `_PATIENT_CHECK_S` at a time while `patient()`; a stream that was kept so ends at a random
    point of the `_PATIENCE_END_SPREAD_S` after patience is over."""

    def __init__(
        self,
        *,
        quiet_s: float | None,
        end_s: float | None,
        patient: Callable[[], bool] | None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._clock = clock or asyncio.get_running_loop().time
        self._opened = self._heard = self._clock()
        self._quiet_s, self._end_s = quiet_s, end_s
        self._patient = patient
        self._put_off = float("-inf")  # no check before this (patient when last due)
        self._kept = False  # put off for patience since the last spread end

    def heard(self) -> None:
        self._heard = self._clock()

    def _due(self) -> float | None:
        times = [self._put_off]
        if self._quiet_s is not None:
            times.append(self._heard + self._quiet_s)
        if self._end_s is not None:
            times.append(self._opened + self._end_s)
        return None if len(times) == 1 else max(self._put_off, min(times[1:]))

    def check_in_s(self) -> float | None:
        """Seconds until the next check (None: never; the server or the read timeout ends
        the stream)."""
        due = self._due()
        return None if due is None else max(0.0, due - self._clock())

    def now(self) -> bool:
        """At a check: True if the stream ends now; else the check is put off."""
        if self._patient is not None and self._patient():
            self._put_off = self._clock() + _PATIENT_CHECK_S
            self._kept = True
            return False
        due = self._due()
        if due is None or self._clock() < due:
            return False
        if self._kept:
            self._kept = False
            self._put_off = self._clock() + random.uniform(0.0, _PATIENCE_END_SPREAD_S)
            return False
        return True


class KubeApi:
    """Requests to one API server for one DCS handle."""

    def __init__(
        self,
        factory: ClientFactory,
        *,
        timeout_s: float,
        throttle: ThrottleState | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock`: monotonic seconds, for the time a call has left to send a refused
        request again; `throttle`: the pause its 429s start (default: one of its own)."""
        self._factory = factory
        self._timeout_s = timeout_s
        self._clock = clock
        self.throttle = throttle or ThrottleState(clock=clock, max_pause_s=4 * timeout_s)
        self._api: Any = None
        self._lock = asyncio.Lock()
        self.throttled = 0  # requests sent again after a 429's Retry-After

    async def _client(self) -> Any:
        async with self._lock:
            if self._api is None:
                try:
                    self._api = await self._factory()
                except Exception as exc:  # a bad kubeconfig or service account
                    raise DcsUnavailable(f"kubernetes: client configuration: {exc}") from exc
            return self._api

    async def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        resend: bool = True,
        send_by: float | None = None,
    ) -> Response:
        """One API request, bounded by the request timeout (see the module docstring);
        `body`: the JSON body, or a function that builds it for each send. A 429
        starts the throttling pause (throttle.py). With `resend`, a 429 whose Retry-After
        leaves room in that timeout is sent again after it, with jitter (the server's
        priority and fairness refused it before executing it, so a write is not applied
        twice), up to `_THROTTLED_ATTEMPTS` times; the caller's deadline bounds the whole.
        Without (a request that can wait), a 429 raises `Throttled` at once. `send_by` (a
        renewal of a lock we hold: the last moment it can be sent and answered before its
        fencing deadline, monotonic): a 429 is sent again by that deadline, sooner than its
        Retry-After in the last stretch before it (`throttle.RenewalSends`), inside
        this call while the wait leaves room in it, else `Throttled` says when to send it."""
        api = await self._client()
        started, attempt = self._clock(), 0
        if send_by is not None:
            await self._renewal_due(method, path, send_by)
        while True:
            attempt += 1
            status, data, wait_s = await self._send(
                api, method, path, query=query, body=body, content_type=content_type
            )
            if status != 429:
                if send_by is not None:
                    self.throttle.renewals.answered()
                elif not resend:
                    self.throttle.answered()
                return self._answer(method, path, status, data)
            self.throttle.refused(wait_s)
            room_s = self._timeout_s - (self._clock() - started)
            delay_s = None
            if send_by is not None:
                delay_s = self.throttle.renewals.delay_s(wait_s, send_by, room_s)
                if delay_s is not None and delay_s > room_s - _SEND_ROOM_S:
                    # Sent again by the HA loop at that time, in a call of its own.
                    raise self._refused(method, path, data, delay_s)
            elif resend and wait_s is not None and attempt < _THROTTLED_ATTEMPTS:
                delay_s = self.throttle.resend_delay_s(wait_s, room_s)
            if delay_s is None:
                jittered_s = None if wait_s is None else self.throttle.jittered_s(wait_s)
                raise self._refused(method, path, data, jittered_s)
            self.throttled += 1
            await asyncio.sleep(delay_s)

    async def _renewal_due(self, method: str, path: str, send_by: float) -> None:
        """A renewal refused lately is sent no sooner than planned (the HA loop may call
        sooner, woken before its fencing deadline), and not at all once it gave up."""
        wait_s = self.throttle.renewals.wait_s(send_by)
        if wait_s is None:
            raise Throttled(f"kubernetes: {method} {path}: throttled (429), too late to send")
        if wait_s > self._timeout_s / 2:  # the loop comes back then: the send keeps its room
            raise Throttled(f"kubernetes: {method} {path}: throttled (429)", retry_after_s=wait_s)
        await asyncio.sleep(wait_s)

    async def _send(
        self,
        api: Any,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None,
        body: Any,
        content_type: str,
    ) -> tuple[int, bytes, float | None]:
        """One send: the status, the raw body and, for a 429, its Retry-After."""
        response: Any = await api.call_api(
            path,
            method,
            query_params=list((query or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body() if callable(body) else body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=self._timeout_s,
        )
        try:
            status = int(response.status)
            data = await response.read()
            wait_s = retry_after_s(response.headers) if status == 429 else None
        finally:
            response.release()
        return status, data, wait_s

    @staticmethod
    def _decoded(data: bytes) -> Any:
        try:
            return json.loads(data) if data else None
        except ValueError:
            return None

    def _refused(self, method: str, path: str, data: bytes, retry_s: float | None) -> Throttled:
        """The 429 a call gives up on; `retry_s`: when to send it again."""
        text = message(self._decoded(data))
        return Throttled(f"kubernetes: {method} {path}: HTTP 429: {text}", retry_after_s=retry_s)

    def _answer(self, method: str, path: str, status: int, data: bytes) -> Response:
        """The answer to a call, or the error its status means."""
        decoded = self._decoded(data)
        if status in (401, 403):
            raise DcsAuthError(f"kubernetes: {method} {path}: HTTP {status}: {message(decoded)}")
        if status >= 500 or status in (400, 415):
            raise DcsUnavailable(f"kubernetes: {method} {path}: HTTP {status}: {message(decoded)}")
        return Response(status, decoded)

    async def get(self, path: str, *, resend: bool = True) -> KubeObject | None:
        """The object at `path`, None if there is none."""
        response = await self.call("GET", path, resend=resend)
        if response.status == 404:
            return None
        expect(response, 200)
        return response.obj

    async def watch(
        self,
        path: str,
        query: Mapping[str, str],
        *,
        timeout_s: int,
        quiet_s: float | None = None,
        end_s: float | None = None,
        patient: Callable[[], bool] | None = None,
    ) -> AsyncGenerator[tuple[str, KubeObject]]:
        """The (type, object) events of one watch stream, bookmarks included; ends when the
        server ends it (after `timeout_s`), or on our side once it has been silent for
        `quiet_s` or open for `end_s`, unless `patient()` says silence is expected now (the
        server throttles, throttle.py: a stream opened before that is kept, not re-opened).
        Raises `Expired` for 410 Gone, and a timeout for a stream silent for `timeout_s` and
        a grace (dead)."""
        # (connect, read): connected within the request timeout, then never silent for
        # longer than the server's own end of the stream and a grace.
        read_timeout = (self._timeout_s, timeout_s + _WATCH_READ_GRACE_S)
        params = dict(query, watch="true", timeoutSeconds=str(timeout_s))
        api = await self._client()
        response: Any = await api.call_api(
            path,
            "GET",
            query_params=list(params.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=read_timeout,
        )
        try:
            if response.status == 410:
                raise Expired
            if response.status == 429:
                wait_s = retry_after_s(response.headers)
                self.throttle.refused(wait_s)
                raise Throttled(f"watch {path}: HTTP 429", retry_after_s=wait_s)
            if response.status != 200:
                raise DcsUnavailable(f"watch {path}: HTTP {response.status}")
            ends = _StreamEnds(quiet_s=quiet_s, end_s=end_s, patient=patient)
            while True:
                # A deadline around the read itself (no task per line, review hreview3
                # finding 5): the HTTP client's read is cancel-safe, so a read cut by the
                # check goes on where it stopped.
                check = asyncio.timeout(ends.check_in_s())
                try:
                    async with check:
                        line = await response.content.readline()
                except TimeoutError:
                    if not check.expired():
                        raise  # the client's read timeout: the stream is dead
                    if ends.now():
                        return  # ended on our side, as a server end: the caller resumes
                    continue
                if not line:
                    return
                ends.heard()
                event = json.loads(line)
                kind, obj = str(event.get("type")), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Expired
                    raise DcsUnavailable(f"watch {path}: {obj.get('message')}")
                yield kind, obj
        finally:
            response.release()

    async def close(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await api.close()
