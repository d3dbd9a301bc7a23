"""Fault injection: make matching requests fail, slow down or hang, and cut open watches.

A fault is set over HTTP (`POST /_fault` with a JSON body) or from Python
(`server.faults.set(Fault(...))`). JSON forms:

    {"mode": "error", "status": 503, "count": 2}        next 2 requests answer 503
    {"mode": "error", "status": 429, "retry_after_s": 1} 429 TooManyRequests + Retry-After
    {"mode": "throttle", "rate": 5, "burst": 5, "retry_after_s": 1}
                                                         a token bucket (5 a second, 5 at
                                                         once): a request that finds no token
                                                         gets 429 TooManyRequests + Retry-After
                                                         (the real server's priority and
                                                         fairness rejects before it executes)
    {"mode": "slow", "delay_s": 2}                       every request waits 2 s first
    {"mode": "hang"}                                     requests never answer until cleared
    {"mode": "cut_watches", "abrupt": true}              end every open watch now (one-shot)
    {"mode": "stall_watches", "path_prefix": "/api/v1/namespaces/default/pods"}
                                                         open watches (of those paths) go
                                                         silent forever, without a word, as
                                                         over a dead connection (one-shot)
    {"mode": "clear"}                                    back to normal; hung requests proceed

`count` (how many requests the fault applies to; default: until cleared), `path_prefix` (only
paths starting with it, e.g. "/apis/coordination.k8s.io") and `methods` (e.g. ["PUT","PATCH"])
narrow a fault. Admin paths (`/_...`) are never affected. One request fault is active at a
time; setting a new one replaces the previous one (and releases hung requests).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tests.k8s_apiserver.errors import ApiError, bad_request, reason_for_code


class FaultMode(StrEnum):
    """What a fault does to a matching request."""

    ERROR = "error"
    THROTTLE = "throttle"
    SLOW = "slow"
    HANG = "hang"
    CUT_WATCHES = "cut_watches"
    STALL_WATCHES = "stall_watches"
    CLEAR = "clear"


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """A fault as described in the module docstring."""

    mode: FaultMode
    status: int = 503
    retry_after_s: int | None = None
    delay_s: float = 0.0
    count: int | None = None
    path_prefix: str | None = None
    methods: tuple[str, ...] | None = None
    abrupt: bool = False
    message: str | None = None
    rate: float = 0.0  # THROTTLE: tokens a second
    burst: int = 1  # THROTTLE: the bucket's size

    def matches(self, method: str, path: str) -> bool:
        """Whether a request is affected by this fault."""
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        return self.methods is None or method.upper() in self.methods

    def to_json(self) -> dict[str, Any]:
        """This fault as the JSON accepted by `parse_fault`."""
        out: dict[str, Any] = {"mode": str(self.mode)}
        if self.mode is FaultMode.ERROR:
            out["status"] = self.status
            if self.retry_after_s is not None:
                out["retry_after_s"] = self.retry_after_s
        if self.mode is FaultMode.THROTTLE:
            out.update(rate=self.rate, burst=self.burst, retry_after_s=self.retry_after_s)
        if self.mode is FaultMode.SLOW:
            out["delay_s"] = self.delay_s
        if self.mode is FaultMode.CUT_WATCHES:
            out["abrupt"] = self.abrupt
        for key, value in (
            ("count", self.count),
            ("path_prefix", self.path_prefix),
            ("methods", list(self.methods) if self.methods else None),
        ):
            if value is not None:
                out[key] = value
        return out


def parse_fault(raw: Any) -> Fault:
    """A Fault from its JSON form; 400 on anything malformed."""
    if not isinstance(raw, dict):
        raise bad_request("fault must be a JSON object")
    try:
        mode = FaultMode(str(raw.get("mode")))
    except ValueError:
        raise bad_request(f"unknown fault mode {raw.get('mode')!r}") from None
    try:
        throttle = mode is FaultMode.THROTTLE
        default_status = 429 if raw.get("retry_after_s") is not None or throttle else 503
        status = int(raw.get("status", default_status))
        retry = raw.get("retry_after_s")
        if status == 429 and retry is None:
            retry = 1
        count = raw.get("count")
        methods = raw.get("methods")
        fault = Fault(
            mode=mode,
            status=status,
            retry_after_s=None if retry is None else int(retry),
            delay_s=float(raw.get("delay_s", 0.0)),
            count=None if count is None else int(count),
            path_prefix=raw.get("path_prefix"),
            methods=None if methods is None else tuple(str(m).upper() for m in methods),
            abrupt=bool(raw.get("abrupt", False)),
            message=raw.get("message"),
            rate=float(raw.get("rate", 0.0)),
            burst=int(raw.get("burst", 1)),
        )
    except (TypeError, ValueError) as exc:
        raise bad_request(f"invalid fault: {exc}") from None
    if not 400 <= fault.status <= 599:
        raise bad_request("fault status must be an HTTP error code (400-599)")
    if fault.delay_s < 0 or (fault.count is not None and fault.count < 1):
        raise bad_request("delay_s must be >= 0 and count >= 1")
    if fault.mode is FaultMode.THROTTLE and (fault.rate <= 0 or fault.burst < 1):
        raise bad_request("throttle needs rate > 0 and burst >= 1")
    return fault


class FaultInjector:
    """The active request fault and the requests it holds. Used by the server middleware."""

    def __init__(self) -> None:
        self._fault: Fault | None = None
        self._remaining: int | None = None
        self._tokens = 0.0  # THROTTLE: the bucket, refilled at `rate` since `_filled_at`
        self._filled_at = 0.0
        self.throttled = 0  # requests a throttle refused
        self._release = asyncio.Event()
        self.hung_requests = 0

    @property
    def active(self) -> Fault | None:
        """The active request fault (error, slow or hang), if any."""
        return self._fault

    def set(self, fault: Fault) -> None:
        """Activate a request fault (replacing any) or, for CLEAR, deactivate it.
        CUT_WATCHES and STALL_WATCHES are handled by the server (they need the store)."""
        self._release.set()  # hung requests of the previous fault proceed
        self._release = asyncio.Event()
        if fault.mode in (FaultMode.CLEAR, FaultMode.CUT_WATCHES, FaultMode.STALL_WATCHES):
            self._fault = None
            self._remaining = None
            return
        self._fault = fault
        self._remaining = fault.count
        self._tokens, self._filled_at = float(fault.burst), time.monotonic()

    def clear(self) -> None:
        """Back to normal; hung requests proceed."""
        self.set(Fault(mode=FaultMode.CLEAR))

    def _take(self, method: str, path: str) -> Fault | None:
        fault = self._fault
        if fault is None or not fault.matches(method, path):
            return None
        if self._remaining is not None:
            self._remaining -= 1
            if self._remaining <= 0:
                self._fault = None
                self._remaining = None
        return fault

    async def apply(self, method: str, path: str) -> None:
        """Run the fault for one request: raise its error, sleep, or wait until cleared."""
        fault = self._take(method, path)
        if fault is None:
            return
        match fault.mode:
            case FaultMode.THROTTLE:
                now = time.monotonic()
                self._tokens = min(
                    float(fault.burst), self._tokens + (now - self._filled_at) * fault.rate
                )
                self._filled_at = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                self.throttled += 1
                raise ApiError(
                    429,
                    fault.message or "too many requests, please try again later",
                    reason=reason_for_code(429),
                    retry_after_s=fault.retry_after_s,
                )
            case FaultMode.ERROR:
                code = fault.status
                raise ApiError(
                    code,
                    fault.message or f"injected fault: HTTP {code}",
                    reason=reason_for_code(code),
                    retry_after_s=fault.retry_after_s,
                )
            case FaultMode.SLOW:
                await asyncio.sleep(fault.delay_s)
            case FaultMode.HANG:
                release = self._release
                self.hung_requests += 1
                try:
                    # Deliberately unbounded: this fault emulates a server that never answers;
                    # the client's own timeout (or a later clear) ends it.
                    await release.wait()
                finally:
                    self.hung_requests -= 1
            case FaultMode.CUT_WATCHES | FaultMode.STALL_WATCHES | FaultMode.CLEAR:
                return
