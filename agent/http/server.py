"""A small HTTP/1.1 server on asyncio streams: the REST API's, instead of aiohttp.web
(issue 15: aiohttp is ~10 MB resident in every agent). It serves an `App` (routing.py).

What it does: keep-alive and pipelined requests (answered in order), request bodies by
Content-Length only, HEAD by GET routes, TLS through the caller's `ssl.SSLContext` (its
verify mode decides on client certificates; the peer's certificate is on the request), and a
bounded, graceful close.

What it refuses, answering JSON `{"error": ...}` and closing the connection: a request line
or header it cannot parse (400), a chunked or otherwise transfer-encoded body (411: send a
Content-Length), a body over the app's `max_body` (413), a head over `Limits.max_head_bytes`
(431), a head and body that take longer than `Limits.read_timeout_s` to arrive (408), a
connection over `Limits.max_connections` open at once (503, before it sends anything). A
connection idle longer than `Limits.idle_timeout_s` between requests is closed, and so is
one whose client does not read its answer within `read_timeout_s`: no client holds a
connection forever. Routing failures and handler errors without a middleware that answers
them leave as JSON too (500 for an exception). Deadlines are kept by one timer per server
that checks every connection's, a few times per timeout, not by a timer per request (an
`asyncio.timeout` costs 15-30 us on this machine: three per request were a quarter of the
server's time).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import structlog

from agent.http.routing import App, Headers, HttpError, Request, Response, json_response, reason

_log = structlog.get_logger(__name__)

_LINGER_S = 1.0  # after refusing a request: how long its unread rest is drained before close
_LINGER_BYTES = 1 << 20
_SEPARATOR = b"\r\n\r\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What one client may take of the server: see the module docstring."""

    max_head_bytes: int = 16 * 1024
    read_timeout_s: float = 10.0  # a request's head and body; writing its answer
    idle_timeout_s: float = 75.0  # between two requests of a kept-alive connection
    shutdown_timeout_s: float = 2.0  # for requests being served when the server closes
    # Connections open at once; more get 503 and are closed. Without a bound, clients that
    # keep connections open (one request every idle_timeout_s) could take every file
    # descriptor the agent has, and then its etcd or Kubernetes connections fail.
    max_connections: int = 256


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True, eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None
    busy: bool = False  # a request is being read or served (not waiting for the next one)
    deadline: float = math.inf  # loop time at which the current wait is given up
    expired: bool = False  # the deadline timer cancelled the task: a timeout, not a shutdown


_T = TypeVar("_T")


