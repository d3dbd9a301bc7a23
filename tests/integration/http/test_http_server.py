"""The REST API's HTTP server (agent/http/server.py) against real sockets: bytes written by
hand, so that what reaches the server (half a request, two at once, a huge head) is exactly
what the test says."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.api.tls import server_context
from agent.api_settings import ApiTlsSettings, ClientVerify
from agent.http.routing import App, Headers, Request, Response, json_response
from agent.http.server import HttpServer, Limits
from tests.support.tls import ClusterPki

FAST = Limits(max_head_bytes=1024, read_timeout_s=0.5, idle_timeout_s=5.0, shutdown_timeout_s=0.5)
GET = b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"
BIG = 64 * 1024 * 1024  # more than the kernel buffers between server and client hold


@dataclass
class Handlers:
    served: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    cleaned: bool = False

    async def echo(self, request: Request) -> Response:
        self.served += 1
        return json_response(
            {"query": dict(request.query), "body": (await request.read()).decode()}
        )

    async def member(self, request: Request) -> Response:
        return json_response(request.match_info)

    async def slow(self, request: Request) -> Response:
        await self.gate.wait()
        return json_response({"slow": True})

    async def big(self, request: Request) -> Response:
        return Response.of(b"x" * BIG)

    async def broken(self, request: Request) -> Response:
        raise RuntimeError("boom")

    async def cert(self, request: Request) -> Response:
        self.served += 1
        subject = request.peer_cert["subject"] if request.peer_cert else ()
        assert isinstance(subject, tuple)
        names = {k: v for rdn in subject for k, v in rdn}
        return json_response({"cn": names.get("commonName")})

    async def cleanup(self) -> None:
        self.cleaned = True

    def app(self) -> App:
        app = App(max_body=100)
        app.add_get("/echo", self.echo)
        app.add_post("/echo", self.echo)
        app.add_get("/members/{name}", self.member)
        app.add_get("/slow", self.slow)
        app.add_get("/broken", self.broken)
        app.add_get("/big", self.big)
        app.add_get("/cert", self.cert)
        app.on_cleanup.append(self.cleanup)
        return app


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    first, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(first.split(" ")[1]), headers, body)


async def closed(reader: asyncio.StreamReader, within_s: float = 3.0) -> bool:
    """True if the server closes the connection (end of stream) within `within_s`."""
    async with asyncio.timeout(within_s):
        return await reader.read() == b""


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


@pytest.fixture
async def server(handlers: Handlers) -> AsyncIterator[HttpServer]:
    served = await HttpServer.start(handlers.app(), "127.0.0.1", 0, limits=FAST)
    try:
        yield served
    finally:
        await served.close()


async def connect(server: HttpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


# --------------------------------------------------------------------------- keep-alive


async def test_pipelined_requests_are_answered_in_order_on_one_connection(
    server: HttpServer,
) -> None:
    reader, writer = await connect(server)
    writer.write(
        b"GET /echo?n=1 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /echo?n=2&n=3 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
    )
    first, second, third = [await answer(reader) for _ in range(3)]
    assert first.status == second.status == third.status == 200
    assert first.body == b'{"query": {"n": "1"}, "body": ""}'
    assert second.body == b'{"query": {"n": "2"}, "body": ""}'  # the first value of a name
    assert third.body == b'{"query": {}, "body": "hello"}'
    assert third.headers["connection"] == "keep-alive"
    writer.write(GET)  # and the connection still serves the next one
    assert (await answer(reader)).status == 200
    writer.close()


async def test_a_kept_alive_connection_is_closed_after_the_idle_timeout() -> None:
    limits = Limits(read_timeout_s=5.0, idle_timeout_s=0.3)
    server = await HttpServer.start(Handlers().app(), "127.0.0.1", 0, limits=limits)
    try:
        reader, writer = await connect(server)
        writer.write(GET)
        assert (await answer(reader)).status == 200
        started = time.monotonic()
        assert await closed(reader)
        assert 0.2 < time.monotonic() - started < 2.0
        writer.close()
    finally:
        await server.close()


async def test_connection_close_and_http_1_0_end_the_connection_after_the_answer(
    server: HttpServer,
) -> None:
    for request in (
        b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /echo HTTP/1.0\r\n\r\n",
    ):
        reader, writer = await connect(server)
        writer.write(request)
        got = await answer(reader)
        assert (got.status, got.headers["connection"]) == (200, "close")
        assert await closed(reader, within_s=0.3)
        writer.close()
    reader, writer = await connect(server)
    writer.write(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + GET)
    assert [(await answer(reader)).status for _ in range(2)] == [200, 200]
    writer.close()


async def test_head_answers_the_get_headers_without_the_body(server: HttpServer) -> None:
    reader, writer = await connect(server)
    writer.write(b"HEAD /echo HTTP/1.1\r\n\r\n" + GET)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 25\r\n" in head  # the GET's body length, no body follows
    get = await answer(reader)  # so the next answer starts right after the head
    assert (get.status, len(get.body)) == (200, 25)
    writer.close()


# --------------------------------------------------------------------------- slow clients


async def test_a_client_that_sends_half_a_request_and_stalls_gets_408_and_is_closed(
    server: HttpServer, handlers: Handlers
) -> None:
    for half in (b"GET /echo HTTP/1.1\r\nHost: t\r\n", b"POST /echo HTTP/1.1\r\n"
                 b"Content-Length: 10\r\n\r\nabc"):  # fmt: skip
        reader, writer = await connect(server)
        started = time.monotonic()
        writer.write(half)
        got = await answer(reader)
        assert got.status == 408
        assert got.body.startswith(b'{"error": ')
        assert 0.4 < time.monotonic() - started < 3.0  # the read timeout, 0.5 s
        assert await closed(reader)
        writer.close()
    assert handlers.served == 0


async def test_a_connection_that_sends_nothing_is_closed_after_the_read_timeout(
    server: HttpServer,
) -> None:
    reader, writer = await connect(server)
    started = time.monotonic()
    assert await closed(reader)  # without an answer: there was no request
    assert time.monotonic() - started < 3.0  # the read timeout (0.5 s), not the idle one (5 s)
    writer.close()


async def test_a_client_that_does_not_read_its_answer_is_dropped_after_the_read_timeout(
    server: HttpServer,
) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET /big HTTP/1.1\r\n\r\n")
    await asyncio.sleep(1.5)  # the answer's write times out after 0.5 s
    received = 0
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(10):
            while chunk := await reader.read(1 << 20):
                received += len(chunk)
    assert received < BIG  # dropped: what the kernel held arrives, the rest never does
    writer.close()


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /echo HTTP/1.1\r\nX-Big: " + b"x" * 2000 + b"\r\n\r\n", 431),
        (b"GET /echo HTTP/1.1\r\nX-Big: " + b"x" * 2000, 431),  # at once, not at the deadline
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411),
        (b"POST /echo HTTP/1.1\r\nContent-Length: 101\r\n\r\n" + b"x" * 101, 413),
        (b"POST /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", 400),
        (b"GET /echo\r\n\r\n", 400),
        (b"GET /echo HTTP/2.0\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400),
        (b"GET echo HTTP/1.1\r\n\r\n", 400),
        (b"GET http://[::1/echo HTTP/1.1\r\n\r\n", 400),  # urlsplit's ValueError
        (b"POST /echo HTTP/1.1\r\nX-A: 1\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ],
)
async def test_a_bad_request_is_refused_with_json_and_the_connection_closed(
    server: HttpServer, handlers: Handlers, request_bytes: bytes, status: int
) -> None:
    reader, writer = await connect(server)
    writer.write(request_bytes)
    got = await answer(reader)
    assert got.status == status
    assert got.headers["content-type"] == "application/json; charset=utf-8"
    assert got.body.startswith(b'{"error": ')
    assert got.headers["connection"] == "close"
    assert await closed(reader)
    assert handlers.served == 0
    writer.close()


async def test_a_content_length_of_thousands_of_digits_is_refused_not_a_crash(
    handlers: Handlers,
) -> None:
    """int() refuses over 4300 digits with a ValueError; the connection's task died of it
    with no answer at all (and asyncio logged an unhandled exception)."""
    limits = Limits(max_head_bytes=16 * 1024, read_timeout_s=0.5, shutdown_timeout_s=0.5)
    served = await HttpServer.start(handlers.app(), "127.0.0.1", 0, limits=limits)
    try:
        reader, writer = await connect(served)
        writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n")
        got = await answer(reader)
        assert (got.status, got.headers["connection"]) == (400, "close")
        writer.close()
    finally:
        await served.close()
    assert handlers.served == 0


async def test_a_body_over_the_limit_is_refused_before_it_is_sent_with_expect_continue(
    server: HttpServer, handlers: Handlers
) -> None:
    reader, writer = await connect(server)
    writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
    assert (await answer(reader)).status == 413  # no "100 Continue" first
    writer.close()
    reader, writer = await connect(server)
    writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    assert (await answer(reader)).body == b'{"query": {}, "body": "ok"}'
    writer.close()


async def test_unknown_routes_wrong_methods_and_handler_errors_answer_json(
    server: HttpServer,
) -> None:
    reader, writer = await connect(server)
    writer.write(
        b"GET /nope HTTP/1.1\r\n\r\n"
        b"DELETE /echo HTTP/1.1\r\n\r\n"
        b"GET /broken HTTP/1.1\r\n\r\n"
        b"GET /members/b%20c HTTP/1.1\r\n\r\n"
        b"GET /members/b/c HTTP/1.1\r\n\r\n"
    )
    missing, wrong, broken, member, too_deep = [await answer(reader) for _ in range(5)]
    assert (missing.status, missing.body) == (404, b'{"error": "not found"}')
    assert (wrong.status, wrong.headers["allow"]) == (405, "GET, HEAD, POST")
    assert (broken.status, broken.body) == (500, b'{"error": "internal error"}')
    assert (member.status, member.body) == (200, b'{"name": "b c"}')
    assert too_deep.status == 404
    writer.close()


def test_a_header_value_with_a_line_break_is_refused() -> None:
    headers = Headers({"A": "1"})
    with pytest.raises(ValueError, match="line breaks"):
        headers.add("Location", "/x\r\nSet-Cookie: y")
    assert headers.items() == [("A", "1")]


# --------------------------------------------------------------------------- shutdown


async def test_close_finishes_a_request_in_flight_and_closes_idle_connections_at_once(
    server: HttpServer, handlers: Handlers
) -> None:
    idle_reader, idle_writer = await connect(server)
    idle_writer.write(GET)
    assert (await answer(idle_reader)).status == 200
    busy_reader, busy_writer = await connect(server)
    busy_writer.write(b"GET /slow HTTP/1.1\r\n\r\n")
    await asyncio.sleep(0.1)  # the request is in the handler
    closing = asyncio.create_task(server.close())
    assert await closed(idle_reader, within_s=0.3)
    handlers.gate.set()
    got = await answer(busy_reader)
    assert (got.status, got.headers["connection"]) == (200, "close")
    await closing
    assert handlers.cleaned
    with pytest.raises(OSError):
        await connect(server)  # no longer listening
    idle_writer.close()
    busy_writer.close()


async def test_close_cancels_a_request_still_running_after_the_shutdown_timeout(
    server: HttpServer, handlers: Handlers
) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET /slow HTTP/1.1\r\n\r\n")
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await server.close()
    assert time.monotonic() - started < 2.0  # the shutdown timeout is 0.5 s
    assert await closed(reader)  # no answer: the handler was cancelled
    assert handlers.cleaned
    writer.close()


# --------------------------------------------------------------------------- TLS


@pytest.fixture
async def mtls(tmp_path: Path, handlers: Handlers) -> AsyncIterator[tuple[HttpServer, ClusterPki]]:
    pki = ClusterPki.create(tmp_path / "pki")
    files = pki.files("api")
    tls = ApiTlsSettings(
        cert_file=files["cert_file"],
        key_file=files["key_file"],
        ca_file=files["ca_file"],
        verify_client=ClientVerify.REQUIRED,
    )
    served = await HttpServer.start(
        handlers.app(), "127.0.0.1", 0, ssl_context=server_context(tls), limits=FAST
    )
    try:
        yield served, pki
    finally:
        await served.close()


async def test_tls_hands_the_verified_client_certificate_to_the_handler(
    mtls: tuple[HttpServer, ClusterPki],
) -> None:
    server, pki = mtls
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, ssl=pki.client_context()
    )
    writer.write(b"GET /cert HTTP/1.1\r\n\r\n" + b"GET /cert HTTP/1.1\r\n\r\n")
    assert [(await answer(reader)).body for _ in range(2)] == [b'{"cn": "operator"}'] * 2
    writer.close()


async def test_tls_with_client_verification_refuses_a_client_without_a_certificate(
    mtls: tuple[HttpServer, ClusterPki], handlers: Handlers
) -> None:
    server, pki = mtls
    no_cert = ssl.create_default_context(cafile=pki.ca_file)
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=no_cert)
        writer.write(b"GET /cert HTTP/1.1\r\n\r\n")
        await answer(reader)  # TLS 1.3: the refusal arrives after the client's handshake
    assert handlers.served == 0


async def test_connections_over_the_limit_get_503_and_the_others_are_served(
    handlers: Handlers,
) -> None:
    limits = Limits(read_timeout_s=0.5, idle_timeout_s=5.0, max_connections=2)
    served = await HttpServer.start(handlers.app(), "127.0.0.1", 0, limits=limits)
    try:
        held = [await connect(served) for _ in range(2)]
        for _, writer in held:  # both counted: a request served on each
            writer.write(GET)
        assert [(await answer(reader)).status for reader, _ in held] == [200, 200]
        reader, writer = await connect(served)
        got = await answer(reader)
        assert (got.status, got.headers["connection"]) == (503, "close")
        assert await closed(reader)
        writer.close()
        held[0][1].write(GET)  # the kept ones still work
        assert (await answer(held[0][0])).status == 200
        held[0][1].close()
        await asyncio.sleep(0.1)
        reader, writer = await connect(served)  # one closed: room for a new one
        writer.write(GET)
        assert (await answer(reader)).status == 200
        writer.close()
        held[1][1].close()
    finally:
        await served.close()
