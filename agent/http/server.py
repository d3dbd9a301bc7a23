"""A small HTTP/1.1 server on asyncio streams: the REST API's, instead of aiohttp.web
(issue 15: aiohttp is ~10 MB resident in every agent).

What it does: keep-alive and pipelined requests (answered in order), request bodies by
Content-Length only, HEAD for every GET route, routes with `{name}` path parameters,
middlewares around the handlers, TLS through the caller's `ssl.SSLContext` (its verify mode
decides on client certificates; the peer's certificate is on the request), and a bounded,
graceful close.

What it refuses, answering JSON `{"error": ...}` and closing the connection: a request line
or header it cannot parse (400), a chunked or otherwise transfer-encoded body (411: send a
Content-Length), a body over the app's `max_body` (413), a head over `Limits.max_head_bytes`
(431), a head and body that take longer than `Limits.read_timeout_s` to arrive (408). A
connection idle longer than `Limits.idle_timeout_s` between requests is closed, and so is
one whose client does not read its answer within `read_timeout_s`: no client holds a
connection forever. Routing failures (404, 405 with Allow) and handler errors pass through
the middlewares as `HttpError`, so the application decides how they read; without a
middleware for them they leave as JSON too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

import structlog

_log = structlog.get_logger(__name__)

_LINGER_S = 1.0  # after refusing a request: how long its unread rest is drained before close
_LINGER_BYTES = 1 << 20
_SEPARATOR = b"\r\n\r\n"
HeaderItems = Mapping[str, str] | Iterable[tuple[str, str]]


class Headers:
    """HTTP header fields in order, names compared without case, a name possibly repeated."""

    __slots__ = ("_items",)

    def __init__(self, items: HeaderItems = ()) -> None:
        self._items: list[tuple[str, str]] = []
        self.extend(items)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name`, or `default`."""
        values = self.getall(name)
        return values[0] if values else default

    def getall(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self._items if key.lower() == wanted]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __setitem__(self, name: str, value: str) -> None:
        self._items = [(k, v) for k, v in self._items if k.lower() != name.lower()]
        self.add(name, value)

    def add(self, name: str, value: str) -> None:
        """Append a field. Raises ValueError for a line break in it (header injection)."""
        if any(c in name or c in value for c in "\r\n") or not name:
            raise ValueError(f"header field {name!r}: no line breaks, a non-empty name")
        self._items.append((name, value))

    def extend(self, items: HeaderItems) -> None:
        for name, value in items.items() if isinstance(items, Mapping) else items:
            self.add(name, value)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)


@dataclass(slots=True, eq=False)
class Request:
    """One request, its body already read (bounded by the app's `max_body`)."""

    method: str
    path: str  # percent-decoded, without the query
    query: Mapping[str, str]  # the first value of each name
    headers: Headers
    body: bytes = b""
    peer_cert: Mapping[str, object] | None = None  # the verified client certificate, if any
    match_info: dict[str, str] = field(default_factory=dict)  # the route's `{name}` values
    route_error: HttpError | None = None  # set when no route serves this method and path

    async def read(self) -> bytes:
        return self.body

    async def json(self) -> object:
        """The body parsed as JSON. Raises ValueError (or UnicodeDecodeError) if it is not."""
        return json.loads(self.body)


@dataclass(slots=True, eq=False)
class Response:
    body: bytes = b""
    status: int = 200
    headers: Headers = field(default_factory=Headers)

    @classmethod
    def of(cls, body: bytes, *, status: int = 200, headers: HeaderItems = ()) -> Response:
        return cls(body=body, status=status, headers=Headers(headers))


def json_response(
    data: object, *, status: int = 200, dumps: Callable[[object], str] = json.dumps
) -> Response:
    return Response.of(
        dumps(data).encode("utf-8"),
        status=status,
        headers={"Content-Type": "application/json; charset=utf-8"},
    )


class HttpError(Exception):
    """A request refused with `status` (routing: 404, 405 with an Allow header)."""

    def __init__(self, status: int, headers: HeaderItems = ()) -> None:
        self.status = status
        self.reason = _reason(status)
        self.headers = Headers(headers)
        super().__init__(f"{status} {self.reason}")


Handler = Callable[[Request], Awaitable[Response]]
Middleware = Callable[[Request, Handler], Awaitable[Response]]
Cleanup = Callable[[], Awaitable[None]]