class HttpServer:
    """Serves an `App` on one listening socket; `start` it, `close` it once."""

    def __init__(self, app: App, limits: Limits) -> None:
        self._app = app
        self._limits = limits
        self._server: asyncio.Server | None = None
        self.port = 0  # the port listened on, once started
        self._connections: set[_Connection] = set()
        self._closing = False
        self._loop = asyncio.get_running_loop()
        # Deadlines are checked this often while connections are open: they end up to a
        # fifth of a timeout late.
        self._tick_s = min(1.0, limits.read_timeout_s / 5, limits.idle_timeout_s / 5)
        self._ticker: asyncio.TimerHandle | None = None

    @classmethod
    async def start(
        cls,
        app: App,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        limits: Limits | None = None,
    ) -> HttpServer:
        """Listen on host:port (0: a free port, see `port`). Raises OSError if it cannot."""
        server = cls(app, limits or Limits())
        server._server = await asyncio.start_server(
            server._serve_connection,
            host,
            port,
            ssl=ssl_context,
            ssl_handshake_timeout=server._limits.read_timeout_s if ssl_context else None,
            limit=server._limits.max_head_bytes,
        )
        server.port = int(server._server.sockets[0].getsockname()[1])
        return server

    async def close(self) -> None:
        """Stop listening, close idle connections, let the requests being served finish
        (answered with `Connection: close`) for up to `shutdown_timeout_s`, cancel the rest,
        then run the app's cleanups."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            if not connection.busy:
                connection.writer.close()
        tasks = [c.task for c in self._connections if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._limits.shutdown_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()
        await self._app.cleanup()

    def _check_deadlines(self) -> None:
        now = self._loop.time()
        for connection in self._connections:
            if connection.deadline <= now and connection.task is not None:
                connection.deadline = math.inf
                connection.expired = True
                connection.task.cancel()
        self._ticker = None
        if self._connections:
            self._ticker = self._loop.call_later(self._tick_s, self._check_deadlines)

    async def _within(self, connection: _Connection, seconds: float, step: Awaitable[_T]) -> _T:
        """`await step`, or TimeoutError once `seconds` have passed (see `_check_deadlines`)."""
        connection.deadline = self._loop.time() + seconds
        try:
            return await step
        except asyncio.CancelledError:
            if not connection.expired:
                raise
            connection.expired = False
            if connection.task is not None:
                connection.task.uncancel()
            raise TimeoutError from None
        finally:
            connection.deadline = math.inf

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if len(self._connections) >= self._limits.max_connections:
            writer.write(_encode(_error(503, "too many connections"), head_only=False, keep=False))
            writer.close()
            return
        connection = _Connection(writer, asyncio.current_task())
        self._connections.add(connection)
        if self._ticker is None:
            self._ticker = self._loop.call_later(self._tick_s, self._check_deadlines)
        try:
            await self._serve_requests(connection, reader)
        except asyncio.CancelledError:
            # Only this server cancels its connections (at close, or the loop's end): a task
            # ending cancelled would make asyncio log an error for it (its streams' callback).
            pass
        except (ConnectionError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError):
            writer.transport.abort()  # gone or not reading: close() would wait to flush
        finally:
            self._connections.discard(connection)
            writer.close()

    async def _serve_requests(self, connection: _Connection, reader: asyncio.StreamReader) -> None:
        limits, writer = self._limits, connection.writer
        wait_s = limits.read_timeout_s  # a new connection sends its request at once
        while not self._closing:
            connection.busy = False
            try:
                first = await self._within(connection, wait_s, reader.readexactly(1))
            except (TimeoutError, asyncio.IncompleteReadError):
                return
            connection.busy = True
            try:
                request, keep_alive = await self._within(
                    connection, limits.read_timeout_s, self._read_request(first, reader, writer)
                )
            except _Refused as refused:
                await self._refuse(connection, reader, refused.status, refused.message)
                return
            except ValueError:  # int() of over 4300 digits, urlsplit of "http://[::1"...
                await self._refuse(connection, reader, 400, "malformed request")
                return
            except TimeoutError:
                await self._refuse(connection, reader, 408, "the request took too long to arrive")
                return
            try:
                response = await self._app.respond(request)
            except HttpError as exc:
                response = _error(exc.status, exc.reason.lower(), exc.headers)
            except Exception:
                _log.exception("http_handler_failed", method=request.method, path=request.path)
                response = _error(500, "internal error")
            keep_alive = keep_alive and not self._closing
            writer.write(_encode(response, head_only=request.method == "HEAD", keep=keep_alive))
            await self._within(connection, limits.read_timeout_s, writer.drain())
            if not keep_alive:
                return
            wait_s = limits.idle_timeout_s

    async def _read_request(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[Request, bool]:
        try:
            raw = first + await reader.readuntil(_SEPARATOR)
        except asyncio.LimitOverrunError:
            raise _Refused(431, "request head too large") from None
        if len(raw) > self._limits.max_head_bytes:
            raise _Refused(431, "request head too large")
        method, target, version, headers = _parse_head(raw)
        length = _content_length(headers)
        if length > self._app.max_body:
            raise _Refused(
                413, f"request body too large: {length} bytes, at most {self._app.max_body}"
            )
        if length and (headers.get("Expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.readexactly(length) if length else b""
        path, query = _split_target(target)
        cert = writer.get_extra_info("peercert")
        request = Request(method, path, query, headers, body, peer_cert=cert or None)
        tokens = {t.strip().lower() for t in (headers.get("Connection") or "").split(",")}
        keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
        return request, keep_alive

    async def _refuse(
        self, connection: _Connection, reader: asyncio.StreamReader, status: int, message: str
    ) -> None:
        """Answer `status` and close; the rest of what the client sends is read (up to a
        bound) first, so that closing with unread data does not reset the connection before
        the client has read the answer."""
        writer = connection.writer
        writer.write(_encode(_error(status, message), head_only=False, keep=False))
        await self._within(connection, self._limits.read_timeout_s, writer.drain())
        with contextlib.suppress(Exception):
            linger_s = min(_LINGER_S, self._limits.read_timeout_s)
            await self._within(connection, linger_s, _discard(reader, _LINGER_BYTES))


async def _discard(reader: asyncio.StreamReader, limit: int) -> None:
    drained = 0
    while drained < limit and (chunk := await reader.read(64 * 1024)):
        drained += len(chunk)


def _parse_head(raw: bytes) -> tuple[str, str, str, Headers]:
    lines = raw.decode("latin-1").lstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise _Refused(400, "malformed request line")
    method, target, version = parts
    if not (method.isascii() and method.isalpha() and method.isupper()) or not target:
        raise _Refused(400, "malformed request line")
    headers = Headers()
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if (
            not sep
            or not name
            or name != name.strip()
            or " " in name
            or "\t" in name
            or ("\r" in line or "\n" in line or "\0" in line)
        ):
            raise _Refused(400, f"malformed header line {line[:40]!r}")
        headers.add(name, value.strip(" \t"))
    return method, target, version, headers


def _content_length(headers: Headers) -> int:
    if "Transfer-Encoding" in headers:
        raise _Refused(411, "a request body needs a Content-Length (no transfer coding)")
    values = {v.strip() for v in headers.getall("Content-Length")}
    if not values:
        return 0
    value = values.pop()
    if values or not value.isdigit() or not value.isascii():
        raise _Refused(400, "malformed Content-Length")
    return int(value)


def _split_target(target: str) -> tuple[str, dict[str, str]]:
    if not target.startswith("/"):
        if "://" not in target:
            raise _Refused(400, "malformed request target")
        parts = urlsplit(target)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    path, _, query = target.partition("#")[0].partition("?")
    values: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        values.setdefault(name, value)
    return unquote(path), values


def _error(status: int, message: str, headers: Headers | None = None) -> Response:
    response = json_response({"error": message}, status=status)
    for name, value in (headers or Headers()).items():
        response.headers.add(name, value)
    return response


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_FRAMING = frozenset({"content-length", "connection", "transfer-encoding"})


def _http_date() -> str:
    t = time.gmtime()
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def _encode(response: Response, *, head_only: bool, keep: bool) -> bytes:
    """The answer's bytes: the framing headers are ours, the body left out for HEAD."""
    lines = [f"HTTP/1.1 {response.status} {reason(response.status)}"]
    lines += [f"{n}: {v}" for n, v in response.headers.items() if n.lower() not in _FRAMING]
    lines += [
        f"Content-Length: {len(response.body)}",
        f"Date: {_http_date()}",
        "Connection: keep-alive" if keep else "Connection: close",
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body
