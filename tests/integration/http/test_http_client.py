"""agent/http/client.py against real asyncio servers on loopback, which write their raw bytes
themselves (split where the test wants), close connections when the test wants, and count
what they received."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
import trustme

from agent.http.client import HttpClient, HttpError
from tests.support.raw_http import RawServer, answer, raw_server


async def keep_answering(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
) -> None:
    while True:
        first = await server.read_request(reader)
        writer.write(answer(f'"{first}"'.encode()))
        await writer.drain()


async def test_connections_are_kept_alive_and_reused() -> None:
    client = HttpClient()
    async with raw_server(keep_answering) as server:
        for index in range(3):
            status, headers, body = await client.fetch(
                "POST", server.url + f"/v3/kv/range?x={index}", body=b"{}", timeout=2
            )
            assert (status, headers["content-type"], headers["CONTENT-TYPE"]) == (
                200,
                "application/json",
                "application/json",
            )
            assert body == f'"POST /v3/kv/range?x={index} HTTP/1.1 {{}}"'.encode()
        await client.close()
    assert (server.connections, client.connections_made) == (1, 1)


async def test_a_chunked_stream_split_at_odd_places_reads_line_by_line() -> None:
    lines = [b'{"result":{"created":true}}\n', b'{"result":{"events":[1]}}\n', b"last\n"]
    stream = b"".join(lines)
    # Chunks of 1, 5, 30 and the rest bytes, one with an extension; the bytes on the wire
    # are then sent in 3-byte fragments, so sizes, CRLFs and lines are all cut in the middle.
    sizes = [1, 5, 30, len(stream) - 36]
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    offset = 0
    for number, size in enumerate(sizes):
        extension = b";name=value" if number == 2 else b""
        wire += b"%x%s\r\n%s\r\n" % (size, extension, stream[offset : offset + size])
        offset += size
    wire += b"0\r\nX-Trailer: yes\r\n\r\n"

    async def trickle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
    ) -> None:
        while True:
            await server.read_request(reader)
            for start in range(0, len(wire), 3):
                writer.write(wire[start : start + 3])
                await writer.drain()
                await asyncio.sleep(0.001)

    client = HttpClient()
    async with raw_server(trickle) as server:
        response = await client.request("GET", server.url + "/watch", timeout=5)
        got = [await response.readline() for _ in range(4)]
        assert got == [*lines, b""]
        assert response.done
        # The stream was read to its end: its connection serves the next request.
        second = await client.request("GET", server.url + "/watch", timeout=5)
        assert await second.read() == stream
        await client.close()
    assert server.connections == 1


async def test_a_cancelled_readline_loses_nothing() -> None:
    release = asyncio.Event()

    async def slow_line(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nfirst half, ")
        await writer.drain()
        await release.wait()
        writer.write(b"abcd\r\n9\r\nsecond.\n\n\r\n0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    client = HttpClient()
    async with raw_server(slow_line) as server:
        response = await client.request("GET", server.url + "/", timeout=5)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await response.readline()
        release.set()
        assert await response.readline() == b"first half, abcdsecond.\n"
        assert await response.readline() == b"\n"
        assert await response.readline() == b""
        await client.close()


async def test_a_body_up_to_the_close_and_connection_close_are_not_reused() -> None:
    async def closing(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
    ) -> None:
        first = await server.read_request(reader)
        if "until-close" in first:
            writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        else:
            writer.write(answer(b"bye", extra="Connection: close\r\n"))
        await writer.drain()

    client = HttpClient()
    async with raw_server(closing) as server:
        assert (await client.fetch("GET", server.url + "/until-close", timeout=2))[
            2
        ] == b"all of it"
        assert (await client.fetch("GET", server.url + "/x", timeout=2))[2] == b"bye"
        assert (await client.fetch("GET", server.url + "/x", timeout=2))[2] == b"bye"
        await client.close()
    assert server.connections == 3


async def test_a_kept_connection_the_server_closed_while_idle_is_not_used() -> None:
    async def one_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
    ) -> None:
        await server.read_request(reader)
        writer.write(answer())  # keep-alive not refused, but closed right after
        await writer.drain()

    client = HttpClient()
    async with raw_server(one_per_connection) as server:
        await client.fetch("POST", server.url + "/a", body=b"1", timeout=2)
        await asyncio.sleep(0.1)  # the server's FIN arrives
        status, _, _ = await client.fetch("POST", server.url + "/b", body=b"2", timeout=2)
        await client.close()
    assert status == 200
    assert server.requests == ["POST /a HTTP/1.1 1", "POST /b HTTP/1.1 2"]


async def drops_its_second_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
) -> None:
    """Answers the first request of a connection; reads the second and closes unanswered
    (as a server closing an idle connection just as the request arrived)."""
    await server.read_request(reader)
    writer.write(answer())
    await writer.drain()
    await server.read_request(reader)


async def test_a_read_lost_on_a_kept_connection_is_sent_again_once_a_write_never() -> None:
    client = HttpClient()
    async with raw_server(drops_its_second_request) as server:
        await client.fetch("GET", server.url + "/first", timeout=2)
        status, _, _ = await client.fetch("GET", server.url + "/read", timeout=2)
        assert status == 200
        assert server.requests[1:] == ["GET /read HTTP/1.1", "GET /read HTTP/1.1"]
        # A POST the caller says is a read (an etcd range) is sent again too.
        await client.fetch("POST", server.url + "/range", body=b"r", idempotent=True, timeout=2)
        assert server.requests[3:] == ["POST /range HTTP/1.1 r"] * 2

        await client.close()

        server.requests.clear()
        client = HttpClient()
        await client.fetch("POST", server.url + "/put", body=b"w", timeout=2)
        with pytest.raises(HttpError, match="connection lost"):
            await client.fetch("POST", server.url + "/put", body=b"v", timeout=2)
        assert server.requests == ["POST /put HTTP/1.1 w", "POST /put HTTP/1.1 v"]  # never again
        await client.close()


async def test_deadlines_bound_the_answer_the_body_and_a_silent_stream() -> None:
    async def stalls(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
    ) -> None:
        first = await server.read_request(reader)
        if "head" not in first:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
            await writer.drain()
        await asyncio.sleep(10)

    loop = asyncio.get_running_loop()
    client = HttpClient()
    async with raw_server(stalls) as server:
        started = loop.time()
        with pytest.raises(TimeoutError):
            await client.request("GET", server.url + "/head", timeout=0.3)
        response = await client.request("GET", server.url + "/body", timeout=0.6)
        with pytest.raises(TimeoutError):
            await response.read()  # the request's deadline also bounds its body
        # Bounded (the server stalls for 10 s); loose for a loaded machine.
        assert loop.time() - started < 4
        started = loop.time()
        with pytest.raises(TimeoutError):  # a stream's head is bounded by the read timeout too
            await client.request("GET", server.url + "/head", read_timeout=0.3)
        assert loop.time() - started < 4
        response = await client.request("GET", server.url + "/stream", read_timeout=0.3)
        started = loop.time()
        with pytest.raises(TimeoutError):
            await response.readline()  # "half" came, then nothing for the read timeout
        assert 0.25 < loop.time() - started < 4
        await client.close()


async def test_tls_with_a_test_ca_and_a_client_certificate() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED  # etcd with client certificates

    async def answers_with_the_peer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
    ) -> None:
        await server.read_request(reader)
        peer = writer.get_extra_info("ssl_object").getpeercert()
        subject = dict(item[0] for item in peer["subject"])
        writer.write(answer(subject["commonName"].encode()))
        await writer.drain()

    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    ca.issue_cert("operator@example.org", common_name="member-a").configure_cert(client_context)
    no_certificate = ssl.create_default_context()
    ca.configure_trust(no_certificate)
    untrusting = ssl.create_default_context(cadata=trustme.CA().cert_pem.bytes().decode())
    async with raw_server(answers_with_the_peer, server_context) as server:
        client = HttpClient(ssl_context=client_context)
        assert (await client.fetch("GET", server.url + "/", timeout=3))[2] == b"member-a"
        for context in (no_certificate, untrusting):
            with pytest.raises(HttpError):
                await client.fetch("GET", server.url + "/", timeout=3, ssl_context=context)
        with pytest.raises(ValueError, match="TLS context"):
            await HttpClient().fetch("GET", server.url + "/", timeout=3)
        await client.close()


async def test_close_ends_open_streams_and_refuses_later_requests() -> None:
    async def streams_forever(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\na\n\r\n")
        await writer.drain()
        await reader.read()  # until the client closes

    client = HttpClient()
    async with raw_server(streams_forever) as server:
        response = await client.request("GET", server.url + "/watch")
        assert await response.readline() == b"a\n"
        await client.close()
        with pytest.raises(HttpError):
            await response.readline()
        with pytest.raises(HttpError, match="closed"):
            await client.request("GET", server.url + "/")


async def test_tcp_user_timeout_and_keepalive_are_set_when_asked() -> None:
    client = HttpClient(tcp_user_timeout_s=6)
    async with raw_server(keep_answering) as server:
        response = await client.request("GET", server.url + "/")
        assert response._conn is not None
        sock = response._conn.writer.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 6000
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 2
        await response.read()
        await client.close()


# --------------------------------------------------------------------------- review (hrev)


async def test_bytes_left_after_an_answer_are_never_read_as_the_next_answer() -> None:
    """A server that sends more than its answer framed, or a 408 just before closing an idle
    connection: the kept connection holds unread bytes, and the next request must not take
    them for its answer (a txn would get a stale or foreign status)."""
    sent_408 = asyncio.Event()

    async def overshoots_then_408(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
    ) -> None:
        while True:
            await server.read_request(reader)
            if len(server.requests) == 1:  # more than the Content-Length said
                writer.write(answer(b'"first"') + answer(b'"stale"'))
            elif len(server.requests) == 2:  # then, while idle, a 408 (as some servers do)
                writer.write(answer(b'"second"'))
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                sent_408.set()
            else:
                writer.write(answer(b'"fresh"'))
            await writer.drain()

    client = HttpClient()
    async with raw_server(overshoots_then_408) as server:
        bodies = []
        for path in ("/a", "/b", "/c"):
            status, _, body = await client.fetch("POST", server.url + path, body=b"", timeout=2)
            bodies.append((status, body))
            if path == "/b":
                await sent_408.wait()
            await asyncio.sleep(0.05)  # the extra bytes are in, the connection still open
        await client.close()
    assert bodies == [(200, b'"first"'), (200, b'"second"'), (200, b'"fresh"')]
    assert server.connections == 3


async def test_a_read_is_sent_again_at_most_once_and_on_a_new_connection() -> None:
    client = HttpClient()
    async with raw_server(drops_its_second_request) as server:
        # Two requests at once: two kept connections, both of which drop their next request.
        await asyncio.gather(*(client.fetch("GET", server.url + "/x", timeout=2) for _ in "ab"))
        assert server.connections == 2
        status, _, _ = await client.fetch("GET", server.url + "/read", timeout=2)
        await client.close()
    assert status == 200
    assert server.requests[2:] == ["GET /read HTTP/1.1"] * 2  # not once per kept connection
    assert server.connections == 3


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: -2\r\n\r\nok",
        b"Content-Length: +2\r\n\r\nok",
        b"Content-Length: 0_2\r\n\r\nok",
        b"Content-Length: 2, 3\r\n\r\nok",
        b"Transfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n-1\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 40 + b"\r\nxx",
    ],
)
async def test_a_malformed_length_is_an_error_not_a_guess(framing: bytes) -> None:
    async def odd(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + framing)
        await writer.drain()
        await asyncio.sleep(5)

    client = HttpClient()
    async with raw_server(odd) as server:
        with pytest.raises(HttpError, match=r"malformed|bad length"):
            await client.fetch("GET", server.url + "/x", timeout=2)
        await client.close()


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("/x", {"Authorization": "Bearer abc\r\nX-Evil: 1"}),
        ("/x", {"X-Evil\r\nA": "1"}),
        ("/x", {"X-A": "a\nb"}),
        ("/a b", {}),
        ("/a?q=1 HTTP/1.1\r\nX: y", {}),
    ],
)
async def test_a_line_break_or_space_cannot_get_into_the_request_head(
    url: str, headers: dict[str, str]
) -> None:
    client = HttpClient()
    async with raw_server(keep_answering) as server:
        with pytest.raises(ValueError, match="not a valid"):
            await client.fetch("GET", server.url + url, headers=headers, timeout=2)
        await client.close()
    assert server.connections == 0


async def test_a_read_cut_by_the_callers_timeout_loses_nothing() -> None:
    cut = asyncio.Event()

    async def in_two_parts(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
        await writer.drain()
        await cut.wait()
        writer.write(b"def")
        await writer.drain()
        await asyncio.sleep(5)

    client = HttpClient()
    async with raw_server(in_two_parts) as server:
        response = await client.request("GET", server.url + "/x", timeout=3)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await response.read()
        cut.set()
        assert await response.read() == b"abcdef"
        await client.close()


async def test_an_answer_over_max_body_fails_at_once_and_its_connection_is_dropped() -> None:
    async def endless(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
    ) -> None:
        await server.read_request(reader)
        framing = b"Content-Length: 4000000" if server.connections == 1 else b"Connection: close"
        writer.write(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n")
        while True:  # the second never ends
            writer.write(b"x" * 65536)
            await writer.drain()

    client = HttpClient(max_body=1 << 20)
    async with raw_server(endless) as server:
        for _ in range(2):
            started = asyncio.get_running_loop().time()
            with pytest.raises(HttpError, match="larger than 1048576"):
                await client.fetch("GET", server.url + "/big", timeout=30)
            assert asyncio.get_running_loop().time() - started < 10
        await client.close()
    assert server.connections == 2


@pytest.mark.parametrize(
    ("head", "body", "closes", "connections"),
    [
        # Content-Length and chunked: chunked wins, but the connection is not kept.
        (
            b"Transfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n",
            b"2\r\nok\r\n0\r\n\r\n",
            0,
            2,
        ),
        # Chunked not the last coding: the body ends at close (RFC 9112 6.3), not at 2 bytes.
        (b"Transfer-Encoding: chunked, identity\r\nContent-Length: 2\r\n\r\n", b"ok", 1, 2),
        # Interim answers are skipped (a bounded number of them), the connection is kept.
        (b"Content-Length: 2\r\n\r\n", b"ok", 0, 1),
    ],
)
async def test_framing_by_transfer_encoding_and_interim_answers(
    head: bytes, body: bytes, closes: int, connections: int
) -> None:
    async def answers(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
    ) -> None:
        while True:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 3 + b"HTTP/1.1 200 OK\r\n" + head)
            writer.write(body)
            await writer.drain()
            if closes:
                return

    client = HttpClient()
    async with raw_server(answers) as server:
        for _ in range(2):
            assert (await client.fetch("GET", server.url + "/x", timeout=2))[2] == b"ok"
        await client.close()
    assert server.connections == connections


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n" * 100,  # would restart the read timeout for ever
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n folded: yes\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 2\r\n\r\nok",
    ],
)
async def test_garbage_in_the_answers_head_is_an_error(wire: bytes) -> None:
    async def garbage(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: RawServer
    ) -> None:
        await server.read_request(reader)
        writer.write(wire)
        await writer.drain()
        await asyncio.sleep(5)

    client = HttpClient()
    async with raw_server(garbage) as server:
        with pytest.raises(HttpError, match="malformed"):
            await client.fetch("GET", server.url + "/x", read_timeout=2)
        await client.close()