class App:
    """Routes and middlewares (the first middleware is the outermost). `max_body` bounds
    every request body; `on_cleanup` runs when the server serving the app is closed."""

    def __init__(self, *, middlewares: Sequence[Middleware] = (), max_body: int = 1 << 20):
        self.max_body = max_body
        self.on_cleanup: list[Cleanup] = []
        self._middlewares = tuple(middlewares)
        self._exact: dict[str, dict[str, Handler]] = {}
        self._templates: dict[tuple[str, ...], dict[str, Handler]] = {}
        self._added: list[tuple[str, str]] = []

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Serve `method` on `path`; a segment `{name}` matches any one segment, its value
        in `request.match_info[name]`."""
        if not path.startswith("/"):
            raise ValueError(f"route {path!r}: a path starts with /")
        segments = tuple(path.split("/")[1:])
        if any(s.startswith("{") for s in segments):
            methods = self._templates.setdefault(segments, {})
        else:
            methods = self._exact.setdefault(path, {})
        if method in methods:
            raise ValueError(f"route {method} {path}: added twice")
        methods[method] = handler
        self._added.append((method, path))

    def add_get(self, path: str, handler: Handler) -> None:
        """GET, and HEAD by the same handler (the body left out)."""
        self.add_route("GET", path, handler)

    def add_post(self, path: str, handler: Handler) -> None:
        self.add_route("POST", path, handler)

    def add_patch(self, path: str, handler: Handler) -> None:
        self.add_route("PATCH", path, handler)

    def add_delete(self, path: str, handler: Handler) -> None:
        self.add_route("DELETE", path, handler)

    def routes(self) -> list[tuple[str, str]]:
        """(method, path) as added (HEAD is implied by GET and not listed)."""
        return list(self._added)

    def _methods(self, path: str) -> tuple[dict[str, Handler], dict[str, str]]:
        exact = self._exact.get(path)
        if exact is not None:
            return exact, {}
        parts = path.split("/")[1:]
        for segments, methods in self._templates.items():
            if len(segments) != len(parts):
                continue
            found: dict[str, str] = {}
            for segment, part in zip(segments, parts, strict=True):
                if segment.startswith("{") and segment.endswith("}") and part:
                    found[segment[1:-1]] = part
                elif segment != part:
                    break
            else:
                return methods, found
        return {}, {}

    async def respond(self, request: Request) -> Response:
        """The answer of the route (through the middlewares) or of the routing error."""
        methods, request.match_info = self._methods(request.path)
        handler = methods.get("GET" if request.method == "HEAD" else request.method)
        if handler is None:
            if methods:
                allow = sorted({*methods, "HEAD"} if "GET" in methods else methods)
                request.route_error = HttpError(405, {"Allow": ", ".join(allow)})
            else:
                request.route_error = HttpError(404)
            handler = _raise_route_error
        for middleware in reversed(self._middlewares):
            handler = _wrapped(middleware, handler)
        return await handler(request)

    async def cleanup(self) -> None:
        for callback in self.on_cleanup:
            await callback()


def _wrapped(middleware: Middleware, handler: Handler) -> Handler:
    async def handle(request: Request) -> Response:
        return await middleware(request, handler)

    return handle


async def _raise_route_error(request: Request) -> Response:
    assert request.route_error is not None
    raise request.route_error


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What one client may take of the server: see the module docstring."""

    max_head_bytes: int = 16 * 1024
    read_timeout_s: float = 10.0  # a request's head and body; writing its answer
    idle_timeout_s: float = 75.0  # between two requests of a kept-alive connection
    shutdown_timeout_s: float = 2.0  # for requests being served when the server closes


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


class HttpServer:
    """Serves an `App` on one listening socket; `start` it, `close` it once."""

    def __init__(self, app: App, limits: Limits) -> None:
        self._app = app
        self._limits = limits
        self._server: asyncio.Server | None = None
        self.port = 0  # the port listened on, once started
        self._connections: set[_Connection] = set()
        self._closing = False

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

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        connection = _Connection(writer, asyncio.current_task())
        self._connections.add(connection)
        try:
            await self._serve_requests(connection, reader)
        except asyncio.CancelledError:
            if not self._closing:
                raise
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
                async with asyncio.timeout(wait_s):
                    first = await reader.readexactly(1)
            except (TimeoutError, asyncio.IncompleteReadError):
                return
            connection.busy = True
            try:
                async with asyncio.timeout(limits.read_timeout_s):
                    request, keep_alive = await self._read_request(first, reader, writer)
            except _Refused as refused:
                await self._refuse(reader, writer, refused.status, refused.message)
                return
            except TimeoutError:
                await self._refuse(reader, writer, 408, "the request took too long to arrive")
                return
            try:
                response = await self._app.respond(request)
            except HttpError as exc:
                response = _error(exc.status, exc.reason.lower(), exc.headers)
            except Exception:
                _log.exception("http_handler_failed", method=request.method, path=request.path)
                response = _error(500, "internal error")
            keep_alive = keep_alive and not self._closing
            async with asyncio.timeout(limits.read_timeout_s):
                writer.write(_encode(response, head_only=request.method == "HEAD", keep=keep_alive))
                await writer.drain()
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
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        status: int,
        message: str,
    ) -> None:
        """Answer `status` and close; the rest of what the client sends is read (up to a
        bound) first, so that closing with unread data does not reset the connection before
        the client has read the answer."""
        async with asyncio.timeout(self._limits.read_timeout_s):
            writer.write(_encode(_error(status, message), head_only=False, keep=False))
            await writer.drain()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(min(_LINGER_S, self._limits.read_timeout_s)):
                drained = 0
                while drained < _LINGER_BYTES:
                    chunk = await reader.read(64 * 1024)
                    if not chunk:
                        break
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
        if not sep or not name or name != name.strip() or " " in name or "\t" in name:
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
    lines = [f"HTTP/1.1 {response.status} {_reason(response.status)}"]
    lines += [f"{n}: {v}" for n, v in response.headers.items() if n.lower() not in _FRAMING]
    lines += [
        f"Content-Length: {len(response.body)}",
        f"Date: {_http_date()}",
        "Connection: keep-alive" if keep else "Connection: close",
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body
