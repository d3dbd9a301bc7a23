"""One etcd request on several endpoints: the attempts of a hedged call
(`EtcdTransport._call_with_failover` says how it hedges and why duplicates are harmless), and
the control-flow exceptions of one attempt on one endpoint."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any


class Retryable(Exception):
    """This endpoint failed in a way another endpoint may not: try the next one."""


class TokenRejected(Exception):
    """The endpoint rejected the auth token we sent (`token`; None when we sent none)."""

    def __init__(self, token: str | None = None) -> None:
        super().__init__("auth token rejected")
        self.token = token


# One unary request on the wire: (url, JSON body, headers) -> (HTTP status, decoded answer).
Post = Callable[[str, dict[str, Any], dict[str, str]], Awaitable[tuple[int, Any]]]
Attempt = Callable[[int], Coroutine[Any, Any, dict[str, Any]]]


def retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a finished attempt's exception as seen (one cancelled after another won)."""
    if not task.cancelled():
        task.exception()


class Hedge:
    """The attempts of one call (see `EtcdTransport._call_with_failover`): which endpoints of
    this pass are untried, which attempts run, and why each endpoint last failed."""

    def __init__(
        self, *, launch: Attempt, endpoints: Sequence[str], failures: dict[str, str]
    ) -> None:
        self._launch = launch
        self._endpoints = endpoints
        self._failures = failures
        self.running: dict[asyncio.Task[dict[str, Any]], int] = {}
        self.untried: collections.deque[int] = collections.deque()

    def new_pass(self, first: int) -> None:
        count = len(self._endpoints)
        self.untried = collections.deque((first + k) % count for k in range(count))

    def start_next(self) -> None:
        self.start(self.untried.popleft())

    def start(self, index: int) -> None:
        if index in self.untried:
            self.untried.remove(index)
        task = asyncio.ensure_future(self._launch(index))
        task.add_done_callback(retrieve)
        self.running[task] = index

    async def wait(
        self, timeout_s: float | None
    ) -> tuple[int, dict[str, Any] | Retryable | TokenRejected | TimeoutError] | None:
        """The first attempt to finish (an answer before a failure): its endpoint and its
        answer or failure; None if none finished within `timeout_s`. Raises what an
        endpoint answered that another one would not change (EtcdError)."""
        done, _ = await asyncio.wait(
            self.running, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            return None
        task = next((t for t in done if t.exception() is None), next(iter(done)))
        index = self.running.pop(task)
        exc = task.exception()
        if exc is None:
            return index, task.result()
        if isinstance(exc, Retryable | TimeoutError):
            self._failures[self._endpoints[index]] = describe(exc)
            return index, exc
        if isinstance(exc, TokenRejected):
            return index, exc
        raise exc

    def cancel(self) -> None:
        """Cancel the attempts still running (the call is answered, failed or cancelled)."""
        for task, index in self.running.items():
            self._failures.setdefault(self._endpoints[index], "no answer in time")
            task.cancel()
        self.running.clear()


def describe(exc: BaseException) -> str:
    """A short, secret-free description of why an attempt failed."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return (str(cause) or type(cause).__name__)[:200]
