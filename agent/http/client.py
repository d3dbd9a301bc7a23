"""A thin HTTP/1.1 client on asyncio streams: the subset the agent's etcd, Kubernetes and peer
clients use (JSON requests and answers, watch streams), without aiohttp (issue 15).

- `HttpClient.request()` sends one request and returns the `HttpResponse` once its head has
  arrived; the body is read with `read()` (all of it) or `readline()` (a stream: the etcd and
  Kubernetes watches), and `release()` hands the connection back (closing it if the body was
  not read to its end). `fetch()` is request + read + release.
- Keep-alive: idle connections are kept per (scheme, host, port, TLS context), at most
  `max_idle` of each, for `idle_s` after their last answer. A connection the server closed
  while idle is seen closed before use and not used.
- Deadlines: `timeout` bounds the whole request, its body included (`read()` and `readline()`
  after `request()` still honour it); `connect_timeout` the TCP and TLS connect;
  `read_timeout` the wait for the answer's head and each wait for more of the body (a
  stream silent that long is dead). Expiry
  raises `TimeoutError`. Reading the body is cancel-safe: a `readline()` cut by the caller's
  own timeout loses nothing, and the next call goes on where it stopped.
- Resending: a request that fails on a kept-alive connection before any byte of the answer
  came (the server closed it just as we sent) is sent again, once, on a new connection, only
  if it is idempotent (GET, HEAD, OPTIONS, or the caller says so: an etcd read). A write the
  server may have applied is never sent again: the caller gets `HttpError`.
- Failures below HTTP (refused, reset, TLS, a malformed answer) raise `HttpError`; a status
  is never an error. Bodies are plain (no Accept-Encoding is sent), request bodies are sent
  with a Content-Length, answers may be chunked, have a Content-Length or end at close.
  `read()` refuses an answer over `max_body` (64 MiB): a server streaming without end fails
  the request instead of filling the agent's memory until the deadline.
- `tcp_user_timeout_s`: TCP keepalive probes and TCP_USER_TIMEOUT on every connection (Linux),
  so a connection whose peer vanished fails within about that time, even while idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_LINE = 32 << 20  # a watch event line longer than this is refused
_PIECE = 1 << 16
_CLOSE_WAIT_S = 1.0
_MAX_INTERIM = 8  # 1xx answers before the final one
_DIGITS = re.compile(rb"[0-9]{1,18}")  # a Content-Length: no sign, no "_", no space inside
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")  # a chunk size: no "0x", no sign
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FORBIDDEN_IN_HEAD = re.compile(r"[\x00-\x20\x7f]")  # in the target; CR, LF, NUL in values

# Body framing, and the states of a chunked body.
_NONE, _LENGTH, _UNTIL_CLOSE, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER = range(7)


class HttpError(Exception):
    """The request failed below HTTP (no connection, connection lost, malformed answer)."""


class Headers(Mapping[str, str]):
    """Response headers; names are case-insensitive (repeated headers joined by ", ")."""

    __slots__ = ("_items",)

    def __init__(self, items: dict[str, str]) -> None:
        self._items = items  # lower-case names

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class _Connection:
    __slots__ = ("idle_since", "key", "reader", "writer")

    def __init__(self, key: _Key, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.key = key
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self) -> bool:
        """Open, and nothing unread from it: bytes that arrived after the last answer (a
        server that sent more than it framed, or a 408 before closing an idle connection)
        would otherwise be read as the next request's answer."""
        unread = getattr(self.reader, "_buffer", None)
        return not (unread or self.reader.at_eof() or self.writer.transport.is_closing())

    def close(self) -> None:
        self.writer.close()


_Key = tuple[str, str, int, ssl.SSLContext | None]


class HttpResponse:
    """One answer: `status`, `headers`, and the body, read once (see the module docstring)."""

    def __init__(
        self,
        client: HttpClient,
        conn: _Connection,
        status: int,
        headers: Headers,
        *,
        framing: int,
        length: int,
        keep: bool,
        deadline: float | None,
        read_timeout: float | None,
    ) -> None:
        self.status = status
        self.headers = headers
        self._client = client
        self._conn: _Connection | None = conn
        self._state = framing
        self._left = length
        self._keep = keep
        self._deadline = deadline
        self._read_timeout = read_timeout
        self._buffer = bytearray()
        self._searched = 0  # bytes of the buffer known to hold no newline
        if framing == _NONE:
            self._finish()

    @property
    def content(self) -> HttpResponse:
        """The body as a stream (`content.readline()`, the call shape of aiohttp's answers)."""
        return self

    @property
    def done(self) -> bool:
        """True once the body has been read to its end."""
        return self._state == _NONE

    async def read(self) -> bytes:
        """The rest of the body; the connection goes back to the pool. Cut by the caller's
        timeout, it loses nothing: what it had read is kept for the next call."""
        while piece := await self._next_piece():
            self._buffer += piece
            if len(self._buffer) > self._client.max_body:
                self._keep = False
                self.release()
                raise HttpError(f"the answer is larger than {self._client.max_body} bytes")
        body = bytes(self._buffer)
        self._buffer.clear()
        self._searched = 0
        return body

    async def readline(self) -> bytes:
        """The next line of the body, its newline included; b"" at the end of the body."""
        while True:
            index = self._buffer.find(b"\n", self._searched)
            if index >= 0:
                line = bytes(self._buffer[: index + 1])
                del self._buffer[: index + 1]
                self._searched = 0
                return line
            self._searched = len(self._buffer)
            piece = await self._next_piece()
            if not piece:
                line = bytes(self._buffer)
                self._buffer.clear()
                self._searched = 0
                return line
            self._buffer += piece
            if len(self._buffer) > _MAX_LINE:
                self.release()
                raise HttpError(f"a line of the answer is longer than {_MAX_LINE} bytes")

    def release(self) -> None:
        """Done with this answer: its connection is kept for another request if the body was
        read to its end, else closed. Safe to call more than once."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._release(conn, reusable=self._keep and self._state == _NONE)

    close = release

    def _finish(self) -> None:
        self._state = _NONE
        self.release()

    async def _next_piece(self) -> bytes:
        """The next bytes of the body (b"" at its end), within the deadlines."""
        if self._state == _NONE:
            return b""
        when = self._deadline
        if self._read_timeout is not None:
            until = asyncio.get_running_loop().time() + self._read_timeout
            when = until if when is None else min(when, until)
        try:
            async with asyncio.timeout_at(when):
                return await self._piece()
        except TimeoutError:
            raise  # an OSError, but not a broken answer: the read may be tried again
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self._keep = False
            self.release()
            raise HttpError(f"reading the answer failed: {exc!r}") from exc
        except ValueError as exc:
            self._keep = False
            self.release()
            raise HttpError(f"malformed chunked answer: {exc}") from exc

    async def _piece(self) -> bytes:
        """One step of the body's framing. Each await either completes or consumes nothing,
        and the state is updated right after it: a cancelled read resumes cleanly."""
        if self._conn is None:
            raise HttpError("the answer was released before its body was read")
        reader = self._conn.reader
        while True:
            if self._state in (_LENGTH, _CHUNK_DATA):
                data = await reader.read(min(self._left, _PIECE))
                if not data:
                    raise HttpError("connection closed before the end of the answer")
                self._left -= len(data)
                if self._left == 0:
                    if self._state == _LENGTH:
                        self._finish()
                    else:
                        self._state = _CHUNK_END
                return data
            if self._state == _UNTIL_CLOSE:
                data = await reader.read(_PIECE)
                if not data:
                    self._keep = False
                    self._finish()
                return data
            if self._state == _CHUNK_END:
                if await reader.readexactly(2) != b"\r\n":
                    raise ValueError("no CRLF after a chunk")
                self._state = _CHUNK_SIZE
            elif self._state == _CHUNK_SIZE:
                line = await reader.readuntil(b"\r\n")
                self._left = _number(line[:-2].split(b";", 1)[0].strip(b" \t"), _HEX)
                self._state = _CHUNK_DATA if self._left > 0 else _TRAILER
            elif self._state == _TRAILER:
                if await reader.readuntil(b"\r\n") == b"\r\n":
                    self._finish()
                    return b""
            else:
                return b""


class HttpClient:
    """Requests over a small pool of kept-alive connections (see the module docstring).
    `ssl_context`: for https URLs when a request names none. Use from one event loop;
    `close()` when done."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_idle: int = 4,
        idle_s: float = 15.0,
        tcp_user_timeout_s: float | None = None,
        max_body: int = 64 << 20,
    ) -> None:
        self._ssl = ssl_context
        self.max_body = max_body  # read() refuses a longer answer (a stream: readline())
        self._max_idle = max_idle
        self._idle_s = idle_s
        self._tcp_user_timeout_s = tcp_user_timeout_s
        self._idle: dict[_Key, list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._closed = False
        self.connections_made = 0

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - it also bounds the body, read later
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        idempotent: bool | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> HttpResponse:
        """Send one request; the answer once its head has arrived (read its body, then
        release it). `idempotent`: None goes by the method."""
        if self._closed:
            raise HttpError("the HTTP client is closed")
        key, target = self._target(url, params, ssl_context)
        head = self._head(method, key, target, headers or {}, body)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        resend: bool | None = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        async with asyncio.timeout_at(deadline):
            while True:
                conn = self._idle_connection(key) if resend is not None else None
                reused = conn is not None
                if conn is None:
                    conn = await self._connect(key, connect_timeout)
                self._busy.add(conn)
                try:
                    conn.writer.write(head + (body or b""))
                    await conn.writer.drain()
                    return await self._answer(conn, method, deadline, read_timeout)
                except TimeoutError:
                    self._drop(conn)
                    raise
                except (OSError, asyncio.IncompleteReadError) as exc:
                    self._drop(conn)
                    nothing = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
                    if reused and resend and nothing:
                        resend = None  # the server closed it as we sent: once more, on a new one
                        continue
                    raise HttpError(f"{method} {url}: connection lost: {exc!r}") from exc
                except (asyncio.LimitOverrunError, ValueError) as exc:
                    self._drop(conn)
                    raise HttpError(f"{method} {url}: malformed answer: {exc}") from exc
                except BaseException:
                    self._drop(conn)
                    raise

    async def fetch(self, method: str, url: str, **kwargs: Any) -> tuple[int, Headers, bytes]:
        """`request()` and its whole body: (status, headers, body)."""
        response = await self.request(method, url, **kwargs)
        try:
            return response.status, response.headers, await response.read()
        finally:
            response.release()

    async def close(self) -> None:
        """Close every connection, idle or in use; later requests raise `HttpError`."""
        self._closed = True
        conns = [c for pool in self._idle.values() for c in pool] + list(self._busy)
        self._idle.clear()
        self._busy.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            try:
                async with asyncio.timeout(_CLOSE_WAIT_S):
                    await conn.writer.wait_closed()
            except (OSError, TimeoutError):
                conn.writer.transport.abort()

    def _target(
        self, url: str, params: Sequence[tuple[str, str]], context: ssl.SSLContext | None
    ) -> tuple[_Key, str]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url[:100]!r}")
        tls = parts.scheme == "https"
        context = (context or self._ssl) if tls else None
        if tls and context is None:
            raise ValueError(f"{url[:100]}: https needs a TLS context")
        query = "&".join(q for q in (parts.query, urlencode(list(params))) if q)
        target = (parts.path or "/") + (f"?{query}" if query else "")
        return (parts.scheme, parts.hostname, parts.port or (443 if tls else 80), context), target

    @staticmethod
    def _head(
        method: str, key: _Key, target: str, headers: Mapping[str, str], body: bytes | None
    ) -> bytes:
        if not _TOKEN.fullmatch(method) or _FORBIDDEN_IN_HEAD.search(target):
            raise ValueError(f"not a valid request line: {method[:20]!r} {target[:100]!r}")
        for name, value in headers.items():
            if not _TOKEN.fullmatch(name) or any(c in value for c in "\r\n\0"):
                raise ValueError(f"not a valid header: {name[:40]!r}")  # the value may be a secret
        host = f"[{key[1]}]" if ":" in key[1] else key[1]
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{key[2]}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _connect(self, key: _Key, connect_timeout: float | None) -> _Connection:
        _, host, port, context = key
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, limit=1 << 20
                )
        except TimeoutError:
            raise
        except OSError as exc:
            raise HttpError(f"cannot connect to {host}:{port}: {exc!r}") from exc
        self.connections_made += 1
        if self._tcp_user_timeout_s is not None:
            _keepalive(writer.get_extra_info("socket"), self._tcp_user_timeout_s)
        return _Connection(key, reader, writer)

    async def _answer(
        self, conn: _Connection, method: str, deadline: float | None, read_timeout: float | None
    ) -> HttpResponse:
        for _ in range(_MAX_INTERIM + 1):  # 1xx answers restart the read timeout: bounded
            async with asyncio.timeout(read_timeout):  # a stream's head is waited for too
                head = await conn.reader.readuntil(b"\r\n\r\n")
            first, *lines = head.decode("latin-1").split("\r\n")
            version, _, rest = first.partition(" ")
            status = int(rest[:3])
            if not version.startswith("HTTP/1.") or not 100 <= status <= 999:
                raise ValueError(f"bad status line {first[:100]!r}")
            if status >= 200 or status == 101:
                break
        else:
            raise ValueError(f"more than {_MAX_INTERIM} interim (1xx) answers")
        items: dict[str, str] = {}
        for line in lines:
            if line:
                name, colon, value = line.partition(":")
                if not colon or name != name.strip() or not name:  # folded or not a header
                    raise ValueError(f"bad header line {line[:40]!r}")
                name = name.lower()
                items[name] = f"{items[name]}, {value.strip()}" if name in items else value.strip()
        headers = Headers(items)
        keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        keep = keep and status != 101  # a switched protocol is not HTTP any more
        framing, length = _LENGTH, 0
        if method == "HEAD" or status in (204, 304) or status < 200:
            framing = _NONE
        elif "transfer-encoding" in headers:
            # Chunked only if it is the last coding, else the body ends at close; with a
            # Content-Length too, the answer is suspect: the connection is not kept.
            codings = headers["transfer-encoding"].lower().split(",")
            framing = _CHUNK_SIZE if codings[-1].strip() == "chunked" else _UNTIL_CLOSE
            keep = keep and framing == _CHUNK_SIZE and "content-length" not in headers
        elif "content-length" in headers:
            length = _number(headers["content-length"].encode("latin-1"), _DIGITS)
            framing = _LENGTH if length > 0 else _NONE
        else:
            framing, keep = _UNTIL_CLOSE, False
        return HttpResponse(
            self,
            conn,
            status,
            headers,
            framing=framing,
            length=length,
            keep=keep,
            deadline=deadline,
            read_timeout=read_timeout,
        )

    def _idle_connection(self, key: _Key) -> _Connection | None:
        now = asyncio.get_running_loop().time()
        for pool_key in list(self._idle):
            pool = self._idle[pool_key]
            for conn in [c for c in pool if now - c.idle_since > self._idle_s or not c.usable()]:
                pool.remove(conn)
                conn.close()
            if not pool:
                del self._idle[pool_key]
        idle = self._idle.get(key)
        return idle.pop() if idle else None

    def _release(self, conn: _Connection, *, reusable: bool) -> None:
        self._busy.discard(conn)
        pool = self._idle.setdefault(conn.key, [])
        if reusable and not self._closed and conn.usable() and len(pool) < self._max_idle:
            conn.idle_since = asyncio.get_running_loop().time()
            pool.append(conn)
        else:
            conn.close()

    def _drop(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        conn.close()


def _number(text: bytes, form: re.Pattern[bytes]) -> int:
    """A Content-Length (decimal) or chunk size (hex) as RFC 9112 writes them; `int()` alone
    would take a sign, "0x", "_" and surrounding spaces (a negative length read no body and
    kept the connection with the body's bytes on it). ValueError otherwise."""
    if not form.fullmatch(text):
        raise ValueError(f"bad length {text[:20]!r}")
    return int(text, 16 if form is _HEX else 10)


def _keepalive(sock: socket.socket | None, user_timeout_s: float) -> None:
    """TCP keepalive probes and TCP_USER_TIMEOUT such that a dead peer fails the connection
    within about `user_timeout_s` (Linux; elsewhere the options that exist)."""
    if sock is None:
        return
    idle_s = max(1, int(user_timeout_s / 3))
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), idle_s),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), idle_s),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 3),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(user_timeout_s * 1000)),
    ]
    for level, option, value in options:
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, option, value)
